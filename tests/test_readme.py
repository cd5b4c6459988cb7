"""The README's two commands stay true: CI runs the test command, the run command works."""

from __future__ import annotations

import re
from pathlib import Path

from trafficlens.datasets import Dataset
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.training import TrainConfig, train_run

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    return re.findall(r"```\n(pip install [^\n]+)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    run_command, test_command = _commands()
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run adds -q to pip and calls python3 explicitly; the steps are the README's.
    normalised = re.sub(r"python3 -m pip install -q", "pip install", ci).replace("python3 -m pytest", "python -m pytest")
    assert test_command in normalised
    assert run_command.endswith("&& trafficlens quickstart")  # tests/test_quickstart.py runs it


def test_bundled_sample_runs_end_to_end(tmp_path):
    """What the README's run command does, through the Python API."""
    sample = ROOT / "examples" / "sample"
    ds = Dataset.open(prep([sample], tmp_path / "ds", PrepConfig(labels=f"csv:{sample / 'labels.csv'}"), workers=1))
    assert ds.manifest["classes"] == {"robot-command": 42, "robot-telemetry": 42, "video": 42, "web": 42}
    assert "unlabeled" not in ds.manifest["dropped"]
    summary = train_run(ds.path, tmp_path / "run", "chen-cnn", TrainConfig(batch_size=16, max_epochs=15),
                        progress=False, log=lambda m: None)
    # four clearly different traffic shapes: a working pipeline separates them on unseen captures
    assert summary["test_accuracy"] >= 0.9


def test_install_command_takes_only_what_the_main_job_needs():
    import tomllib

    run_command, _ = _commands()
    assert '".[ml]"' in run_command  # the run command installs no test-only package
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = lambda reqs: {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}  # noqa: E731
    test_only = {"aiortc", "av", "libtorrent", "dask", "communityid", "zat", "pytest", "hypothesis"}
    assert not names(extras["ml"]) & test_only
    assert {"communityid", "zat", "trafficlens"} <= names(extras["test"])
    assert "aiortc" in names(extras["generate"]) and "dask" in names(extras["dask"])
    # no CUDA-only package on Linux: xgboost-cpu there, the plain wheel only where it carries no CUDA
    xgb = [r for r in extras["ml"] if r.startswith("xgboost")]
    assert any(r.startswith("xgboost-cpu") and "linux" in r for r in xgb)
    assert all("linux" in r and "!=" in r for r in xgb if r.startswith("xgboost>="))


def test_dockerfile_runs_the_quickstart_on_a_cpu_build():
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert 'pip install --no-cache-dir -e ".[ml]"' in text and "test]" not in text
    assert 'CMD ["quickstart"' in text and 'ENTRYPOINT ["trafficlens"]' in text
    assert "COPY examples examples" in text  # the bundled sample the quickstart runs on

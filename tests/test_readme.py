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

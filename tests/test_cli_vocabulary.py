"""One CLI vocabulary: a run first everywhere (live/serve keep --model with a note), --no-color,
train --model lists the registered names, examples in help."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from trafficlens.cli import cli

ROOT = Path(__file__).resolve().parents[1]
MODEL, CAPTURE = ROOT / "examples" / "lab" / "model", ROOT / "examples" / "lab" / "capture-004.pcap.gz"


def test_live_takes_the_run_first_and_still_takes_model_with_a_note(tmp_path):
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    first = runner.invoke(cli, ["live", str(MODEL), "-r", str(CAPTURE), "--speed", "0", "-o", str(tmp_path / "a.jsonl")])
    assert first.exit_code == 0, first.output
    old = runner.invoke(cli, ["live", "--model", str(MODEL), "-r", str(CAPTURE), "--speed", "0", "-o", str(tmp_path / "b.jsonl")])
    assert old.exit_code == 0, old.output
    assert "--model RUN is deprecated" in (old.stderr if hasattr(old, "stderr") else old.output)
    rows = [[json.loads(line)["label"] for line in (tmp_path / f).read_text().splitlines()] for f in ("a.jsonl", "b.jsonl")]
    assert rows[0] == rows[1] and len(rows[0]) == 30
    missing = runner.invoke(cli, ["live", "-r", str(CAPTURE)])
    assert missing.exit_code == 2 and "missing RUN" in missing.output + getattr(missing, "stderr", "")
    for name in ("live", "serve"):
        usage = cli.get_command(None, name).get_usage(click.Context(cli.get_command(None, name)))
        assert usage.rstrip().endswith("[OPTIONS] RUN"), usage


def test_train_model_help_lists_the_registered_names():
    from trafficlens.models import list_models

    text = CliRunner().invoke(cli, ["train", "--help"]).output
    flat = " ".join(text.split()).replace("- ", "-")
    assert all(name in flat for name in list_models("deep"))
    assert "Example:" in text


@pytest.mark.parametrize("name", sorted(__import__("trafficlens.cli", fromlist=["COMMANDS"]).COMMANDS))
def test_help_shows_an_example(name):
    text = CliRunner().invoke(cli, [name, "--help"]).output
    assert "Example" in text and f"trafficlens {name}" in text


def test_no_color(monkeypatch):
    from trafficlens import cli as cli_module

    seen = {}
    monkeypatch.setattr(click, "secho", lambda message, **kw: seen.update(kw))
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setitem(cli_module._COLOR, "on", True)
    with pytest.raises(SystemExit):
        cli_module.fail("x")
    assert seen["fg"] == "red"
    assert CliRunner().invoke(cli, ["--no-color", "models", "--help"]).exit_code == 0
    assert cli_module._COLOR["on"] is False
    with pytest.raises(SystemExit):
        cli_module.fail("x")
    assert seen["fg"] is None and seen["color"] is False


def test_quiet_and_verbose_on_every_command(tmp_path):
    import subprocess
    import sys

    from trafficlens.cli import COMMANDS

    for name in COMMANDS:
        flags = {o for p in cli.get_command(None, name).params for o in p.opts}
        assert {"--quiet", "--verbose"} <= flags, name
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
    base = [sys.executable, "-m", "trafficlens", "predict", str(MODEL), str(CAPTURE), "-o"]
    loud, quiet = (subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=300)
                   for extra in ([str(tmp_path / "a.csv")], [str(tmp_path / "b.csv"), "--quiet"]))
    assert loud.returncode == quiet.returncode == 0
    assert "30 sessions" in loud.stderr and quiet.stderr == ""
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()  # the output itself alike
    bad = [sys.executable, "-m", "trafficlens", "predict", str(ROOT), str(CAPTURE)]
    plain, verbose = (subprocess.run(bad + extra, capture_output=True, text=True, env=env, timeout=300) for extra in ([], ["--verbose"]))
    assert plain.returncode == verbose.returncode == 2
    assert plain.stderr.count("\n") == 1 and "Traceback" in verbose.stderr and "not a model bundle" in verbose.stderr

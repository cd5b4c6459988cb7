"""`trafficlens quickstart` runs the whole pipeline on the bundled sample."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from trafficlens.cli import cli
from trafficlens.quickstart import find_sample


def test_quickstart_on_the_bundled_sample(tmp_path):
    assert (find_sample() / "labels.csv").is_file()  # the bundled sample is found from a checkout
    result = CliRunner().invoke(cli, ["quickstart", "-o", str(tmp_path), "--time-budget", "8"])
    assert result.exit_code == 0, result.output
    for step in ("1/4 prep", "2/4 train", "3/4 evaluate", "4/4 predict", "Report:"):
        assert step in result.output
    # chance beside the score, its uncertainty, an absolute report path and what to try next
    assert re.search(r"95% interval 0\.\d\d-[01]\.\d\d for \d+ sessions", result.output)
    assert re.search(r"chance level: 0\.\d{3} \(always the most common class\), 0\.\d{3} \(1/\d+ classes\)", result.output)
    report = result.output.split("Report: ")[1].splitlines()[0]
    assert Path(report).is_absolute() and Path(report).is_file()
    assert f"next: trafficlens explain {tmp_path.resolve() / 'run'} --per-class" in result.output
    manifest = json.loads((tmp_path / "dataset" / "manifest.json").read_text())
    assert manifest["config"]["mask"] == "strict" and len(manifest["classes"]) >= 3
    metrics = json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())
    assert metrics["split"] == "capture" and metrics["n"] > 0
    assert (tmp_path / "run" / "evaluation" / "report.html").stat().st_size > 10_000
    flows = pd.read_csv(tmp_path / "flows.csv")
    assert len(flows) > 0 and set(flows.label.dropna()) <= set(manifest["classes"]) | {"unknown"}
    # predict ran on one capture of the test side, never seen in training or validation
    split = np.load(tmp_path / "run" / "split.npy")
    table = pd.read_parquet(tmp_path / "dataset" / "sessions.parquet")
    (capture,) = set(flows.capture)
    assert set(split[table.capture.to_numpy() == capture]) == {2}
    assert f"{capture} is on the test side" in result.output


def test_quickstart_names_a_missing_sample(tmp_path):
    result = CliRunner().invoke(cli, ["quickstart", "-o", str(tmp_path / "o"), "--sample", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a sample folder" in str(result.exception)


def test_bundled_model_labels_the_bundled_captures():
    """The committed model (examples/lab/model) loads and rebuilds the tensors it was trained on:
    on its own sample it must get most sessions right (a broken tensor rebuild gives chance)."""
    from trafficlens.serving import Classifier

    sample = find_sample()
    clf = Classifier.load(sample / "model", device="cpu")
    assert (sample / "model" / "model.safetensors").stat().st_size < 5 * 2**20
    table = clf.predict_pcap(sample)
    truth = pd.read_csv(sample / "labels.csv")
    key = ["src_ip", "src_port", "dst_ip", "dst_port"]
    merged = table.merge(truth[key + ["application"]], on=key, how="inner")
    assert len(merged) == len(truth) == 210
    assert (merged.label == merged.application).mean() > 0.85


def test_quickstart_writes_outside_the_source_tree(tmp_path, monkeypatch):
    from trafficlens.quickstart import REPO, default_out

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    inside = default_out(REPO / "src")
    assert inside == (tmp_path / "cache" / "trafficlens" / "quickstart").resolve() and REPO not in inside.parents
    assert default_out(tmp_path) == tmp_path.resolve() / "trafficlens-quickstart"

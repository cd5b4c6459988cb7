"""Runs that repeat: `train --config RUN/config.json` replays a run; per-epoch history as CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from test_training import make_dataset
from trafficlens.cli import cli
from trafficlens.errors import BundleError
from trafficlens.training.run import replay


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ds = make_dataset(tmp_path_factory.mktemp("replay") / "synth", per_class=30)
    out = tmp_path_factory.mktemp("runs") / "first"
    result = CliRunner().invoke(cli, ["train", str(ds.path), "--model", "wang-1dcnn", "-o", str(out), "--epochs", "3",
                                      "--batch-size", "16", "--seed", "5", "--split", "random", "--threads", "1",
                                      "--set", "dropout=0.3", "--exclude-class", "gamma", "--quiet"])
    assert result.exit_code == 0, result.output
    return ds, out


def test_history_csv_has_one_row_per_epoch(run):
    _, out = run
    history = json.loads((out / "history.json").read_text())["epochs"]
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(history) + 1))
    assert float(rows[-1]["train_loss"]) == pytest.approx(history[-1]["train_loss"], rel=1e-5)
    assert "val_macro_f1" in rows[0]


def test_config_replays_the_run_exactly(run, tmp_path):
    ds, out = run
    again = tmp_path / "again"
    result = CliRunner().invoke(cli, ["train", "--config", str(out / "config.json"), "-o", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    first, second = (json.loads((d / "config.json").read_text()) for d in (out, again))
    assert second["train"] == first["train"] and second["model"] == first["model"] and second["labels"] == ["alpha", "beta"]
    assert np.array_equal(np.load(out / "split.npy"), np.load(again / "split.npy"))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same settings, same weights on CPU


def test_options_given_override_the_replayed_ones(run, tmp_path):
    _, out = run
    result = CliRunner().invoke(cli, ["train", "--config", str(out), "-o", str(tmp_path / "r"), "--epochs", "1",
                                      "--exclude-class", "beta", "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["max_epochs"] == 1 and config["train"]["seed"] == 5 and config["model"]["config"]["dropout"] == 0.3
    assert config["labels"] == ["alpha", "gamma"]  # the --exclude-class given replaces the run's
    missing = CliRunner().invoke(cli, ["train", "-o", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--config" in missing.output
    with pytest.raises(BundleError):
        replay(tmp_path)


def test_resume_continues_from_the_last_checkpoint_as_if_never_stopped(run, tmp_path):
    ds, _ = run
    common = ["--model", "wang-1dcnn", "--batch-size", "16", "--seed", "2", "--split", "random", "--threads", "1",
              "--patience", "10", "--quiet"]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert CliRunner().invoke(cli, ["train", str(ds.path), "-o", str(straight), "--epochs", "4", *common]).exit_code == 0
    assert CliRunner().invoke(cli, ["train", str(ds.path), "-o", str(halves), "--epochs", "2", *common]).exit_code == 0
    assert json.loads((halves / "config.json").read_text())["train"]["max_epochs"] == 2
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(halves), "--epochs", "4", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    history = json.loads((halves / "history.json").read_text())["epochs"]
    assert len(history) == 4
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(halves / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # epochs 3-4 ran as they would have without the stop
    first = json.loads((straight / "history.json").read_text())["epochs"]
    assert [round(r["train_loss"], 6) for r in history] == [round(r["train_loss"], 6) for r in first]
    nothing = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path)])
    assert nothing.exit_code != 0 and "checkpoint.pt" in str(nothing.exception)

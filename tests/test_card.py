"""Model cards: README.md in every run directory, its numbers read from the run itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from test_training import make_dataset
from trafficlens.cli import cli
from trafficlens.training import TrainConfig, train_run
from trafficlens.training.baselines import train_baseline
from trafficlens.training.card import confused_pairs, interval, known_limits, model_card

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # 4 classes of unequal size, so the majority-class chance differs from 1/classes.
    ds = make_dataset(tmp_path_factory.mktemp("card") / "synth", classes=("alpha", "beta", "gamma", "delta"),
                      per_class=40, counts={"delta": 20})
    out = tmp_path_factory.mktemp("runs") / "cnn"
    train_run(ds.path, out, "wang-1dcnn", TrainConfig(max_epochs=2, batch_size=16, split="capture", seed=3), **QUIET)
    return ds, out


def test_train_writes_a_card_with_data_protocol_and_chance(run):
    ds, out = run
    text = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    split = np.load(out / "split.npy")
    labels = ds.labels.astype(str)
    for c in ("alpha", "beta", "gamma", "delta"):  # sessions per class on every side, from split.npy
        row = f"| {c} | {((split == 0) & (labels == c)).sum()} | {((split == 1) & (labels == c)).sum()} | " \
              f"{((split == 2) & (labels == c)).sum()} |"
        assert row in text
    assert f"`{ds.path.resolve()}`" in text
    assert "Split: capture, seed 3" in text and "Mask: strict" in text
    assert f"n_fit {metrics['n_fit']}" in text and f"n_select {metrics['n_select']}" in text
    support = [v["support"] for v in metrics["per_class"].values()]
    assert f"Chance level: {max(support) / sum(support):.3f}" in text and "0.250 (1/4 classes)" in text
    assert f"| accuracy | {metrics['accuracy']:.3f} |" in text
    assert "## Intended use" in text and "## Known limits" in text


def test_known_limits_come_from_the_numbers():
    confusion = {"labels": ["a", "b", "c"], "matrix": [[5, 4, 0], [1, 8, 0], [0, 0, 9]]}
    assert confused_pairs(confusion) == [("a", "b", 4, 9), ("b", "a", 1, 9)]
    limits = known_limits({"n": 27, "accuracy": 22 / 27, "confusion_matrix": confusion},
                          {"kind": "random", "coverage": {"single_test_capture": ["c"]}}, {"mask": "none"},
                          ["a", "b", "c"])
    text = "\n".join(limits)
    assert "a is confused with b: 4 of 9 test sessions" in text
    assert "single test capture" in text and ": c." in text
    assert "random split" in text and "Mask none" in text
    lo, hi = interval(1.0, 30)  # never an empty interval at 100%
    assert hi == 1.0 and 0.85 < lo < 0.9


def test_baseline_bundle_gets_a_card(run, tmp_path):
    ds, _ = run
    train_baseline(ds.path, "knn", None, TrainConfig(split="capture"), out=tmp_path / "knn", log=lambda m: None)
    text = (tmp_path / "knn" / "README.md").read_text()
    assert text.startswith("# Model card: knn (baseline)") and "| delta |" in text


def test_card_command_regenerates_and_guards_a_signature(run, tmp_path):
    _, out = run
    original = (out / "README.md").read_text()
    (out / "README.md").unlink()
    result = CliRunner().invoke(cli, ["card", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "README.md").read_text().split("\n", 3)[3] == original.split("\n", 3)[3]  # same but the dates
    key = tmp_path / "k"
    assert CliRunner().invoke(cli, ["keygen", "-o", str(key)]).exit_code == 0
    assert CliRunner().invoke(cli, ["sign", str(out), "--key", f"{key}.key"]).exit_code == 0
    refused = CliRunner().invoke(cli, ["card", str(out)])
    assert refused.exit_code != 0 and "signature" in str(refused.exception or refused.output)
    assert model_card(out).startswith("# Model card: wang-1dcnn (deep)")


def test_bundled_model_card_is_current(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    text = Path("examples/lab/model/README.md").read_text()
    fresh = model_card("examples/lab/model")
    # From "## Protocol" on, a card depends on the run's files only, not on its dataset being at hand.
    assert text.split("## Protocol", 1)[1] == fresh.split("## Protocol", 1)[1]
    assert "| accuracy | 0.933 |" in text and "0.143 (1/7 classes)" in text

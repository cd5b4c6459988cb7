"""A model's own training defaults (`register_model(training=...)`): the Ge models train at batch 32
with a cosine schedule unless an option says otherwise, in `train`, `compare`/`cv` and `audit`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_training import make_dataset

from trafficlens.models.registry import model_defaults, register_model

GE = {"batch_size": 32, "schedule": "cosine"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "synth", per_class=20)


def test_the_ge_models_default_to_batch_32_and_cosine_and_the_others_to_none():
    assert model_defaults("ge-inception-capsnet") == GE and model_defaults("ge-cnn-lstm") == GE
    assert model_defaults("ge-elmo-lstm-attention") == GE
    assert model_defaults("chen-cnn") == {} and model_defaults("tl-fusion") == {}
    assert model_defaults("rf") == {} and model_defaults("no-such-model") == {}


def test_a_training_default_outside_the_known_settings_is_refused():
    with pytest.raises(ValueError, match="seed"):
        register_model("bad-defaults", config=dict, paper="", inputs=("image",), training={"seed": 3})


def test_train_takes_the_models_defaults_and_an_option_overrides_them(dataset, tmp_path):
    from trafficlens.cli import cli

    runner = CliRunner()
    common = ["--model", "ge-inception-capsnet", "--epochs", "1", "--split", "random", "--threads", "1", "--quiet"]
    result = runner.invoke(cli, ["train", str(dataset.path), "-o", str(tmp_path / "own"), *common])
    assert result.exit_code == 0, result.output
    assert "its own defaults: batch-size 32, schedule cosine" in result.output
    train = json.loads((tmp_path / "own" / "config.json").read_text())["train"]
    assert (train["batch_size"], train["schedule"], train["lr"]) == (32, "cosine", 1e-3)

    result = runner.invoke(cli, ["train", str(dataset.path), "-o", str(tmp_path / "given"), *common, "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "its own defaults: schedule cosine" in result.output and "batch-size 32" not in result.output
    train = json.loads((tmp_path / "given" / "config.json").read_text())["train"]
    assert (train["batch_size"], train["schedule"]) == (8, "cosine")

    result = runner.invoke(cli, ["train", str(dataset.path), "-o", str(tmp_path / "cnn"), *common[2:], "--model", "chen-cnn"])
    assert result.exit_code == 0 and "own defaults" not in result.output
    train = json.loads((tmp_path / "cnn" / "config.json").read_text())["train"]
    assert (train["batch_size"], train["schedule"]) == (256, "plateau")


def test_compare_trains_each_model_with_its_own_defaults_on_the_same_split(dataset, tmp_path):
    from trafficlens.evaluation.compare import CompareConfig, compare

    result = compare(dataset.path, "ge-inception-capsnet,chen-cnn", tmp_path / "c",
                     CompareConfig(split="random", max_epochs=1, num_threads=1))
    training = {key: per_seed["0"]["training"] for key, per_seed in result["metrics"].items()}
    assert training["ge-inception-capsnet"]["batch_size"] == 32 and training["ge-inception-capsnet"]["schedule"] == "cosine"
    assert training["chen-cnn"]["batch_size"] == 256 and training["chen-cnn"]["schedule"] == "plateau"
    assert len({row["n_fit"] for row in result["rows"]}) == 1  # the same training sessions for both
    # a setting given for the comparison applies to every model
    given = CompareConfig(batch_size=64, schedule="plateau")
    assert given.train_config(model="ge-cnn-lstm").batch_size == 64
    assert given.train_config(model="ge-cnn-lstm").schedule == "plateau"


def test_audit_trains_its_model_with_the_models_defaults():
    from trafficlens.evaluation.audit import AuditConfig

    assert AuditConfig(model="ge-cnn-lstm").train_config("capture").batch_size == 32
    assert AuditConfig(model="ge-cnn-lstm", batch_size=16).train_config("capture").batch_size == 16
    assert AuditConfig(model="chen-cnn").train_config("capture").batch_size == 256


def test_models_lists_the_training_defaults():
    from trafficlens.training.cli import models

    out = CliRunner().invoke(models, []).output
    row = next(line for line in out.splitlines() if line.startswith("ge-cnn-lstm "))
    assert "batch-size 32, schedule cosine" in row
    assert "training defaults" in out.splitlines()[0]


def test_the_scikit_learn_estimator_takes_the_models_defaults_unless_given(dataset):
    """TrafficClassifier left at None trains as `trafficlens train` does: the Ge model at batch 32
    with cosine, chen-cnn at TrainConfig's; a value given wins."""
    import numpy as np

    from trafficlens.training.estimator import TrafficClassifier

    rows = np.arange(len(dataset))
    labels = np.asarray(dataset.labels)
    ge = TrafficClassifier(model="ge-inception-capsnet", dataset=dataset, max_epochs=1, device="cpu").fit(rows, labels)
    assert (ge.train_config_.batch_size, ge.train_config_.schedule, ge.train_config_.max_epochs) == (32, "cosine", 1)
    assert ge.predict(rows[:5]).shape == (5,)
    given = TrafficClassifier(model="ge-inception-capsnet", dataset=dataset, max_epochs=1, batch_size=8, device="cpu")
    assert (given.fit(rows, labels).train_config_.batch_size, given.train_config_.schedule) == (8, "cosine")
    cnn = TrafficClassifier(model="chen-cnn", dataset=dataset, max_epochs=1, device="cpu").fit(rows, labels)
    assert (cnn.train_config_.batch_size, cnn.train_config_.schedule) == (256, "plateau")
    assert TrafficClassifier().get_params()["batch_size"] is None  # scikit-learn's clone keeps "not chosen"

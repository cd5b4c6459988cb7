"""Self-supervised pre-training (issue 15): the masked-prediction task learns, the encoder file
carries exactly tl-fusion's encoder, `train --init` starts from it, and the test side of the
scored dataset is never read, or the run and `evaluate` say that it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_tl_fusion import SAMPLE, SMALL, views_dataset
from trafficlens.datasets import Dataset
from trafficlens.errors import ConfigError
from trafficlens.models import create_model
from trafficlens.models.tl_fusion import ENCODER_PREFIXES
from trafficlens.training import TrainConfig, train_run
from trafficlens.training.encoder import capture_digests, init_from_encoder, read_encoder
from trafficlens.training.pretrain import Holdout, PretrainConfig, pretrain
from trafficlens.training.splits import labelled_fraction

QUIET = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return views_dataset(tmp_path_factory.mktemp("pt-views") / "ds")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The bundled lab captures, prepared: a manifest with every capture's SHA-256."""
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    tmp = tmp_path_factory.mktemp("pt-lab")
    return Dataset.open(prep([SAMPLE], tmp / "ds", PrepConfig(labels=f"csv:{SAMPLE / 'labels.csv'}", min_packets=5),
                             workers=1))


def test_masked_prediction_learns_and_the_file_holds_only_the_encoder(views, tmp_path):
    torch.manual_seed(0)
    meta = pretrain([views.path], tmp_path / "enc.safetensors",
                    PretrainConfig(epochs=15, batch_size=32, lr=3e-3, model_settings=SMALL), **QUIET)
    first, last = meta["history"][0], meta["history"][-1]
    # the bytes are uniform over 0-7: the best a predictor can do is their entropy, ln 8 = 2.08 nats
    assert first["bytes"] > 4 and np.log(8) - 0.01 < last["bytes"] < np.log(8) + 0.1, meta["history"]
    # directions alternate by position (beta: all toward the client), sizes sit in a narrow range
    assert last["direction"] < 0.3 < first["direction"] and last["size"] < first["size"] / 4, meta["history"]
    tensors, saved = read_encoder(tmp_path / "enc.safetensors")
    model = create_model("tl-fusion", 4, {"packets": (6, 32), "sequence": (8, 2), "stats": (3,)}, **SMALL)
    encoder_keys = {k for k in model.state_dict() if k.startswith(ENCODER_PREFIXES)}
    assert set(tensors) == encoder_keys and not any(k.startswith(("head", "fc", "stats")) for k in tensors)
    assert saved["model_settings"]["dim"] == SMALL["dim"] and saved["datasets"][0]["sessions_read"] == len(views)


def test_init_loads_every_encoder_tensor_and_refuses_a_model_it_does_not_fit(views, tmp_path):
    torch.manual_seed(0)
    pretrain([views.path], tmp_path / "enc.safetensors", PretrainConfig(epochs=1, model_settings=SMALL), **QUIET)
    tensors, _ = read_encoder(tmp_path / "enc.safetensors")
    shapes = {"packets": (6, 32), "sequence": (8, 2), "stats": (3,)}
    model = create_model("tl-fusion", 4, shapes, **SMALL)
    head = model.head.weight.detach().clone()
    info = init_from_encoder(model, tmp_path / "enc.safetensors")
    assert info["loaded"] == info["of"] == len(tensors) and info["skipped"] == []
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    assert torch.equal(model.head.weight, head)  # the head starts fresh
    with pytest.raises(ConfigError, match="enc.safetensors: none of its .* fits chen-cnn"):
        init_from_encoder(create_model("chen-cnn", 4, {"image": (400,), "packets": (6, 32)}), tmp_path / "enc.safetensors")
    wider = create_model("tl-fusion", 4, shapes, **{**SMALL, "dim": 64})
    assert init_from_encoder(wider, tmp_path / "enc.safetensors")["loaded"] < len(tensors)  # byte_embed fits, the rest not
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="junk.safetensors: not an encoder file"):
        read_encoder(tmp_path / "junk.safetensors")


def test_holdout_keeps_the_test_captures_out_and_runs_report_any_overlap(lab, tmp_path):
    from trafficlens.evaluation.evaluate import evaluate_run

    split = TrainConfig(batch_size=16, max_epochs=2)
    held = Holdout(str(lab.path), split)
    torch.manual_seed(0)
    clean = pretrain([lab.path], tmp_path / "clean.safetensors", PretrainConfig(epochs=1), holdout=held, **QUIET)
    torch.manual_seed(0)
    leaky = pretrain([lab.path], tmp_path / "leaky.safetensors", PretrainConfig(epochs=1), **QUIET)
    assert len(leaky["captures"]) == len(set(lab.column("capture"))) >= 6 and leaky["captures"] == sorted(capture_digests(lab))

    run = tmp_path / "clean-run"
    train_run(lab.path, run, "tl-fusion", TrainConfig(batch_size=16, max_epochs=2, init=str(tmp_path / "clean.safetensors")),
              progress=False, **QUIET)
    record = json.loads((run / "metrics.json").read_text())["pretraining"]
    test_rows = np.flatnonzero(np.load(run / "split.npy") == 2)
    test_captures = capture_digests(lab, test_rows)
    assert test_captures and not test_captures & set(clean["captures"])  # the holdout left every test capture out
    assert clean["datasets"][0]["sessions_read"] < len(lab)
    assert record["test_captures_read"] == 0 and record["test_captures"] == len(test_captures)
    assert record["sha256"] and record["loaded"] == record["of"]
    assert "pre-training read 0 of the" in (run / "README.md").read_text()  # the model card says so

    lines = []
    run = tmp_path / "leaky-run"
    train_run(lab.path, run, "tl-fusion", TrainConfig(batch_size=16, max_epochs=2, init=str(tmp_path / "leaky.safetensors")),
              progress=False, log=lines.append)
    record = json.loads((run / "metrics.json").read_text())["pretraining"]
    assert record["test_captures_read"] == record["test_captures"] == len(test_captures)
    assert any("pre-training read" in line and "not independent" in line for line in lines)
    assert "not independent of pre-training" in (run / "README.md").read_text()
    evaluated = evaluate_run(run)
    assert evaluated["pretraining"]["test_sessions_read"] == len(test_rows)
    from trafficlens.evaluation.cli import evaluate as evaluate_cmd

    r = CliRunner().invoke(evaluate_cmd, [str(run)])
    assert r.exit_code == 0 and "warning: pre-training" in r.output and "not independent" in r.output


def test_labelled_fraction_is_stratified_seeded_and_keeps_every_class():
    y = np.repeat(np.arange(3), [100, 20, 3])
    rows = np.arange(len(y)) * 2  # rows of a larger dataset
    y_of_row = np.full(2 * len(y), -1)
    y_of_row[rows] = y
    tenth = labelled_fraction(rows, y_of_row, 0.1, seed=0)
    assert np.bincount(y_of_row[tenth]).tolist() == [10, 2, 1]  # 0.3 of a session rounds up to the one kept
    assert np.isin(tenth, rows).all() and np.array_equal(tenth, np.sort(tenth))
    assert np.array_equal(tenth, labelled_fraction(rows, y_of_row, 0.1, seed=0))
    assert not np.array_equal(tenth, labelled_fraction(rows, y_of_row, 0.1, seed=1))
    assert labelled_fraction(rows, y_of_row, 1.0, seed=0) is rows


def test_train_fraction_shrinks_only_the_training_side(views, tmp_path):
    base = dict(batch_size=16, max_epochs=1, split="random")
    train_run(views.path, tmp_path / "all", "tl-fusion", TrainConfig(**base), model_kwargs=SMALL, progress=False, **QUIET)
    train_run(views.path, tmp_path / "tenth", "tl-fusion", TrainConfig(**base, train_fraction=0.1), model_kwargs=SMALL,
              progress=False, **QUIET)
    whole, tenth = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("all", "tenth"))
    assert tenth["n_fit"] == round(0.1 * whole["n_fit"] / 4) * 4  # 4 classes, equal sizes
    assert tenth["n"] == whole["n"] and tenth["n_select"] == whole["n_select"]
    with pytest.raises(ConfigError, match="train_fraction"):
        TrainConfig(train_fraction=0)


def test_cli_pretrain_then_train_init(views, tmp_path):
    from trafficlens.training.cli import pretrain as pretrain_cmd, train as train_cmd

    enc = tmp_path / "enc.safetensors"
    settings = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(pretrain_cmd, [str(views.path), "-o", str(enc), "--epochs", "1", *settings])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and enc.is_file()
    r = CliRunner().invoke(pretrain_cmd, [str(views.path), "-o", str(enc)])
    assert r.exit_code != 0 and "exists; pass --overwrite" in str(r.exception or r.output)
    r = CliRunner().invoke(train_cmd, [str(views.path), "--model", "tl-fusion", "-o", str(tmp_path / "run"), "--init", str(enc),
                                       "--split", "random", "--epochs", "1", "--quiet", *settings])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["init"] == str(enc)
    assert (tmp_path / "run" / "pretraining.json").is_file()


def test_freeze_init_keeps_the_loaded_encoder_and_trains_the_rest(views, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    pretrain([views.path], tmp_path / "enc.safetensors", PretrainConfig(epochs=1, model_settings=SMALL), **QUIET)
    tensors, _ = read_encoder(tmp_path / "enc.safetensors")
    for freeze in (True, False):
        run = tmp_path / f"run-{freeze}"
        train_run(views.path, run, "tl-fusion", TrainConfig(batch_size=16, max_epochs=2, split="random",
                                                            init=str(tmp_path / "enc.safetensors"), freeze_init=freeze),
                  model_kwargs=SMALL, progress=False, **QUIET)
        weights = load_file(str(run / "model.safetensors"))
        same = [k for k, v in tensors.items() if torch.equal(weights[k], v)]
        assert (same == list(tensors)) if freeze else (len(same) < len(tensors) // 2), (freeze, len(same))
    with pytest.raises(ConfigError, match="freeze_init needs init"):
        TrainConfig(freeze_init=True)


def test_contrastive_views_learn_to_find_their_twin(views, tmp_path):
    """In a batch of 32, a view that picks its twin at random scores ln 32 = 3.47; a learned
    encoder makes the two views of one session closer than any other session's."""
    torch.manual_seed(0)
    meta = pretrain([views.path], tmp_path / "enc.safetensors",
                    PretrainConfig(epochs=6, batch_size=32, lr=3e-3, objective="contrastive", model_settings=SMALL), **QUIET)
    first, last = meta["history"][0]["contrastive"], meta["history"][-1]["contrastive"]
    assert last < 0.6 * first and last < np.log(32) / 2, meta["history"]
    assert set(meta["history"][-1]) == {"epoch", "contrastive", "loss", "seconds"}
    both = pretrain([views.path], tmp_path / "both.safetensors",
                    PretrainConfig(epochs=1, objective="both", model_settings=SMALL), **QUIET)
    assert {"bytes", "direction", "size", "contrastive"} <= set(both["history"][0])
    with pytest.raises(ConfigError, match="objective must be one of"):
        PretrainConfig(objective="generative")

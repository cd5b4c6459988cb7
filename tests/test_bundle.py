"""Model bundles: save -> load gives identical predictions; damaged bundles fail with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from test_training import make_dataset
from trafficlens.errors import BundleError
from trafficlens.models import create_model, list_models
from trafficlens.training import TrainConfig, load_bundle, save_bundle, train_run
from trafficlens.training.trainer import predict_logits

SHAPES = {"image": (400,), "packets": (6, 32), "sequence": (8, 2), "stats": (3,)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    ds = make_dataset(root / "ds", per_class=20)
    out = root / "run"
    train_run(ds.path, out, "chen-cnn", TrainConfig(max_epochs=2, batch_size=16), progress=False, log=lambda m: None)
    return ds, out


def test_trained_run_reloads_with_identical_predictions(run):
    ds, out = run
    bundle = load_bundle(out)
    assert bundle.name == "chen-cnn" and bundle.labels == ["alpha", "beta", "gamma"]
    assert bundle.preprocessing == ds.config and not bundle.model.training
    tensors = {"image": ds.tensor("image")}
    rows = np.arange(len(ds))
    again = load_bundle(out)
    assert np.array_equal(predict_logits(bundle.model, tensors, rows), predict_logits(again.model, tensors, rows))
    metrics = json.loads((out / "metrics.json").read_text())
    test = np.load(out / "split.npy") == 2
    assert test.sum() == metrics["n"]
    acc = (predict_logits(bundle.model, tensors, rows[test]).argmax(1) == np.unique(ds.labels.astype(str), return_inverse=True)[1][test]).mean()
    assert acc == pytest.approx(metrics["accuracy"])


@pytest.mark.parametrize("name", list_models("deep"))
def test_every_model_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, input_shapes=SHAPES).eval()
    save_bundle(tmp_path, model, labels=["a", "b", "c"], preprocessing={"layer": "all"})
    loaded = load_bundle(tmp_path).model
    xs = [torch.randint(0, 256, (3, *SHAPES[t]), dtype=torch.uint8) for t in model.inputs]
    with torch.no_grad():
        assert torch.equal(model(*xs), loaded(*xs))


def _copy(run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run[1], dst)
    return dst


def _edit_config(path, change):
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    (lambda p: _edit_config(p, lambda c: c["model"]["config"].update(channels=[8, 8, 8, 8])), "does not match model.safetensors"),
    (lambda p: _edit_config(p, lambda c: c["model"].update(name="resnet-50")), "unknown model 'resnet-50'"),
    (lambda p: _edit_config(p, lambda c: c["model"]["config"].update(bogus=1)), "unknown setting"),
    (lambda p: _edit_config(p, lambda c: c["labels"].append("delta")), "num_classes=3 but lists 4 labels"),
    (lambda p: _edit_config(p, lambda c: c["weights"].update(sha256="0" * 64)), "does not match the sha256"),
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-8] + b"\0" * 8), "does not match the sha256"),
    (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
    (lambda p: (p / "config.json").unlink(), "no config.json"),
    (lambda p: (p / "config.json").write_text("{not json"), "unreadable"),
    (lambda p: _edit_config(p, lambda c: c.update(format_version=99)), "format version 99"),
])
def test_damaged_bundle_gives_one_line_error(run, tmp_path, damage, message):
    path = _copy(run, tmp_path)
    damage(path)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(path)
    assert "\n" not in str(info.value)


def test_missing_run_directory(tmp_path):
    with pytest.raises(BundleError, match="no such run directory"):
        load_bundle(tmp_path / "nope")


def test_weights_are_safetensors_not_pickle(run):
    head = (run[1] / "model.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    n = int.from_bytes(head[:8], "little")
    header = json.loads((run[1] / "model.safetensors").read_bytes()[8:8 + n])
    assert "features.0.weight" in header

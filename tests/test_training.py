"""Training end to end on tiny synthetic datasets written with DatasetWriter (the prep code path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trafficlens.datasets import Dataset, DatasetWriter
from trafficlens.errors import ConfigError
from trafficlens.models import list_models, model_info
from trafficlens.training import TrainConfig, load_bundle, train_run
from trafficlens.training.splits import capture_split, random_split

IMAGE_SIDE, PACKETS, PACKET_BYTES = 20, 6, 32
STATS = ("duration", "packets", "bytes")


def make_dataset(path, classes=("alpha", "beta", "gamma"), per_class=60, captures_per_class=5, seed=0, config=None,
                 counts=None):
    """A separable dataset: class c writes bytes 200 into its own block of the image and of one
    packet, on top of low noise; sessions are spread over `captures_per_class` captures.
    `counts` {label: n}: fewer sessions of some classes."""
    rng = np.random.default_rng(seed)
    k = IMAGE_SIDE * IMAGE_SIDE
    with DatasetWriter(path, config or {"layer": "all", "mask": "strict", "image_bytes": k}, image_bytes=k,
                       packets=PACKETS, packet_bytes=PACKET_BYTES, sequence_length=8, stats_names=list(STATS)) as w:
        for i in range(per_class):
            for c, label in enumerate(classes):
                if counts and i >= counts.get(label, per_class):
                    continue
                image = rng.integers(0, 60, k, dtype=np.uint8)
                image[c * 40:(c + 1) * 40] = 200
                packets = rng.integers(0, 60, (PACKETS, PACKET_BYTES), dtype=np.uint8)
                packets[c % PACKETS, :16] = 200 - 40 * (c // PACKETS)
                meta = {"capture": f"{label}/cap{i % captures_per_class}.pcap", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
                        "src_port": 40000 + i, "dst_port": 443, "protocol": "TCP", "ts_start": float(i), "ts_end": i + 1.0,
                        "packets": 6, "bytes": 600, "payload_bytes": 300, "packets_fwd": 3, "packets_bwd": 3, "label": label}
                w.add(meta, image, packets, rng.random((8, 2), dtype=np.float32), rng.random(3, dtype=np.float32))
    return Dataset.open(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "synth")


FAST = dict(batch_size=16, eval_batch_size=256, lr=3e-3, split="random")


# -- splits ---------------------------------------------------------------------------------------
def test_random_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(3), [50, 30, 20])
    rows = np.arange(len(y)) * 2  # row numbers need not be contiguous
    s = random_split(rows, y, seed=1)
    parts = [s.train, s.val, s.test]
    assert sorted(np.concatenate(parts).tolist()) == sorted(rows.tolist())
    for c, n in enumerate([50, 30, 20]):
        members = set(rows[y == c].tolist())
        assert len(members & set(s.test.tolist())) == round(0.2 * n)
        assert len(members & set(s.val.tolist())) == round(0.2 * n)
    again = random_split(rows, y, seed=1)
    assert np.array_equal(again.test, s.test)
    assert not np.array_equal(random_split(rows, y, seed=2).test, s.test)


def test_capture_split_never_shares_a_capture(dataset):
    rows = np.arange(len(dataset))
    y = np.unique(dataset.labels.astype(str), return_inverse=True)[1]
    groups = dataset.column("capture").astype(str)
    s = capture_split(rows, y, groups, seed=0)
    sides = [set(groups[p]) for p in (s.train, s.val, s.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(s.train) + len(s.val) + len(s.test) == len(rows)
    assert set(y[s.test]) == {0, 1, 2}  # 5 captures per class: every class reaches the test side
    with pytest.raises(ConfigError, match="at least 3 capture files"):
        capture_split(rows, y, np.array(["a", "b"] * (len(rows) // 2)), seed=0)


# -- learning -------------------------------------------------------------------------------------
def test_chen_cnn_learns_separable_data_and_writes_a_bundle(dataset, tmp_path):
    out = tmp_path / "run"
    s = train_run(dataset.path, out, "chen-cnn", TrainConfig(max_epochs=12, patience=4, **FAST), progress=False, log=lambda m: None)
    assert s["test_accuracy"] >= 0.95, s
    for name in ("model.safetensors", "config.json", "history.json", "metrics.json", "split.npy"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "chen-cnn" and config["labels"] == ["alpha", "beta", "gamma"]
    assert config["preprocessing"] == dataset.config and config["split"]["kind"] == "random"
    history = json.loads((out / "history.json").read_text())
    assert {"train_loss", "val_macro_f1", "val_accuracy", "seconds"} <= set(history["epochs"][0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "random" and metrics["side"] == "test" and metrics["layer"] == "all" and metrics["mask"] == "strict"
    assert metrics["parameters"] > 0 and metrics["seconds_per_epoch"] > 0 and metrics["inference_seconds"] > 0
    assert metrics["top_k_accuracy"]["1"] == pytest.approx(metrics["accuracy"]) and metrics["macro_f1"] == metrics["macro"]["f1"]
    assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == metrics["n"] == config["split"]["sizes"]["test"]
    assert set(metrics["per_class"]) == {"alpha", "beta", "gamma"}


@pytest.mark.parametrize("name", [n for n in list_models("deep") if not model_info(n).from_runs])
def test_every_model_reduces_its_training_loss(name, dataset, tmp_path):
    cfg = TrainConfig(max_epochs=3, patience=3, **FAST)
    s = train_run(dataset.path, tmp_path / name, name, cfg, progress=False, log=lambda m: None)
    epochs = json.loads((tmp_path / name / "history.json").read_text())["epochs"]
    print(f"{name}: train loss {[round(e['train_loss'], 3) for e in epochs]}, test acc {s['test_accuracy']:.3f}")
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_same_seed_same_weights_on_cpu(dataset, tmp_path):
    cfg = TrainConfig(max_epochs=2, device="cpu", **FAST)
    for name in ("a", "b"):
        train_run(dataset.path, tmp_path / name, "chen-gru", cfg, progress=False, log=lambda m: None)
    sha = [json.loads((tmp_path / n / "config.json").read_text())["weights"]["sha256"] for n in ("a", "b")]
    assert sha[0] == sha[1]


def test_undersampling_touches_the_training_side_only(tmp_path):
    ds = make_dataset(tmp_path / "uneven", per_class=60, counts={"alpha": 30})
    cfg = TrainConfig(max_epochs=2, balance="undersample", loss="focal", **{**FAST, "split": "capture"})
    train_run(ds.path, tmp_path / "r", "wang-1dcnn", cfg, progress=False, log=lambda m: None)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert config["split"]["kind"] == "capture" and config["train"]["loss"] == "focal"
    sizes = config["split"]["sizes"]
    split = np.load(tmp_path / "r" / "split.npy")
    labels = ds.labels.astype(str)
    smallest = min(int(((split == 0) & (labels == c)).sum()) for c in ("alpha", "beta", "gamma"))
    assert metrics["n_fit"] == config["split"]["train_after_balance"] == 3 * smallest < sizes["train"]
    # validation and test keep every session of their side: alpha stays the minority there
    test_counts = {c: int(((split == 2) & (labels == c)).sum()) for c in ("alpha", "beta", "gamma")}
    assert metrics["n"] == sizes["test"] == sum(test_counts.values()) and test_counts["alpha"] < test_counts["beta"]
    cfg = TrainConfig(max_epochs=1, balance="weights", loss="weighted-ce", **FAST)
    train_run(ds.path, tmp_path / "w", "wang-1dcnn", cfg, progress=False, log=lambda m: None)
    weighted = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert weighted["n_fit"] == weighted["split_info"]["sizes"]["train"]  # weights draw from every training row


def test_time_budget_stops_training(dataset, tmp_path):
    s = train_run(dataset.path, tmp_path / "r", "chen-cnn", TrainConfig(max_epochs=50, time_budget=0.01, **FAST),
                  progress=False, log=lambda m: None)
    assert s["stopped"] == "time-budget" and s["epochs"] == 1


def test_cosine_schedule_anneals_over_the_epochs_and_over_the_time_budget():
    import time

    from trafficlens.models import create_model
    from trafficlens.training.torchrun import DistContext
    from trafficlens.training.trainer import _Epochs, fit

    rng = np.random.default_rng(0)
    tensors = {"image": rng.integers(0, 256, (64, 64), dtype=np.uint8)}
    y, rows = rng.integers(0, 2, 64), np.arange(64)
    torch.manual_seed(0)
    model = create_model("chen-cnn", num_classes=2, input_shapes={"image": (64,)})
    cfg = TrainConfig(max_epochs=4, batch_size=16, schedule="cosine", device="cpu", bn_batches=0, patience=10)
    lrs = [row["lr"] for row in fit(model, tensors, rows, y, rows[:0], y[:0], cfg, 2, progress=False).history]
    assert len(lrs) == 4 and all(a > b for a, b in zip(lrs, lrs[1:]))  # falls every epoch
    # the rate of each epoch's last step: progress 3/16, 7/16, 11/16, 15/16 after a 2% warm-up
    expected = [1e-3 * 0.5 * (1 + np.cos(np.pi * (p - 0.02) / 0.98)) for p in (3 / 16, 7 / 16, 11 / 16, 15 / 16)]
    assert np.allclose(lrs, expected, rtol=1e-6)
    # with a time budget, time spent counts as progress: half the budget gone, half the annealing
    cfg = TrainConfig(max_epochs=100, batch_size=16, schedule="cosine", time_budget=100.0, device="cpu")
    run = _Epochs(model, tensors, rows, y, cfg, 2, torch.device("cpu"), DistContext(device=torch.device("cpu")))
    run.start = time.perf_counter() - 50.0
    run._anneal(0)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 0.48 / 0.98)), rel=1e-3)
    run.start = time.perf_counter()  # little time gone: the steps lead
    run._anneal(4)  # 4 of 400 steps: 1% of the run, half the warm-up
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5, rel=1e-2)


def test_min_class_sessions_drops_small_classes(tmp_path):
    ds = make_dataset(tmp_path / "ds", classes=("a", "b", "c"), per_class=20, counts={"c": 12})
    logged = []
    train_run(ds.path, tmp_path / "r", "wang-1dcnn", TrainConfig(max_epochs=1, min_class_sessions=13, **FAST),
              progress=False, log=logged.append)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["labels"] == ["a", "b"]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["split_info"]["dropped_classes"] == {"c": 12} and set(metrics["per_class"]) == {"a", "b"}
    assert any("dropped 1 classes (< 13 sessions): c" in line for line in logged)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        train_run(ds.path, tmp_path / "r2", "wang-1dcnn", TrainConfig(max_epochs=1, min_class_sessions=21), progress=False)


def test_include_class_keeps_only_the_named_classes(dataset, tmp_path):
    train_run(dataset.path, tmp_path / "r", "wang-1dcnn",
              TrainConfig(max_epochs=1, include_classes=("alpha", "gamma"), **FAST), progress=False, log=lambda m: None)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["labels"] == ["alpha", "gamma"]
    with pytest.raises(ConfigError, match="--include-class 'betta': no such class in the dataset; did you mean beta"):
        train_run(dataset.path, tmp_path / "r2", "wang-1dcnn", TrainConfig(include_classes=("alpha", "betta")), progress=False)
    with pytest.raises(ConfigError, match="both included and excluded"):
        TrainConfig(include_classes=("alpha",), exclude_classes=("alpha",))


def test_include_class_from_a_file_through_the_cli(dataset, tmp_path):
    from trafficlens.training.cli import train

    listing = tmp_path / "classes.txt"
    listing.write_text("# two of three\nalpha\n\nbeta\n")
    result = CliRunner().invoke(train, [str(dataset.path), "--model", "wang-1dcnn", "-o", str(tmp_path / "r"), "--epochs", "1",
                                        "--batch-size", "16", "--split", "random", "--include-class", f"@{listing}", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["labels"] == ["alpha", "beta"]
    missing = CliRunner().invoke(train, [str(dataset.path), "--model", "wang-1dcnn", "-o", str(tmp_path / "r2"),
                                         "--include-class", f"@{tmp_path / 'nope.txt'}"])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_split_none_fits_on_every_session_and_has_no_test_score(dataset, tmp_path):
    from trafficlens.evaluation.evaluate import evaluate_run
    from trafficlens.training.cli import train

    result = CliRunner().invoke(train, [str(dataset.path), "--model", "wang-1dcnn", "-o", str(tmp_path / "r"), "--epochs", "2",
                                        "--batch-size", "16", "--split", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "test none (--split none" in result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    sizes = metrics["split_info"]["sizes"]
    assert sizes["test"] == 0 and sizes["val"] == 3 * 6 and sizes["train"] == len(dataset) - 18  # 10% of 60 per class
    assert "accuracy" not in metrics and "no_test_score" in metrics and metrics["n_fit"] == sizes["train"]
    with pytest.raises(ConfigError, match="--split none: it has no test side"):
        evaluate_run(tmp_path / "r", tmp_path / "e")


def test_batch_norm_statistics_are_recomputed_from_training_batches():
    """The running mean and variance after recalibration are those of the current weights'
    activations on the training rows (here one batch holding them all)."""
    from trafficlens.training.trainer import recalibrate_batch_norm

    class Tiny(torch.nn.Module):
        inputs = ("stats",)

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)
            self.norm = torch.nn.BatchNorm1d(4)

        def forward(self, x):
            return self.norm(self.linear(x))

    torch.manual_seed(0)
    model = Tiny().eval()
    x = np.random.default_rng(0).normal(3.0, 2.0, (40, 3)).astype(np.float32)
    assert recalibrate_batch_norm(model, {"stats": x}, np.arange(40), 1, 64, torch.device("cpu"), seed=0)
    with torch.no_grad():
        h = model.linear(torch.from_numpy(x))
    assert torch.allclose(model.norm.running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(model.norm.running_var, h.var(0, unbiased=True), atol=1e-4)
    assert model.norm.momentum == 0.1 and not model.training  # settings and mode restored


def test_a_model_that_predicts_one_class_is_reported():
    from trafficlens.training.trainer import fit

    class Constant(torch.nn.Module):  # every input gives the same logits: one class for everything
        inputs = ("stats",)

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.head(torch.zeros_like(x))

    stats = np.random.default_rng(0).random((60, 3), dtype=np.float32)
    y = np.tile(np.arange(3), 20)  # every class on both sides
    result = fit(Constant(), {"stats": stats}, np.arange(45), y[:45], np.arange(45, 60), y[45:],
                 TrainConfig(max_epochs=2, batch_size=16), 3, progress=False, device=torch.device("cpu"))
    assert any("predicts one class for every validation session" in w for w in result.warnings)


def test_run_directory_is_not_overwritten(dataset, tmp_path):
    train_run(dataset.path, tmp_path / "r", "wang-1dcnn", TrainConfig(max_epochs=1, **FAST), progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="already holds"):
        train_run(dataset.path, tmp_path / "r", "wang-1dcnn", TrainConfig(max_epochs=1, **FAST), progress=False)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="loss must be one of"):
        TrainConfig(loss="hinge")
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"epochs": 3})


# -- chen-model-a on top of two trained runs, through the command line -----------------------------
def test_cli_train_and_model_a_from_runs(dataset, tmp_path):
    from trafficlens.training.cli import models, train

    runner = CliRunner()
    common = ["--epochs", "3", "--batch-size", "16", "--lr", "0.003", "--quiet"]
    for name, out in (("chen-cnn", "cnn"), ("chen-gru", "gru")):
        result = runner.invoke(train, [str(dataset.path), "--model", name, "-o", str(tmp_path / out), *common])
        assert result.exit_code == 0, result.output
        assert "test accuracy" in result.output
    result = runner.invoke(train, [str(dataset.path), "--model", "chen-model-a", "-o", str(tmp_path / "a"),
                                   "--from", f"{tmp_path / 'cnn'},{tmp_path / 'gru'}", *common])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "a")
    cnn = load_bundle(tmp_path / "cnn")
    for key, value in bundle.model.cnn.state_dict().items():  # branches stayed frozen
        assert torch.equal(cnn.model.state_dict()[key], value), key
    # branches trained on another split would leak test sessions into training
    result = runner.invoke(train, [str(dataset.path), "--model", "chen-model-a", "-o", str(tmp_path / "a2"), "--seed", "1",
                                   "--from", f"{tmp_path / 'cnn'},{tmp_path / 'gru'}", *common])
    assert result.exit_code != 0 and "another train/validation/test split" in str(result.exception)
    result = runner.invoke(models, [])
    assert result.exit_code == 0 and all(n in result.output for n in list_models())


# -- scikit-learn contract ------------------------------------------------------------------------
def test_sklearn_wrapper_fits_and_predicts_dataset_rows(dataset):
    from sklearn.base import clone

    from trafficlens.training.estimator import TrafficClassifier

    rows = np.arange(len(dataset))
    labels = dataset.labels.astype(str)
    clf = TrafficClassifier(model="wang-1dcnn", dataset=dataset, max_epochs=6, batch_size=32, lr=3e-3)
    assert clone(clf).get_params()["model"] == "wang-1dcnn"
    with pytest.raises(Exception, match="not fitted"):
        clf.predict(rows[:3])
    train, test = rows[rows % 5 != 0], rows[rows % 5 == 0]
    assert clf.fit(train, labels[train]) is clf
    assert list(clf.classes_) == ["alpha", "beta", "gamma"]
    proba = clf.predict_proba(test)
    assert proba.shape == (len(test), 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (clf.predict(test) == labels[test]).mean() >= 0.9
    # the same model from arrays
    clf2 = TrafficClassifier(model="wang-1dcnn", max_epochs=1, batch_size=32).fit(np.asarray(dataset.tensor("image"))[train], labels[train])
    assert clf2.predict({"image": dataset.tensor("image")[test]}).shape == (len(test),)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_gpu_with_mixed_precision(dataset, tmp_path):
    s = train_run(dataset.path, tmp_path / "r", "chen-cnn", TrainConfig(max_epochs=8, device="cuda", **FAST),
                  progress=False, log=lambda m: None)
    assert s["test_accuracy"] >= 0.9
    # the bundle written on the GPU predicts the same on a CPU
    bundle = load_bundle(tmp_path / "r", device="cpu")
    rows = np.arange(0, len(dataset), 3)
    with torch.no_grad():
        predicted = bundle.model.eval()(torch.from_numpy(np.asarray(dataset.tensor("image"))[rows])).argmax(1).numpy()
    assert (np.array(bundle.labels)[predicted] == dataset.labels[rows].astype(str)).mean() >= 0.9

"""Baseline bundles: every baseline written as a run directory that loads without executing
code, reproduces its in-memory probabilities, refuses tampering, and works through predict,
evaluate and evaluate --on like a deep run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_baselines import ONE, make_dataset
from trafficlens.cli import cli
from trafficlens.errors import BundleError
from trafficlens.models.baselines.estimators import baseline_info, list_baselines
from trafficlens.training.baselines import expand_proba, score_baseline, train_baseline
from trafficlens.models.baselines.features import baseline_features
from trafficlens.evaluation.evaluate import evaluate_run
from trafficlens.serving import Classifier
from trafficlens.training.config import TrainConfig
from trafficlens.training.run import make_split

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"
QUIET = {"log": lambda message: None}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bb") / "synth")


@pytest.fixture(scope="module")
def bundles(ds, tmp_path_factory):
    """Every baseline on its own feature set, and rf/xgboost on header bytes, as bundles."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name in list_baselines():
        for kind in {baseline_info(name).features, "header"} if name in ("rf", "xgboost", "lightgbm") else {None}:
            key = f"{name}-{kind or 'own'}"
            train_baseline(ds.path, name, kind, TrainConfig(split="capture", seed=0), out=root / key, **QUIET,
                           **ONE.get(name, {}))
            out[key] = root / key
    return out


def test_every_bundle_reproduces_the_fitted_model(ds, bundles):
    """The exported model (ONNX, XGBoost JSON, LightGBM text, k-NN arrays) gives the probabilities
    of the estimator that was fitted, on the test rows."""
    cfg = TrainConfig(split="capture", seed=0)
    classes, rows, y, _ = cfg.selection.apply(ds)
    split = make_split(ds, rows, y, cfg)
    label_of = np.full(len(ds), -1)
    label_of[rows] = y
    for key, run in bundles.items():
        name, kind = key.rsplit("-", 1)
        fitted = score_baseline(ds, name, split, classes, label_of, features=None if kind == "own" else kind, **QUIET,
                                **ONE.get(name, {}))
        X = baseline_features(ds, split.test, fitted.model.features)
        expected = expand_proba(fitted.model, fitted.model.predict_proba(X), classes)
        clf = Classifier.load(run)
        got = clf.probabilities({name_: ds.tensor(name_)[split.test] for name_ in clf.inputs})
        assert clf.kind == "baseline" and got.shape == expected.shape
        assert np.allclose(got, expected, atol=1e-5), (key, float(np.abs(got - expected).max()))
        assert (got.argmax(1) == expected.argmax(1)).all(), key


def test_bundle_files_load_without_pickle(bundles):
    for key, run in bundles.items():
        config = json.loads((run / "config.json").read_text())
        assert config["format_version"] == 2 and config["model"]["kind"] == "baseline"
        stored = {p.name for p in run.iterdir()}
        assert stored == {"config.json", "metrics.json", "split.npy", "README.md", config["weights"]["file"]}, key
        assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in run.iterdir())
        assert np.load(run / "split.npy", allow_pickle=False).dtype == np.int8


def test_evaluate_reproduces_the_runs_test_metrics(bundles, tmp_path):
    for key in ("rf-stats", "xgboost-header", "knn-own", "svm-own", "lightgbm-stats"):
        saved = json.loads((bundles[key] / "metrics.json").read_text())
        again = evaluate_run(bundles[key], tmp_path / key)
        assert again["accuracy"] == pytest.approx(saved["accuracy"]) and again["macro_f1"] == pytest.approx(saved["macro_f1"])
        assert again["n"] == saved["n"] and again["kind"] == "baseline" and again["n_fit"] == saved["n_fit"]
        assert (tmp_path / key / "report.html").is_file()


@pytest.mark.parametrize("damage", ["model-bytes", "sha", "runtime-file", "class-index", "n-features", "kind"])
def test_tampered_bundle_is_refused(bundles, tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(bundles["xgboost-stats"], run)
    config = json.loads((run / "config.json").read_text())
    target = run / config["weights"]["file"]
    if damage == "model-bytes":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        expected = "does not match the sha256"
    elif damage == "sha":
        config["weights"]["sha256"] = "0" * 64
        expected = "does not match the sha256"
    elif damage == "runtime-file":
        config["model"]["runtime"] = "onnx"
        expected = "stored in model.onnx"
    elif damage == "class-index":
        config["model"]["class_index"] = [0, 1, 7]
        expected = "class_index does not fit"
    elif damage == "n-features":
        config["model"]["n_features"] = 5
        expected = "takes 4 features, its config says 5"
    else:
        config["model"]["kind"] = "pickle"
        expected = "model.kind must be one of"
    if damage != "model-bytes":
        (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=expected):
        Classifier.load(run)


def test_explain_refuses_a_baseline(bundles, ds):
    from trafficlens.explain.maps import explain_session

    with pytest.raises(BundleError, match="need a deep model; rf is a baseline"):
        explain_session(bundles["rf-stats"], 0, ds.path)


# -- on captures: predict and evaluate --on ------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    tmp = tmp_path_factory.mktemp("sample")
    config = PrepConfig(labels=f"csv:{SAMPLE / 'labels.csv'}", min_packets=5)
    return prep([SAMPLE], tmp / "ds", config, workers=1), tmp


@pytest.mark.parametrize("name,features", [("rf", "stats"), ("xgboost", "header"), ("knn-seq", "sequence")])
def test_predict_with_a_baseline_bundle_matches_the_dataset(sample, name, features):
    """predict rebuilds the baseline's features from the captures: the same labels as on the
    dataset's own tensors, session by session, through the API and the CLI."""
    import pandas as pd

    from trafficlens.datasets import Dataset

    ds_path, tmp = sample
    run = tmp / f"run-{name}"
    train_baseline(ds_path, name, features, TrainConfig(split="random"), out=run, overwrite=True, **QUIET,
                   **ONE.get(name, {}))
    clf = Classifier.load(run)
    api = clf.predict_pcap(SAMPLE)
    ds = Dataset.open(ds_path)
    by_key = {(r.capture, r.src_port, r.ts_start): r.label for r in api.itertuples() if r.status == "ok"}
    table = ds.table.to_pandas()
    sessions = clf.predict_sessions(ds)
    assert len(sessions) == len(table) > 50
    for row, label in zip(table.itertuples(), sessions.label):
        assert by_key[(row.capture, row.src_port, row.ts_start)] == label
    out = tmp / f"{name}.csv"
    result = CliRunner().invoke(cli, ["predict", str(run), str(SAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out).label.tolist() == api.label.tolist()


def test_evaluate_on_another_dataset(sample, tmp_path):
    """Trained on one dataset, tested on another: labels match by name, unseen labels are counted
    apart or as errors, overlap with the training side is counted, other tensors are refused."""
    from trafficlens.datasets import Dataset, DatasetWriter
    from trafficlens.errors import ConfigError

    ds_path, _ = sample
    own = Dataset.open(ds_path)
    run = tmp_path / "rf"
    train_baseline(ds_path, "rf", "stats", TrainConfig(split="random"), out=run, **QUIET, n_jobs=1)
    other = tmp_path / "other"
    split = np.load(run / "split.npy")
    rows = np.flatnonzero(split >= 0)[:40]
    with DatasetWriter(other, dict(own.config), image_bytes=own.tensor("image").shape[1], packets=own.tensor("packets").shape[1],
                       packet_bytes=own.tensor("packets").shape[2], sequence_length=own.tensor("sequence").shape[1],
                       stats_names=own.stats_names, deduplicate=False) as w:
        table = own.table.to_pandas()
        for k, row in enumerate(rows):
            meta = table.iloc[row].to_dict()
            meta.pop("id")
            meta["label"] = "never-seen" if k < 5 else meta["label"]
            w.add(meta, own.tensor("image")[row], own.tensor("packets")[row], own.tensor("sequence")[row], own.tensor("stats")[row])
    ignore = evaluate_run(run, tmp_path / "e1", on=other)
    assert ignore["n"] == 35 and ignore["unseen"] == {"policy": "ignore", "sessions": 5, "labels": {"never-seen": 5}}
    assert ignore["trained_on"]["name"] == Path(ds_path).name and ignore["split"] == "other-dataset"
    learned = int((split[rows[5:]] <= 1).sum())  # rows copied from the run's own training or validation side
    assert ignore["identical_to_training"]["sessions"] >= learned > 0
    as_errors = evaluate_run(run, tmp_path / "e2", on=other, unseen="error")
    correct = round(ignore["accuracy"] * 35)
    assert as_errors["n"] == 40 and as_errors["accuracy"] == pytest.approx(correct / 40)
    assert "trained on" in (tmp_path / "e2" / "report.html").read_text()
    with pytest.raises(ConfigError, match="is the dataset .* was trained on"):
        evaluate_run(run, tmp_path / "e3", on=ds_path)
    masked = tmp_path / "paper"
    with DatasetWriter(masked, {**own.config, "mask": "paper"}, image_bytes=own.tensor("image").shape[1],
                       packets=own.tensor("packets").shape[1], packet_bytes=own.tensor("packets").shape[2],
                       sequence_length=own.tensor("sequence").shape[1], stats_names=own.stats_names) as w:
        meta = own.table.to_pandas().iloc[0].to_dict()
        meta.pop("id")
        w.add(meta, own.tensor("image")[0], own.tensor("packets")[0], own.tensor("sequence")[0], own.tensor("stats")[0])
    with pytest.raises(ConfigError, match="prepared with --mask paper, .* was trained with strict"):
        evaluate_run(run, tmp_path / "e4", on=masked)

"""Classical baselines: registry, estimator contract, features, runs on the deep trainer's splits.

The synthetic dataset is written with DatasetWriter like tests/test_training.py's, but with a
class signal in `stats`, the packet headers and the packet-length sequence (that helper writes
noise there, and importing it would pull in torch).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from trafficlens.datasets import Dataset, DatasetWriter
from trafficlens.errors import ConfigError
from trafficlens.models.baselines.estimators import baseline_info, create_baseline, list_baselines
from trafficlens.training.baselines import train_baseline
from trafficlens.evaluation.cli import baseline as baseline_cmd
from trafficlens.models.baselines.features import FEATURE_KINDS, HEADER_BYTES, baseline_features
from trafficlens.training.config import TrainConfig
from trafficlens.training.run import make_split
from trafficlens.training.selection import select_classes

CLASSES = ("alpha", "beta", "gamma")
PACKETS, PACKET_BYTES, SEQ, STATS = 3, 64, 8, ("duration", "bytes", "packets", "iat_mean")
# Tiny data: one thread. OpenMP barriers on a machine whose cores are busy stall XGBoost 50x.
ONE = {name: {"n_jobs": 1} for name in ("rf", "knn", "knn-seq", "xgboost", "lightgbm")}


def make_dataset(path, per_class=50, captures_per_class=5, layer="all", seed=0) -> Dataset:
    """Class c: stats around 10 (c + 1), IP TTL 64 + 30c and TCP window byte 100 + 40c in every
    packet, packet lengths +-100 (c + 1); noise on top, and on the IP length bytes."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, {"layer": layer, "mask": "strict"}, image_bytes=16, packets=PACKETS,
                       packet_bytes=PACKET_BYTES, sequence_length=SEQ, stats_names=list(STATS)) as w:
        for i in range(per_class):
            for c, label in enumerate(CLASSES):
                packets = np.zeros((PACKETS, PACKET_BYTES), dtype=np.uint8)
                packets[:, 12:15] = (8, 0, 69)
                packets[:, 16:18] = rng.integers(0, 256, (PACKETS, 2))
                packets[:, 22] = 64 + 30 * c + rng.integers(0, 5, PACKETS)
                packets[:, 48] = 100 + 40 * c + rng.integers(0, 10, PACKETS)
                lengths = (100 * (c + 1) + rng.integers(-20, 20, SEQ)) * np.where(np.arange(SEQ) % 2, -1, 1)
                sequence = np.stack([lengths, rng.random(SEQ)], axis=1).astype(np.float32)
                stats = (10 * (c + 1) + rng.normal(0, 1.5, len(STATS))).astype(np.float32)
                meta = {"capture": f"{label}/cap{i % captures_per_class}.pcap", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
                        "src_port": 0, "dst_port": 0, "protocol": "TCP", "ts_start": float(i), "ts_end": i + 1.0,
                        "packets": SEQ, "bytes": 800, "payload_bytes": 400, "packets_fwd": 4, "packets_bwd": 4, "label": label}
                w.add(meta, rng.integers(0, 256, 16, dtype=np.uint8), packets, sequence, stats)
    return Dataset.open(path)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bl") / "synth")


@pytest.fixture(scope="module")
def split(ds):
    classes, rows, y, _ = select_classes(ds.labels, 0)
    return make_split(ds, rows, y, TrainConfig(split="capture", seed=0))


def _cases():
    for name in list_baselines():
        kinds = (baseline_info(name).features,) if name == "knn-seq" else FEATURE_KINDS
        for kind in kinds:
            yield name, kind


# -- features -------------------------------------------------------------------------------------
def test_features_shapes_and_values(ds):
    rows = np.array([0, 5, 7])
    assert np.array_equal(baseline_features(ds, rows, "stats"), np.asarray(ds.tensor("stats"))[rows])
    assert np.array_equal(baseline_features(ds, rows, "sequence"), np.asarray(ds.tensor("sequence"))[rows, :, 0])
    header = baseline_features(ds, rows, "header")
    assert header.shape == (3, PACKETS * HEADER_BYTES["all"]) and header.dtype == np.float32
    assert np.array_equal(header.reshape(3, PACKETS, -1), np.asarray(ds.tensor("packets"))[rows, :, :54])
    assert baseline_features(ds, rows, "header", header_packets=1, header_bytes=20).shape == (3, 20)
    assert baseline_features(ds, np.array([], dtype=np.int64), "stats").shape == (0, len(STATS))
    with pytest.raises(ConfigError, match="header_packets must be in 1..3"):
        baseline_features(ds, rows, "header", header_packets=4)
    with pytest.raises(ConfigError, match="unknown feature set 'image'"):
        baseline_features(ds, rows, "image")


def test_header_features_need_headers(tmp_path):
    payload = make_dataset(tmp_path / "payload", per_class=4, layer="payload")
    with pytest.raises(ConfigError, match="--layer payload"):
        baseline_features(payload, np.arange(3), "header")


# -- learning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kind", list(_cases()))
def test_every_baseline_learns_separable_data(name, kind, ds, split):
    fit_rows = np.concatenate([split.train, split.val])
    clf = create_baseline(name, kind, dataset=ds, **ONE.get(name, {})).fit(fit_rows, ds.labels[fit_rows])
    assert list(clf.classes_) == list(CLASSES)
    proba = clf.predict_proba(split.test)
    assert proba.shape == (len(split.test), 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    accuracy = float((clf.predict(split.test) == ds.labels[split.test]).mean())
    assert accuracy >= 0.95, (name, kind, accuracy)


@pytest.mark.parametrize("name", list_baselines())
def test_predictions_match_sklearn_directly(name, ds, split):
    kind = baseline_info(name).features
    X_fit, X_test = (baseline_features(ds, r, kind) for r in (split.train, split.test))
    y = ds.labels[split.train].astype(str)
    ours = create_baseline(name, kind, **ONE.get(name, {})).fit(X_fit, y)
    direct = baseline_info(name).builder(random_state=0, **ONE.get(name, {})).fit(X_fit, np.searchsorted(CLASSES, y))
    assert np.array_equal(ours.predict(X_test), np.array(CLASSES)[direct.predict(X_test)])
    assert np.allclose(ours.predict_proba(X_test), direct.predict_proba(X_test))


def test_row_numbers_and_feature_matrix_agree(ds, split):
    y = ds.labels[split.train]
    by_rows = create_baseline("xgboost", "header", dataset=ds.path, n_jobs=1).fit(split.train, y)  # a path works too
    by_matrix = create_baseline("xgboost", "header", n_jobs=1).fit(baseline_features(ds, split.train, "header"), y)
    assert np.array_equal(by_rows.predict(split.test), by_matrix.predict(baseline_features(ds, split.test, "header")))


def test_clone_pipeline_and_grid_search(ds, split):
    clf = create_baseline("svm", dataset=ds, class_weight="balanced", C=3.0)
    twin = clone(clf)
    assert twin.get_params()["estimator__calibratedclassifiercv__estimator__C"] == 3.0 and twin.class_weight == "balanced"
    assert twin.max_train_rows is None  # no baseline samples its training rows unless asked: n_fit stays equal
    assert not hasattr(twin, "estimator_")

    X, y = baseline_features(ds, split.train, "stats"), ds.labels[split.train]
    pipe = make_pipeline(MinMaxScaler(), create_baseline("dt")).fit(X, y)
    assert pipe.score(baseline_features(ds, split.test, "stats"), ds.labels[split.test]) >= 0.95

    search = GridSearchCV(create_baseline("knn", dataset=ds, n_jobs=1), {"estimator__kneighborsclassifier__n_neighbors": [1, 3]}, cv=3)
    search.fit(split.train, y)  # X = row numbers: cross-validation slices rows, features are read per fold
    assert search.best_params_["estimator__kneighborsclassifier__n_neighbors"] in (1, 3) and search.best_score_ >= 0.95


def test_class_weight_and_row_cap(ds, split):
    y = ds.labels[split.train]
    weighted = create_baseline("xgboost", dataset=ds, class_weight="balanced", n_jobs=1).fit(split.train, y)
    assert (weighted.predict(split.test) == ds.labels[split.test]).mean() >= 0.95
    with pytest.raises(ConfigError, match="KNeighborsClassifier does not take"):
        create_baseline("knn", dataset=ds, class_weight="balanced").fit(split.train, y)
    capped = create_baseline("svm", dataset=ds, max_train_rows=30).fit(split.train, y)
    assert 27 <= capped.n_train_rows_ <= 33 < len(split.train) and list(capped.classes_) == list(CLASSES)
    assert create_baseline("dt", dataset=ds, max_train_rows=3).fit(split.train, y).n_train_rows_ == 15  # 5 per class


def test_bad_arguments_name_the_fix(ds):
    with pytest.raises(ConfigError, match="unknown model 'catboost'; choose one of: dt, knn, knn-seq, lightgbm, lr, nb, rf, svm, xgboost"):
        create_baseline("catboost")
    with pytest.raises(ConfigError, match="knn-seq compares packet-length sequences"):
        create_baseline("knn-seq", "stats")
    with pytest.raises(ConfigError, match="unknown feature set"):
        create_baseline("rf", "bytes")
    with pytest.raises(ConfigError, match="rf: bad parameter"):
        create_baseline("rf", trees=3)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        create_baseline("dt").fit(np.zeros((4, 2)), ["a"] * 4)
    assert create_baseline("rf", max_depth=None).estimator.max_depth is None  # None kwargs dropped


# -- one run on a dataset -------------------------------------------------------------------------
def test_train_baseline_uses_the_deep_split_and_never_shares_a_capture(ds, split):
    m = train_baseline(ds.path, "rf", "header", TrainConfig(split="capture", seed=0), log=lambda message: None, n_jobs=1)
    info = m["split_info"]
    # the one protocol: fit on the training side only, as deep models do (no refit on train + val)
    assert info["sizes"] == split.sizes() and m["n_fit"] == len(split.train) and m["n_select"] == 0
    captures = ds.column("capture").astype(str)
    sides = [set(captures[p]) for p in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert [info["captures"][s] for s in ("train", "val", "test")] == [len(s) for s in sides]
    assert sum(info["captures"].values()) == len(set(captures))
    assert m["accuracy"] >= 0.95 and m["macro_f1"] >= 0.95 and m["weighted_f1"] >= 0.95
    assert set(m["per_class"]) == set(CLASSES) and sum(r["support"] for r in m["per_class"].values()) == m["n"]
    assert m["layer"] == "all" and m["mask"] == "strict" and m["dataset"]["config"] == ds.config
    assert m["split"] == "capture" and m["side"] == "test" and m["kind"] == "baseline" and m["schema_version"] == 3
    assert m["protocol"].startswith("fit on the training side")
    assert m["fit_seconds"] > 0 and m["predict_seconds"] > 0 and m["parameters"] > 0
    assert m["top_k_accuracy"]["1"] == pytest.approx(m["accuracy"])


def test_tune_picks_on_validation_and_keeps_the_model_fitted_on_train(ds, split, tmp_path):
    m = train_baseline(ds.path, "knn", "stats", TrainConfig(split="capture", seed=0), tune=True, log=lambda message: None,
                       n_jobs=1, out=tmp_path / "knn")
    t = m["tuning"]
    assert t["grid"] == {"n_neighbors": [1, 3, 5, 10]} and len(t["trials"]) == 4
    assert t["best_val_macro_f1"] == max(x["val_macro_f1"] for x in t["trials"])
    assert m["params"]["n_neighbors"] == t["best"]["n_neighbors"]
    assert m["n_fit"] == len(split.train) and m["n_select"] == len(split.val) and m["selection"].startswith("grid")
    # the kept model is the one fitted on the training rows: its stored matrix has exactly them
    from safetensors.numpy import load_file

    assert load_file(str(tmp_path / "knn" / "model.knn.safetensors"))["fit_X"].shape == (len(split.train), len(STATS))
    fixed = train_baseline(ds.path, "rf", None, TrainConfig(split="capture"), tune=True, log=lambda message: None,
                           n_jobs=1, max_features="sqrt")
    assert "max_features" not in fixed["tuning"]["grid"] and len(fixed["tuning"]["trials"]) == 2  # set by hand: not searched


def test_tune_never_reads_the_test_side(ds, split, tmp_path):
    """Changing every test session's features changes the test score but not one tuning trial:
    the grid is chosen on validation alone (README: `baseline --tune`)."""
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(ds.path, changed)
    stats = np.load(changed / "stats.npy")
    stats[split.test] = stats[split.test][::-1] * -3.0  # not the split's key (image + packets): same split
    np.save(changed / "stats.npy", stats)
    runs = [train_baseline(path, "knn", "stats", TrainConfig(split="capture", seed=0), tune=True,
                           log=lambda message: None, n_jobs=1) for path in (ds.path, changed)]
    assert runs[0]["split_info"]["sizes"] == runs[1]["split_info"]["sizes"]
    trials = [[(t["params"], t["val_macro_f1"]) for t in run["tuning"]["trials"]] for run in runs]
    assert trials[0] == trials[1] and runs[0]["params"] == runs[1]["params"]
    assert runs[0]["accuracy"] >= 0.95 > runs[1]["accuracy"]  # the test side was read, for the score only


@pytest.mark.parametrize("name", list_baselines())
def test_learned_parameters_are_counted(name, ds, split):
    from trafficlens.models.baselines.estimators import learned_parameters

    kind = baseline_info(name).features
    clf = create_baseline(name, kind, **ONE.get(name, {})).fit(baseline_features(ds, split.train, kind), ds.labels[split.train])
    n = learned_parameters(clf.estimator_)
    assert isinstance(n, int) and n > 0
    if name == "lr":
        assert n == 3 * len(STATS) + 3
    if name in ("knn", "knn-seq"):
        assert n == len(split.train) * baseline_features(ds, split.train[:1], kind).shape[1]


def test_min_class_sessions_drops_the_small_class(ds):
    # 50 sessions per class: keep alpha and beta only through --include-class, then through the minimum
    two = train_baseline(ds.path, "nb", None, TrainConfig(split="random", include_classes=("alpha", "beta")),
                         log=lambda message: None)
    assert list(two["per_class"]) == ["alpha", "beta"] and two["split_info"]["dropped_classes"] == {"gamma": 50}
    assert two["n"] == 20 and two["split_info"]["include_classes"] == ["alpha", "beta"]
    with pytest.raises(ConfigError, match="need at least 2 classes"):
        train_baseline(ds.path, "nb", None, TrainConfig(split="random", min_class_sessions=51), log=lambda message: None)
    with pytest.raises(ConfigError, match="'gama': no such class in the dataset; did you mean gamma"):
        train_baseline(ds.path, "nb", None, TrainConfig(exclude_classes=("gama",)), log=lambda message: None)


def test_cli_writes_a_run_directory(ds, tmp_path):
    out = tmp_path / "m"
    args = [str(ds.path), "--model", "lr", "--features", "stats", "--split", "capture", "--min-class-sessions", "10",
            "--set", "C=0.5", "-o", str(out)]
    r = CliRunner().invoke(baseline_cmd, args)
    assert r.exit_code == 0, r.output
    assert "lr on stats: test accuracy" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["params"] == {"C": 0.5} and m["split"] == "capture" and m["split_info"]["min_class_sessions"] == 10
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.json", "split.npy", "model.onnx", "README.md"}  # README.md: the model card
    again = CliRunner().invoke(baseline_cmd, args)
    assert isinstance(again.exception, ConfigError) and "--overwrite" in str(again.exception)
    bad = CliRunner().invoke(baseline_cmd, [str(ds.path), "--model", "nope"])
    assert isinstance(bad.exception, ConfigError)


def test_cli_help_lists_every_baseline():
    r = CliRunner().invoke(baseline_cmd, ["--help"])
    assert r.exit_code == 0
    for name in list_baselines():
        assert name in r.output


def test_importing_evaluation_is_light():
    code = "import sys, trafficlens.evaluation; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

"""`compare` and `cv` on a tiny synthetic dataset: same split for every model, tables, reports."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from trafficlens.datasets import Dataset, DatasetWriter
from trafficlens.errors import ConfigError

CLASSES = ("alpha", "beta", "gamma")
SIDE, PACKETS, PACKET_BYTES, SEQ = 20, 3, 64, 8
FAST = dict(max_epochs=3, batch_size=16, min_class_sessions=0)


def make_dataset(path, per_class=40, captures_per_class=6, seed=0, short_alpha=0) -> Dataset:
    """Class c marks its own image block, the IP TTL and TCP window bytes of every packet, the
    packet lengths and the statistics; noise elsewhere. Start times interleave the classes.
    `short_alpha`: that many fewer sessions of the first class."""
    rng = np.random.default_rng(seed)
    k = SIDE * SIDE
    with DatasetWriter(path, {"layer": "all", "mask": "strict", "image_bytes": k}, image_bytes=k, packets=PACKETS,
                       packet_bytes=PACKET_BYTES, sequence_length=SEQ, stats_names=["a", "b", "c"]) as w:
        for i in range(per_class):
            for c, label in enumerate(CLASSES):
                if c == 0 and i >= per_class - short_alpha:
                    continue
                image = rng.integers(0, 60, k, dtype=np.uint8)
                image[c * 60:(c + 1) * 60] = 220
                packets = rng.integers(0, 30, (PACKETS, PACKET_BYTES), dtype=np.uint8)
                packets[:, 22] = 64 + 50 * c
                packets[:, 48] = 100 + 50 * c
                lengths = (100 * (c + 1) + rng.integers(-20, 20, SEQ)) * np.where(np.arange(SEQ) % 2, -1, 1)
                sequence = np.stack([lengths, rng.random(SEQ)], axis=1).astype(np.float32)
                stats = (10 * (c + 1) + rng.normal(0, 1.5, 3)).astype(np.float32)
                meta = {"capture": f"{label}/cap{i % captures_per_class}.pcap", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
                        "src_port": 0, "dst_port": 0, "protocol": "TCP", "ts_start": 1e9 + 3 * i + c, "ts_end": 1e9 + 3 * i + c + 1,
                        "packets": SEQ, "bytes": 800, "payload_bytes": 400, "packets_fwd": 4, "packets_bwd": 4, "label": label}
                w.add(meta, image, packets, sequence, stats)
    return Dataset.open(path)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cmp") / "synth")


@pytest.fixture(scope="module")
def comparison(ds, tmp_path_factory):
    from trafficlens.evaluation.compare import compare

    out = tmp_path_factory.mktemp("cmp") / "report"
    result = compare(ds.path, "chen-cnn,chen-model-a,rf,dt:header,knn-seq", out, split="capture", seed=0,
                     save_models=True, log=lambda message: None, **FAST)
    return result, out


def test_every_model_scores_the_same_test_sessions(comparison, ds):
    result, out = comparison
    assert [r["model"] for r in result["rows"]] == ["chen-cnn", "chen-model-a", "rf", "dt:header", "knn-seq"]
    tests = {key: m["0"]["n"] for key, m in result["metrics"].items()}
    assert len(set(tests.values())) == 1 and tests["rf"] == result["split_info"]["sizes"]["test"] > 0
    # like-for-like: every model learned from the same training sessions, and says how many
    fits = {r["model"]: r["n_fit"] for r in result["rows"]}
    assert set(fits.values()) == {result["split_info"]["sizes"]["train"]}, fits
    assert {r["model"]: r["n_select"] for r in result["rows"]} == {
        "chen-cnn": result["split_info"]["sizes"]["val"], "chen-model-a": result["split_info"]["sizes"]["val"],
        "rf": 0, "dt:header": 0, "knn-seq": 0}  # no --tune: the baselines select nothing
    runs = out / "runs" / "seed-0"
    assignment = np.load(runs / "chen-cnn" / "split.npy")
    for run in ("chen-cnn", "chen-gru", "chen-model-a", "rf", "dt-header", "knn-seq"):  # chen-gru trained for model A
        assert np.array_equal(np.load(runs / run / "split.npy"), assignment), run
    captures = ds.column("capture").astype(str)
    sides = [set(captures[assignment == s]) for s in (0, 1, 2)]
    assert not (sides[0] & sides[2] or sides[1] & sides[2] or sides[0] & sides[1])
    for key in ("rf", "dt:header", "knn-seq"):  # the signal is plain in these features
        assert result["metrics"][key]["0"]["accuracy"] >= 0.9, key
    for r in result["rows"]:  # each table row holds its model's own test metrics
        m = result["metrics"][r["model"]]["0"]
        assert r["parameters"] > 0 and r["train_seconds"] > 0 and r["inference_seconds"] > 0
        assert (r["accuracy"], r["macro_f1"], r["weighted_f1"], r["n"]) == (m["accuracy"], m["macro_f1"], m["weighted_f1"], m["n"])
        assert (r["macro_precision"], r["macro_recall"]) == (m["macro"]["precision"], m["macro"]["recall"])
        assert r["top3_accuracy"] == m["top_k_accuracy"]["3"] == pytest.approx(1.0)  # 3 classes
    deep = result["metrics"]["chen-cnn"]["0"]
    assert deep["kind"] == "deep" and deep["seconds_per_epoch"] > 0 and deep["epochs"] >= 1
    assert result["split"] == "capture" and result["mask"] == "strict" and result["layer"] == "all"


def test_comparison_files(comparison):
    from trafficlens.evaluation.compare import ROW_KEYS

    result, out = comparison
    table = (out / "comparison.md").read_text()
    # a summary table (one row per model) and the per-seed table (one row per model and seed)
    assert "| model | kind | features | seeds | n_fit |" in table and "| model | kind | features | seed | n_fit |" in table
    assert sum(line.startswith("|") for line in table.splitlines()) == 2 * 2 + len(result["summary"]) + len(result["rows"])
    assert "Protocol: fit on the training side" in table
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(ROW_KEYS) and [r["model"] for r in rows] == [r["model"] for r in result["rows"]]
    assert float(rows[2]["macro_f1"]) == pytest.approx(result["rows"][2]["macro_f1"])
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for key in ("chen-cnn", "rf", "dt-header"):
        m = json.loads((out / "models" / key / "seed-0" / "metrics.json").read_text())
        assert m["schema_version"] == 3 and m["side"] == "test" and m["split"] == "capture" and m["n_fit"] > 0
    for stem in ("scores", "class_f1", "best_per_class", "best_confusion", "curves", "cost"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    page = (out / "report.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 6


def test_compare_refuses_bad_input(ds):
    from trafficlens.evaluation.compare import compare

    with pytest.raises(ConfigError, match="unknown model 'forest'; deep models: .*baselines: dt, knn"):
        compare(ds.path, "forest", None, log=lambda message: None)
    with pytest.raises(ConfigError, match="listed twice"):
        compare(ds.path, "rf,rf:stats", None, log=lambda message: None)
    with pytest.raises(ConfigError, match="prepared with --mask strict, not paper"):
        compare(ds.path, "rf", None, mask="paper", log=lambda message: None)
    with pytest.raises(ConfigError, match="chen-cnn:header: deep models read their own tensors"):
        compare(ds.path, "chen-cnn:header", None, log=lambda message: None)


def test_variants_of_one_model_train_on_one_split_each_with_its_settings(ds, tmp_path):
    """Ablations: `tl-fusion[use_bytes=false]` is its own row, trained with that setting on the same
    split and rows as plain tl-fusion; settings are checked before any training."""
    from trafficlens.evaluation.compare import compare

    result = compare(ds.path, "tl-fusion,tl-fusion[use_bytes=false,dim=32]", tmp_path / "c", split="capture", seeds=(0, 1),
                     save_models=True,
                     log=lambda message: None, **FAST)
    full, ablated = "tl-fusion", 'tl-fusion[dim=32,use_bytes=false]'
    assert list(result["metrics"]) == [full, ablated]
    for seed in ("0", "1"):
        a, b = result["metrics"][full][seed], result["metrics"][ablated][seed]
        assert a["n_fit"] == b["n_fit"] and a["n"] == b["n"] and a["model"] == full and b["model"] == ablated
        config = json.loads((tmp_path / "c" / "runs" / f"seed-{seed}" / "tl-fusion-dim=32-use_bytes=false"
                             / "config.json").read_text())
        assert config["model"]["config"]["dim"] == 32 and config["model"]["config"]["use_bytes"] is False
        assert b["parameters"] < a["parameters"]
        assert b["model_settings"] == {"dim": 32, "use_bytes": False} and "model_settings" not in a
        # what each row was built with, the defaults included; not what the data decides
        assert a["model_config"]["members"] == 3 and a["model_config"]["dim"] == 64 and b["model_config"]["dim"] == 32
        assert "num_classes" not in a["model_config"] and "packets" not in a["model_config"]
    assert f"| {ablated} | deep |" in (tmp_path / "c" / "comparison.md").read_text()
    for bad, message in (("tl-fusion[use_bites=false]", r"unknown setting\(s\) use_bites for tl-fusion; allowed: .*use_bytes"),
                         ("rf[n_estimators=5]", "variants in brackets are for deep models"),
                         ("tl-fusion[use_bytes=false", r"MODEL\[KEY=VALUE,...\]"),
                         ("tl-fusion[]", r"MODEL\[KEY=VALUE,...\]"),
                         ("tl-fusion[dim=32,use_bytes=false],tl-fusion[use_bytes=false,dim=32]", "listed twice")):
        with pytest.raises(ConfigError, match=message):
            compare(ds.path, bad, None, log=lambda message: None)


def test_compare_time_split_and_tune(ds):
    from trafficlens.evaluation.compare import compare

    result = compare(ds.path, ["knn", "lr"], None, split="time", tune=True, log=lambda message: None)
    times = ds.column("start_time")
    rows = result["metrics"]["knn"]["0"]
    assert result["split"] == "time" and rows["tuning"]["best"] and rows["n"] == result["split_info"]["sizes"]["test"]
    assert rows["n_fit"] == result["split_info"]["sizes"]["train"] and rows["n_select"] == result["split_info"]["sizes"]["val"]
    # the latest 20% of the sessions are the test side
    assert result["split_info"]["sizes"]["test"] == int((times >= np.sort(times)[-rows["n"]]).sum())


def test_cli_compare(ds, tmp_path):
    from trafficlens.evaluation.cli import compare as compare_cmd

    r = CliRunner().invoke(compare_cmd, [str(ds.path), "--models", "rf,nb", "--split", "random", "-o", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "| rf | baseline | stats | 1 |" in r.output and (tmp_path / "c" / "report.html").is_file()
    assert "[1/2] rf, seed 0 (elapsed" in r.output and "[2/2] nb, seed 0 (elapsed" in r.output  # model i of n, ETA
    assert "about" in r.output.split("[2/2] nb")[1].splitlines()[0] and "[2/2] done in" in r.output
    assert not (tmp_path / "c" / "runs").exists()  # models are kept only with --save-models
    bad = CliRunner().invoke(compare_cmd, [str(ds.path), "--models", "nope", "-o", str(tmp_path / "d")])
    assert isinstance(bad.exception, ConfigError)


# -- cross-validation ---------------------------------------------------------------------------------
def test_cv_tests_every_session_once_with_mean_and_spread(ds, tmp_path):
    from trafficlens.evaluation.cv import cross_validate

    result = cross_validate(ds.path, "rf", tmp_path / "cv", folds=3, split="capture", log=lambda message: None)
    assert [r["fold"] for r in result["rows"]] == [1, 2, 3]
    assert sum(r["n"] for r in result["rows"]) == len(ds)  # no duplicates here, so every session once
    f1 = [r["macro_f1"] for r in result["rows"]]
    s = result["summary"]["macro_f1"]
    assert s["mean"] == pytest.approx(np.mean(f1)) and s["std"] == pytest.approx(np.std(f1, ddof=1))
    assert s["min"] == min(f1) and s["max"] == max(f1) and s["mean"] >= 0.9
    for name in ("cv.md", "cv.csv", "cv.json", "report.html", "figures/spread.png", "figures/spread.svg",
                 "fold-1/metrics.json"):
        assert (tmp_path / "cv" / name).is_file(), name
    assert "mean ± std" in (tmp_path / "cv" / "cv.md").read_text()
    page = (tmp_path / "cv" / "report.html").read_text()
    assert "https://" not in page and len(re.findall(r"src='data:image/png;base64,", page)) == 2


def test_cv_deep_model_and_refusals(ds):
    from trafficlens.evaluation.cv import cross_validate

    result = cross_validate(ds.path, "chen-cnn", None, folds=2, split="random", log=lambda message: None,
                            max_epochs=1, batch_size=32)
    accuracies = [r["accuracy"] for r in result["rows"]]
    assert len(result["rows"]) == 2 and result["summary"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert sum(r["n"] for r in result["rows"]) == len(ds)
    with pytest.raises(ConfigError, match="--split time has no k-fold form"):
        cross_validate(ds.path, "rf", None, split="time", log=lambda message: None)
    with pytest.raises(ConfigError, match="cv takes one model"):
        cross_validate(ds.path, "rf,dt", None, log=lambda message: None)
    with pytest.raises(ConfigError, match="at least 20 capture files"):
        cross_validate(ds.path, "rf", None, folds=10, log=lambda message: None)


def test_one_estimator_interface_for_deep_models_and_baselines(ds):
    from sklearn.base import clone

    from trafficlens.evaluation.compare import create_estimator
    from trafficlens.models.baselines.features import baseline_features

    rows = np.arange(len(ds))
    train, test = rows[rows % 4 != 0], rows[rows % 4 == 0]
    for name, kw in (("dt:header", {}), ("chen-cnn", {"max_epochs": 3, "batch_size": 16, "lr": 3e-3})):
        est = clone(create_estimator(name, ds, **kw))  # clonable: parameters only, nothing fitted
        est.fit(train, ds.labels[train])
        proba = est.predict_proba(test)
        assert list(est.classes_) == list(CLASSES) and proba.shape == (len(test), 3)
        assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
        predicted = est.predict(test)
        assert predicted.tolist() == [CLASSES[i] for i in proba.argmax(axis=1)]  # predict is predict_proba's argmax
        assert est.score(test, ds.labels[test]) == pytest.approx((predicted == ds.labels[test]).mean())  # accuracy
        if name == "dt:header":  # the signal is plain in the headers
            assert est.score(test, ds.labels[test]) >= 0.9
    direct = create_estimator("dt:header").fit(baseline_features(ds, train, "header"), ds.labels[train])
    assert np.array_equal(direct.predict(baseline_features(ds, test, "header")),
                          create_estimator("dt:header", ds).fit(train, ds.labels[train]).predict(test))
    with pytest.raises(ConfigError, match="unknown model 'svm2'"):
        create_estimator("svm2")


def test_cli_cv(ds, tmp_path):
    from trafficlens.evaluation.cli import cv as cv_cmd

    r = CliRunner().invoke(cv_cmd, [str(ds.path), "--model", "nb", "--folds", "3", "-o", str(tmp_path / "cv")])
    assert r.exit_code == 0, r.output
    assert "| mean ± std |" in r.output and (tmp_path / "cv" / "cv.json").is_file()
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert saved["folds"] == 3 and len(saved["rows"]) == 3 and saved["split"] == "capture"


def test_seeds_give_one_row_per_model_and_seed_and_a_summary(ds, tmp_path):
    from trafficlens.evaluation.compare import compare

    result = compare(ds.path, "rf,nb", tmp_path / "c", split="capture", seeds=(0, 1, 2), log=lambda message: None)
    assert [(r["model"], r["seed"]) for r in result["rows"]] == [(m, s) for s in (0, 1, 2) for m in ("rf", "nb")]
    assert set(result["splits"]) == {"0", "1", "2"}
    for row in result["summary"]:
        mine = [r["macro_f1"] for r in result["rows"] if r["model"] == row["model"]]
        assert row["seeds"] == 3 and row["macro_f1"]["mean"] == pytest.approx(np.mean(mine))
        assert row["macro_f1"]["std"] == pytest.approx(np.std(mine, ddof=1))
    with open(tmp_path / "c" / "comparison.csv") as f:
        assert [(r["model"], r["seed"]) for r in csv.DictReader(f)] == [(m, str(s)) for s in (0, 1, 2) for m in ("rf", "nb")]
    assert " ± " in (tmp_path / "c" / "comparison.md").read_text()


def test_seeds_draw_different_capture_splits(ds):
    """A capture split that ignores its seed would give the same test captures every time."""
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.run import make_split

    cfg = TrainConfig()
    classes, rows, y, _ = cfg.selection.apply(ds)
    captures = ds.column("capture").astype(str)
    tests = [frozenset(captures[make_split(ds, rows, y, TrainConfig(seed=s)).test]) for s in range(4)]
    assert len(set(tests)) >= 3


def test_a_mixed_protocol_is_refused():
    from trafficlens.evaluation.compare import check_like_for_like

    check_like_for_like([{"model": "a", "seed": 0, "n_fit": 10}, {"model": "b", "seed": 0, "n_fit": 10},
                         {"model": "a", "seed": 1, "n_fit": 12}])
    with pytest.raises(RuntimeError, match="not like-for-like"):
        check_like_for_like([{"model": "a", "seed": 0, "n_fit": 10}, {"model": "b", "seed": 0, "n_fit": 13}])


def test_balance_undersample_gives_every_model_the_same_rows(tmp_path):
    from trafficlens.evaluation.compare import compare

    uneven = make_dataset(tmp_path / "u", per_class=40, short_alpha=20)
    result = compare(uneven.path, "chen-cnn,rf", None, split="random", balance="undersample",
                     log=lambda message: None, **FAST)
    fits = {r["model"]: r["n_fit"] for r in result["rows"]}
    assert fits["chen-cnn"] == fits["rf"] == 3 * 12 < result["split_info"]["sizes"]["train"]  # 20 alpha: 12 train


def test_cv_repeats_give_every_fold_of_every_repeat_and_an_interval(ds, tmp_path):
    from trafficlens.evaluation.cv import cross_validate

    result = cross_validate(ds.path, "nb", tmp_path / "cv", folds=3, repeats=2, split="capture",
                            log=lambda message: None)
    assert [(r["repeat"], r["fold"]) for r in result["rows"]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert result["seeds"] == [0, 1] and sum(r["n"] for r in result["rows"]) == 2 * len(ds)
    s = result["summary"]["accuracy"]
    low, high = s["ci95"]
    assert low <= s["mean"] <= high and s["n"] == 6
    assert (tmp_path / "cv" / "repeat-2-fold-3" / "metrics.json").is_file()
    assert "95% interval" in (tmp_path / "cv" / "cv.md").read_text()


def complementary_dataset(path, per_class=60, seed=0) -> Dataset:
    """Four classes: the statistics tell alpha and beta apart and nothing else, the header bytes
    tell gamma and delta apart and nothing else. Each single view tops out near 3/4 accuracy;
    only a model that uses both can name every class."""
    rng = np.random.default_rng(seed)
    labels = ("alpha", "beta", "gamma", "delta")
    with DatasetWriter(path, {"layer": "all", "mask": "strict", "image_bytes": 400}, image_bytes=400, packets=PACKETS,
                       packet_bytes=PACKET_BYTES, sequence_length=SEQ, stats_names=["a", "b", "c"]) as w:
        for i in range(per_class):
            for c, label in enumerate(labels):
                packets = rng.integers(0, 30, (PACKETS, PACKET_BYTES), dtype=np.uint8)
                stats = rng.normal(10, 1.5, 3).astype(np.float32)
                if label == "alpha":
                    stats[0] += 20
                elif label == "beta":
                    stats[1] += 20
                else:
                    packets[:, 22 if label == "gamma" else 48] = 200
                sequence = np.stack([np.full(SEQ, 100.0), np.zeros(SEQ)], axis=1).astype(np.float32)
                meta = {"capture": f"{label}/cap{i % 6}.pcap", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
                        "src_port": 0, "dst_port": 0, "protocol": "TCP", "ts_start": 1e9 + i, "ts_end": 1e9 + i + 1,
                        "packets": SEQ, "bytes": 800, "payload_bytes": 400, "packets_fwd": 4, "packets_bwd": 4, "label": label}
                w.add(meta, rng.integers(0, 60, 400, dtype=np.uint8), packets, sequence, stats)
    return Dataset.open(path)


def test_a_stack_of_two_views_names_what_neither_member_can_and_fits_on_validation_only(tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from trafficlens.evaluation.compare import compare

    ds = complementary_dataset(tmp_path / "ds")
    fitted_rows = []
    fit = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, X, y, *a, **k: fitted_rows.append(len(X)) or fit(self, X, y, *a, **k))
    result = compare(ds.path, "rf,rf:header", tmp_path / "c", split="capture", stack=["rf+rf:header"], seeds=(0, 1),
                     log=lambda message: None, **FAST)
    by = {(r["model"], r["seed"]): r for r in result["rows"]}
    assert result["models"] == ["rf", "rf:header", "stack:rf+rf:header"]
    for seed in (0, 1):
        stack, stats, header = by[("stack:rf+rf:header", seed)], by[("rf", seed)], by[("rf:header", seed)]
        assert max(stats["accuracy"], header["accuracy"]) <= 0.85 and stack["accuracy"] >= 0.95, (stack, stats, header)
        assert stack["n_fit"] == stats["n_fit"] and stack["n"] == stats["n"]
        assert stack["n_select"] == result["splits"][str(seed)]["sizes"]["val"] > 0
    assert fitted_rows == [by[("stack:rf+rf:header", s)]["n_select"] for s in (0, 1)]  # validation rows, nothing else
    m = json.loads((tmp_path / "c" / "models" / "stack-rf+rf-header" / "seed-0" / "metrics.json").read_text())
    assert m["kind"] == "stack" and m["members"] == ["rf", "rf:header"] and "validation" in m["selection"]
    for bad, message in (("rf+xgboost", "not in --models"), ("rf", "two or more"), ("rf+rf", "two or more")):
        with pytest.raises(ConfigError, match=message):
            compare(ds.path, "rf,rf:header", None, stack=[bad], log=lambda message: None, **FAST)

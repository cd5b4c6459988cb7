"""Metrics agree with scikit-learn; evaluate writes metrics.json and a self-contained report."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, top_k_accuracy_score

from test_predict import run  # noqa: F401  (the trained bundle fixture)
from trafficlens.training.metrics import classification_report, softmax
from trafficlens.evaluation.report import clustered_order


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=2, max_value=7), st.integers(min_value=1, max_value=80), st.integers(0, 2**31 - 1),
       st.booleans())
def test_metrics_match_sklearn(classes, n, seed, coarse):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    # coarse: few distinct scores, so ties and classes absent from y or from the predictions are common
    proba = rng.integers(0, 3, (n, classes)).astype(float) + 1e-3 if coarse else rng.random((n, classes))
    proba /= proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    labels = [f"c{i}" for i in range(classes)]
    m = classification_report(y, proba, labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    present = np.unique(y)  # macro averages leave out classes without test sessions
    for average, labels_ in (("macro", present), ("weighted", None)):
        assert m[average]["f1"] == pytest.approx(f1_score(y, pred, labels=labels_, average=average, zero_division=0))
        assert m[average]["precision"] == pytest.approx(precision_score(y, pred, labels=labels_, average=average, zero_division=0))
        assert m[average]["recall"] == pytest.approx(recall_score(y, pred, labels=labels_, average=average, zero_division=0))
    assert m["classes_without_test_sessions"] == [c for i, c in enumerate(labels) if i not in set(present.tolist())]
    assert m["macro_f1"] == m["macro"]["f1"] and m["weighted_f1"] == m["weighted"]["f1"]
    per_class_f1 = f1_score(y, pred, labels=np.arange(classes), average=None, zero_division=0)
    assert [m["per_class"][c]["f1"] for c in labels] == pytest.approx(per_class_f1.tolist())
    assert [m["per_class"][c]["support"] for c in labels] == np.bincount(y, minlength=classes).tolist()
    assert m["top_k_accuracy"]["1"] == pytest.approx(m["accuracy"])
    if not coarse:  # no ties: scikit-learn's ranking is ours
        for k in (3, 5):
            if k < classes:
                assert m["top_k_accuracy"][str(k)] == pytest.approx(top_k_accuracy_score(y, proba, k=k, labels=np.arange(classes)))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, pred, labels=np.arange(classes)).tolist()


def test_metrics_by_hand():
    """Six sessions of classes a, b, c (d has none), predictions worked out by hand."""
    proba = np.array([[0.7, 0.1, 0.1, 0.1],    # a, right
                      [0.4, 0.4, 0.1, 0.1],    # a, right: a tie goes to the lower class id
                      [0.2, 0.5, 0.3, 0.0],    # a taken for b; a third
                      [0.1, 0.6, 0.2, 0.1],    # b, right
                      [0.3, 0.1, 0.35, 0.25],  # b taken for c; b fourth
                      [0.1, 0.1, 0.7, 0.1]])   # c, right
    m = classification_report([0, 0, 0, 1, 1, 2], proba, ["a", "b", "c", "d"])
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6) and m["schema_version"] == 3
    # a: P 2/2 R 2/3 F .8; b: P 1/2 R 1/2 F .5; c: P 1/2 R 1/1 F 2/3; d: no sessions
    per_class = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1), "d": (0.0, 0.0, 0.0, 0)}
    for label, (p, r, f, n) in per_class.items():
        assert m["per_class"][label] == {"precision": pytest.approx(p), "recall": pytest.approx(r),
                                         "f1": pytest.approx(f), "support": n}, label
    assert m["macro"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(13 / 18),
                          "f1": pytest.approx((0.8 + 0.5 + 2 / 3) / 3)}  # over a, b, c: d had no test session
    assert m["weighted"] == {"precision": pytest.approx(4.5 / 6), "recall": pytest.approx(4 / 6),
                             "f1": pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)}
    assert (m["macro_f1"], m["weighted_f1"]) == (m["macro"]["f1"], m["weighted"]["f1"])
    assert m["classes_without_test_sessions"] == ["d"]
    assert m["top_k_accuracy"] == {"1": pytest.approx(4 / 6), "3": pytest.approx(5 / 6)}  # 5 > 4 classes: no top-5
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c", "d"], "rows": "true", "columns": "predicted",
                                     "matrix": [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]}
    assert softmax(np.array([[0.0, np.log(3.0)]])) == pytest.approx(np.array([[0.25, 0.75]]))


def test_top_k_up_to_the_class_count_and_no_undefined_metric_warning():
    """Three classes: top-3 is reported (k equal to the class count counts), top-5 is not; b is never
    predicted, so its precision is 0 (zero_division=0), without scikit-learn's UndefinedMetricWarning."""
    proba = np.array([[0.5, 0.3, 0.2],   # a, right
                      [0.2, 0.3, 0.5],   # a taken for c; a third
                      [0.6, 0.3, 0.1],   # b taken for a; b second
                      [0.1, 0.3, 0.6]])  # c, right
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        m = classification_report(np.array([0, 0, 1, 2]), proba, ["a", "b", "c"])
    assert m["top_k_accuracy"] == {"1": pytest.approx(2 / 4), "3": pytest.approx(4 / 4)}
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 1], [1, 0, 0], [0, 0, 1]]


def test_softmax_is_per_row_stable_and_float32():
    """Each row on its own (rows of very different scale), no overflow at large logits, float32 out."""
    logits = np.array([[0.0, np.log(3.0), -np.inf], [1000.0, 1000.0, 1000.0 + np.log(2.0)], [-5.0, -5.0, -5.0]])
    p = softmax(logits)
    assert p.dtype == np.float32 and p.shape == (3, 3)
    assert p == pytest.approx(np.array([[0.25, 0.75, 0.0], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]]), abs=1e-4)  # float32 at 1000: 6e-5 steps
    assert logits[1, 0] == 1000.0  # the input is left as it was


def _twelve_sessions(path):
    """12 sessions, labels x y z in turn, row i in capture cap{i % 4}."""
    from trafficlens.datasets import Dataset, DatasetWriter

    config = {"layer": "transport", "mask": "paper", "unit": "flow"}
    with DatasetWriter(path, config, image_bytes=4, packets=1, packet_bytes=4, sequence_length=2,
                       stats_names=["x"]) as w:
        for i in range(12):
            meta = {"capture": f"cap{i % 4}.pcap", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": i, "dst_port": 1,
                    "protocol": "UDP", "ts_start": float(i), "ts_end": i + 1.0, "packets": 1, "bytes": 30,
                    "payload_bytes": 2, "packets_fwd": 1, "packets_bwd": 0, "label": "xyz"[i % 3]}
            w.add(meta, np.full(4, i, np.uint8), np.full((1, 4), i, np.uint8), np.zeros((2, 2), np.float32),
                  np.zeros(1, np.float32))
    return Dataset.open(path)


def test_provenance_says_what_produced_the_metrics(tmp_path):
    from trafficlens.training.metrics import provenance
    from trafficlens.training.selection import ClassSelection
    from trafficlens.training.splits import PROTOCOL, Split

    ds = _twelve_sessions(tmp_path / "ds")
    split = Split("capture", np.array([0, 1, 2, 4, 5, 6]), np.array([3, 7]), np.array([8, 9, 10, 11]),
                  missing={"val": [1]}, dedup={"removed": {"val": 0, "test": 1}},
                  coverage={"single_test_capture": [0, 2], "one_side": {1: "train"}})
    out = provenance(ds, split, classes=["x", "y", "z"], seed=3, side="val", dropped={"w": 2},
                     selection=ClassSelection(min_sessions=2, exclude=("w",)))
    assert out["dataset"] == {"path": str(ds.path.resolve()), "name": "ds", "n_sessions": 12,
                              "created": ds.manifest["created"], "config": ds.config}
    assert (out["split"], out["side"], out["seed"], out["protocol"]) == ("capture", "val", 3, PROTOCOL)
    assert (out["mask"], out["layer"], out["unit"]) == ("paper", "transport", "flow")
    info = out["split_info"]
    assert info == {
        "kind": "capture", "seed": 3, "min_class_sessions": 2, "min_class_captures": 0, "include_classes": [],
        "exclude_classes": ["w"], "sizes": {"train": 6, "val": 2, "test": 4},
        "captures": {"train": 3, "val": 1, "test": 4},  # distinct captures (row i is in cap{i % 4})
        "missing": {"val": ["y"]},
        "coverage": {"single_test_capture": ["x", "z"], "one_side": {"y": "train"}},
        "warnings": ["2 classes have a single test capture (their test score is that capture's): x, z",
                     "1 classes have all their captures on one side: y (train)"],
        "dropped_classes": {"w": 2}, "deduplication": {"removed": {"val": 0, "test": 1}},
    }


def test_provenance_defaults_to_the_test_side_and_takes_a_split_without_coverage(tmp_path):
    """What training, baselines, compare and `evaluate` pass: no side, selection or dropped classes, and a
    split without coverage (random splits; the split `evaluate` rebuilds from a run's assignment)."""
    from trafficlens.training.metrics import provenance
    from trafficlens.training.splits import Split

    ds = _twelve_sessions(tmp_path / "ds")
    split = Split("random", np.array([0, 1, 2, 3, 4, 5]), np.array([6, 7, 8]), np.array([9, 10, 11]))
    out = provenance(ds, split, classes=["x", "y", "z"], seed=0)
    assert (out["split"], out["side"], out["seed"]) == ("random", "test", 0)
    assert out["split_info"] == {
        "kind": "random", "seed": 0, "min_class_sessions": 0, "min_class_captures": 0, "include_classes": [],
        "exclude_classes": [], "sizes": {"train": 6, "val": 3, "test": 3},
        "captures": {"train": 4, "val": 3, "test": 3},  # rows 0-5: cap0-3; 6, 7, 8: cap2, 3, 0; 9, 10, 11: cap1, 2, 3
        "missing": {}, "coverage": {"single_test_capture": [], "one_side": {}}, "warnings": [],
        "dropped_classes": {}, "deduplication": {},
    }


def test_clustering_groups_confused_classes():
    # classes 0 and 2 are confused with each other, 1 and 3 are clean
    matrix = np.array([[50, 0, 50, 0], [0, 100, 0, 0], [45, 0, 55, 0], [0, 0, 0, 100]])
    order, _ = clustered_order(matrix)
    pos = {c: i for i, c in enumerate(order)}
    assert abs(pos[0] - pos[2]) == 1


def test_evaluate_run_writes_metrics_and_offline_report(run, tmp_path):  # noqa: F811
    from trafficlens.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(run[0], tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["split"] == "capture" and saved["mask"] == "strict" and saved["layer"] == "all"
    assert saved["n"] == metrics["n"] > 0 and saved["parameters"] > 0
    trained = json.loads((run[0] / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # opens with no network
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 3


def test_metrics_of_nothing_scored_are_zeros_not_an_error():
    """`evaluate --on` a dataset none of whose labels the run knows scores no session; scikit-learn
    1.8 and later refuse empty input, so the report must not hand it over."""
    from trafficlens.training.metrics import classification_report

    m = classification_report(np.zeros(0, dtype=np.int64), np.zeros((0, 3)), ["a", "b", "c"])
    assert m["n"] == 0 and m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["weighted_f1"] == 0.0
    assert m["top_k_accuracy"] == {"1": 0.0, "3": 0.0}
    assert m["confusion_matrix"]["matrix"] == [[0, 0, 0]] * 3
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["classes_without_test_sessions"] == ["a", "b", "c"]

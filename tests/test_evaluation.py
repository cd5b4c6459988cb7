"""Metrics agree with scikit-learn; evaluate writes metrics.json and a self-contained report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, top_k_accuracy_score

from test_predict import run  # noqa: F401  (the trained bundle fixture)
from trafficlens.training.metrics import classification_report
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

"""Classification metrics with a stable, documented schema (`metrics.json`).

Schema (version 1): `accuracy`, `macro` and `weighted` {precision, recall, f1}, `top_k_accuracy`
{k: value}, `per_class` {label: {precision, recall, f1, support}}, `confusion_matrix` {labels,
matrix (rows = true, columns = predicted)}, `n`, plus the provenance that produced it:
`dataset`, `split`, `mask`, `layer`, `unit`, and timing and size where known.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA_VERSION = 1


def classification_report(y_true: np.ndarray, proba: np.ndarray, labels: list[str], ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, Any]:
    """Metrics of class-probability predictions `proba` (n, C) against integer labels `y_true`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_pred = proba.argmax(axis=1)
    classes = np.arange(len(labels))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    present = support > 0  # macro over the classes present in the test side
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
    }
    for name, weights in (("macro", present.astype(float)), ("weighted", support.astype(float))):
        total = weights.sum() or 1.0
        out[name] = {key: float((values * weights).sum() / total) for key, values in (("precision", p), ("recall", r), ("f1", f))}
    order = np.argsort(-proba, axis=1)
    out["top_k_accuracy"] = {
        str(k): float((order[:, :k] == y_true[:, None]).any(axis=1).mean()) for k in ks if k <= len(labels)
    }
    out["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": list(labels), "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()}
    return out

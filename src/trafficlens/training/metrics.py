"""Classification metrics with a stable, documented schema (`metrics.json`, docs/metrics-format.md).

    m = classification_report(y_true, proba, labels)          # scores
    m.update(provenance(ds, split, seed=0, ...))              # what produced them

Every producer (a training run, `evaluate`, `baseline`, `compare`, `cv`) writes the same keys:
`accuracy`, `macro` and `weighted` {precision, recall, f1} (with `macro_f1` and `weighted_f1`
as flat shorthands), `top_k_accuracy`, `per_class`, `confusion_matrix`, `n`; then the
provenance (`dataset`, `split`, `side`, `seed`, `mask`, `layer`, `unit`, `split_info`) and the
cost (`parameters`, `train_seconds`, `inference_seconds`, ...).

Macro averages run over the classes that have test sessions; classes without any (a capture
split can leave a rare class on the training side only) are listed in
`classes_without_test_sessions` and left out, so a macro-F1 never averages in a score that no
session could earn. Their wrong predictions still cost the true classes recall.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA_VERSION = 3  # 3: macro over classes with test sessions; n_fit, n_select, protocol


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, classes) logits, in float32 (one copy, worked in place)."""
    z = logits.astype(np.float32)  # a copy; subtracting the float64 max would make it float64 again
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def classification_report(y_true: np.ndarray, proba: np.ndarray, labels: list[str], ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, Any]:
    """Metrics of class-probability predictions `proba` (n, C) against integer labels `y_true`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=np.int64)
    classes = np.arange(len(labels))
    if len(y_true):
        p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
        confusion = confusion_matrix(y_true, y_pred, labels=classes).tolist()
    else:  # nothing scored (scikit-learn >= 1.8 refuses empty input): every count and score is 0
        p = r = f = np.zeros(len(labels))
        support = np.zeros(len(labels), dtype=np.int64)
        confusion = np.zeros((len(labels), len(labels)), dtype=np.int64).tolist()
    seen = support > 0
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
    }
    for name, weights in (("macro", seen.astype(float)), ("weighted", support.astype(float))):
        total = weights.sum() or 1.0
        out[name] = {key: float((values * weights).sum() / total) for key, values in (("precision", p), ("recall", r), ("f1", f))}
    out["macro_f1"], out["weighted_f1"] = out["macro"]["f1"], out["weighted"]["f1"]
    # Rank of the true class; ties break towards the lower class id, as argmax does, so top-1 = accuracy.
    true_score = (proba[np.arange(len(y_true)), y_true] if len(y_true) else np.zeros(0))[:, None]
    rank = (proba > true_score).sum(axis=1) + ((proba == true_score) & (classes < y_true[:, None])).sum(axis=1)
    out["top_k_accuracy"] = {str(k): float((rank < k).mean()) if len(y_true) else 0.0 for k in ks if k <= len(labels)}
    out["classes_without_test_sessions"] = [label for i, label in enumerate(labels) if not seen[i]]
    out["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": list(labels), "rows": "true", "columns": "predicted",
                               "matrix": confusion}
    return out


def provenance(ds, split, *, classes: list[str], seed: int, selection=None, dropped: dict[str, int] | None = None,
               side: str = "test") -> dict[str, Any]:
    """Which dataset, split, side, mask, layer, unit and fitting protocol produced a set of metrics.

    `selection`: the `training.selection.ClassSelection` that chose `classes`.
    """
    from trafficlens.training.selection import ClassSelection
    from trafficlens.training.splits import PROTOCOL, coverage_warnings

    selection = selection or ClassSelection()
    captures = ds.column("capture").astype(str)
    coverage = getattr(split, "coverage", {}) or {}
    return {
        "dataset": {"path": str(ds.path.resolve()), "name": ds.path.name, "n_sessions": len(ds),
                    "created": ds.manifest.get("created"), "config": ds.config},
        "split": split.kind, "side": side, "seed": seed,
        "mask": ds.config.get("mask"), "layer": ds.config.get("layer"), "unit": ds.config.get("unit"),
        "protocol": PROTOCOL,
        "split_info": {
            "kind": split.kind, "seed": seed, **selection.as_dict(), "sizes": split.sizes(),
            "captures": {s: int(len(np.unique(captures[getattr(split, s)]))) for s in ("train", "val", "test")},
            "missing": {s: [classes[i] for i in ids] for s, ids in split.missing.items()},
            "coverage": {"single_test_capture": [classes[i] for i in coverage.get("single_test_capture", [])],
                         "one_side": {classes[int(i)]: s for i, s in coverage.get("one_side", {}).items()}},
            "warnings": coverage_warnings(split, classes),
            "dropped_classes": dropped or {},
            "deduplication": split.dedup,
        },
    }

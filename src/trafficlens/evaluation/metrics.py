"""Classification metrics with a stable, documented schema (`metrics.json`, docs/metrics-format.md).

    m = classification_report(y_true, proba, labels)          # scores
    m.update(provenance(ds, split, seed=0, ...))              # what produced them

Every producer (a training run, `evaluate`, `baseline`, `compare`, `cv`) writes the same keys:
`accuracy`, `macro` and `weighted` {precision, recall, f1} (with `macro_f1` and `weighted_f1`
as flat shorthands), `top_k_accuracy`, `per_class`, `confusion_matrix`, `n`; then the
provenance (`dataset`, `split`, `side`, `seed`, `mask`, `layer`, `unit`, `split_info`) and the
cost (`parameters`, `train_seconds`, `inference_seconds`, ...).

Macro averages run over the classes present in the true or the predicted labels (scikit-learn's
default), so a class the test side lacks but the model predicts counts with F1 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA_VERSION = 2


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classification_report(y_true: np.ndarray, proba: np.ndarray, labels: list[str], ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, Any]:
    """Metrics of class-probability predictions `proba` (n, C) against integer labels `y_true`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=np.int64)
    classes = np.arange(len(labels))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    seen = np.isin(classes, np.concatenate([y_true, y_pred]))
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
    out["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": list(labels), "rows": "true", "columns": "predicted",
                               "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()}
    return out


def provenance(ds, split, *, classes: list[str], seed: int, min_class_sessions: int,
               dropped: dict[str, int] | None = None, side: str = "test", min_class_captures: int = 0,
               exclude_classes: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Which dataset, split, side, mask, layer and unit produced a set of metrics."""
    captures = ds.column("capture").astype(str)
    return {
        "dataset": {"path": str(ds.path.resolve()), "name": ds.path.name, "n_sessions": len(ds),
                    "created": ds.manifest.get("created"), "config": ds.config},
        "split": split.kind, "side": side, "seed": seed,
        "mask": ds.config.get("mask"), "layer": ds.config.get("layer"), "unit": ds.config.get("unit"),
        "split_info": {
            "kind": split.kind, "seed": seed, "min_class_sessions": min_class_sessions,
            "min_class_captures": min_class_captures, "exclude_classes": list(exclude_classes), "sizes": split.sizes(),
            "captures": {s: int(len(np.unique(captures[getattr(split, s)]))) for s in ("train", "val", "test")},
            "missing": {s: [classes[i] for i in ids] for s, ids in split.missing.items()},
            "dropped_classes": dropped or {},
            "deduplication": split.dedup,
        },
    }

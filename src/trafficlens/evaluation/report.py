"""Self-contained HTML reports: tables plus PNG figures inlined as data URIs (no network needed).

Figures: per-class precision/recall/F1 bars; the confusion matrix reordered by hierarchical
clustering of its row-normalised rows (Euclidean distance, average linkage, as Chen 2023
Figures 8-9) with its dendrogram; training curves from the run's history.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def clustered_order(matrix: np.ndarray) -> tuple[np.ndarray, Any]:
    """Class order from average-linkage clustering of row-normalised confusion rows, and the linkage."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    if len(rows) < 3:
        return np.arange(len(rows)), None
    link = linkage(rows, method="average", metric="euclidean")
    return leaves_list(link), link


def confusion_figure(labels: list[str], matrix: np.ndarray) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    order, link = clustered_order(matrix)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = max(4.0, 0.35 * n + 2)
    fig = plt.figure(figsize=(size + 1.5, size + 1.0))
    # Heat map and dendrogram share their x extent, so the dendrogram's leaves sit over columns.
    box = [0.25, 0.22, 0.6, 0.6]
    if link is not None:
        ax_d = fig.add_axes([box[0], box[1] + box[3] + 0.01, box[2], 0.12])
        dendrogram(link, orientation="top", no_labels=True, ax=ax_d, color_threshold=0, above_threshold_color="#555")
        ax_d.axis("off")
    ax = fig.add_axes(box)
    image = ax.imshow(norm[np.ix_(order, order)], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n), [labels[i] for i in order], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [labels[i] for i in order], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (clustered: average linkage)")
    fig.colorbar(image, cax=fig.add_axes([box[0] + box[2] + 0.02, box[1], 0.03, box[3]]), label="share of the true class")
    return _figure_png(fig)


def per_class_figure(per_class: dict[str, dict[str, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(per_class)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(labels) + 2), 3.5))
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [per_class[l][key] for l in labels], width=0.27, label=key)
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(ncols=3, fontsize=8)
    return _figure_png(fig)


def curves_figure(history: dict[str, Any]) -> str | None:
    epochs = history.get("epochs") or []
    if not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = range(1, len(epochs) + 1)
    left.plot(xs, [e.get("train_loss") for e in epochs], label="train loss")
    if epochs[0].get("val_loss") is not None:
        left.plot(xs, [e.get("val_loss") for e in epochs], label="validation loss")
    left.set_xlabel("epoch")
    left.legend(fontsize=8)
    for key in ("val_accuracy", "val_macro_f1"):
        right.plot(xs, [e.get(key) for e in epochs], label=key.replace("_", " "))
    right.set_xlabel("epoch")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=8)
    return _figure_png(fig)


def write_report(path: Path, title: str, metrics: dict[str, Any], history: dict[str, Any] | None = None) -> Path:
    """One self-contained HTML file with the tables and figures of an evaluation."""
    cm = metrics["confusion_matrix"]
    figures = [("Per-class precision, recall and F1", per_class_figure(metrics["per_class"])),
               ("Confusion matrix, classes ordered by hierarchical clustering", confusion_figure(cm["labels"], np.array(cm["matrix"])))]
    curves = curves_figure(history or {})
    if curves:
        figures.append(("Training curves", curves))
    provenance = ", ".join(f"{k}={html.escape(str(metrics.get(k)))}" for k in ("dataset", "split", "mask", "layer", "unit", "model"))
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for label, v in metrics["per_class"].items()
    )
    summary = (f"accuracy {metrics['accuracy']:.4f} · macro-F1 {metrics['macro']['f1']:.4f} · "
               f"weighted-F1 {metrics['weighted']['f1']:.4f} · n={metrics['n']}")
    body = "".join(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='{src}'>" for caption, src in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1><p><b>{summary}</b></p><p>Produced by: {provenance}</p>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>{body}</body></html>"""
    path.write_text(page)
    return path

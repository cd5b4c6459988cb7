"""Self-contained HTML reports: tables plus PNG figures inlined as data URIs (no network needed).

Figures: per-class precision/recall/F1 bars; the confusion matrix reordered by hierarchical
clustering of its row-normalised rows (Euclidean distance, average linkage, as Chen 2023
Figures 8-9) with its dendrogram; training curves from the run's history. Comparisons add the
score bars, a model x class F1 map and the cost of each model (Chen 2023 Table 9, Figure 13);
cross-validations the per-fold spread (Figure 12). Comparison and cross-validation figures are
also written as PNG and SVG files under `figures/`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trafficlens.pages import figure_png, page, pyplot


def clustered_order(matrix: np.ndarray) -> tuple[np.ndarray, Any]:
    """Class order from average-linkage clustering of row-normalised confusion rows, and the linkage."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    if len(rows) < 3:
        return np.arange(len(rows)), None
    link = linkage(rows, method="average", metric="euclidean")
    return leaves_list(link), link


def confusion_figure(labels: list[str], matrix: np.ndarray, save_as: Path | None = None) -> str:
    plt = pyplot()
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
    return figure_png(fig, save_as)


def per_class_figure(per_class: dict[str, dict[str, float]], save_as: Path | None = None) -> str:
    plt = pyplot()

    labels = list(per_class)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(labels) + 2), 3.5))
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [per_class[l][key] for l in labels], width=0.27, label=key)
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(ncols=3, fontsize=8)
    return figure_png(fig, save_as)


def curves_figure(history: dict[str, Any]) -> str | None:
    epochs = history.get("epochs") or []
    if not epochs:
        return None
    plt = pyplot()

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
    return figure_png(fig)


def group_curve_figure(curve: dict[str, list[dict[str, Any]]], by: str) -> str:
    """Accuracy against the sessions seen per group, one line per aggregator (`evaluate --by`)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for aggregator, points in curve.items():
        ax.plot([p["sessions"] for p in points], [p["accuracy"] for p in points], marker="o", markersize=3,
                label=aggregator)
    ax.set_xscale("log")
    ax.set_xlabel(f"sessions seen per {by} (its first n, in time order)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def write_report(path: Path, title: str, metrics: dict[str, Any], history: dict[str, Any] | None = None,
                 extra_figures: list[tuple[str, str]] = ()) -> Path:
    """One self-contained HTML file with the tables and figures of an evaluation."""
    cm = metrics["confusion_matrix"]
    figures = [*extra_figures, ("Per-class precision, recall and F1", per_class_figure(metrics["per_class"])),
               ("Confusion matrix, classes ordered by hierarchical clustering", confusion_figure(cm["labels"], np.array(cm["matrix"])))]
    curves = curves_figure(history or {})
    if curves:
        figures.append(("Training curves", curves))
    dataset = metrics.get("dataset")
    named = {**metrics, "dataset": dataset.get("path") if isinstance(dataset, dict) else dataset}
    provenance = ", ".join(f"{k}={html.escape(str(named.get(k)))}" for k in ("dataset", "split", "mask", "layer", "unit", "model"))
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for label, v in metrics["per_class"].items()
    )
    summary = (f"accuracy {metrics['accuracy']:.4f} · macro-F1 {metrics['macro']['f1']:.4f} · "
               f"weighted-F1 {metrics['weighted']['f1']:.4f} · n={metrics['n']}")
    notes = []
    if metrics.get("trained_on"):
        t = metrics["trained_on"]
        notes.append(f"Trained on {t.get('name')} ({t.get('split')} split, {t.get('mask')} mask), tested on every "
                     f"labelled session of {named['dataset']}.")
        unseen = metrics.get("unseen") or {}
        if unseen.get("sessions"):
            notes.append(f"{unseen['sessions']} sessions carry labels the model never learned "
                         f"({', '.join(unseen['labels'])}): " + ("scored as errors." if unseen["policy"] == "error"
                                                                 else "left out of the scores."))
        overlap = metrics.get("identical_to_training")
        if overlap:
            notes.append(f"{overlap['sessions']} sessions ({overlap['share']:.1%}) are byte-identical to a session the "
                         "model learned from or was selected on.")
    if metrics.get("classes_without_test_sessions"):
        notes.append("Classes without test sessions, left out of the macro averages: "
                     + ", ".join(metrics["classes_without_test_sessions"]) + ".")
    groups = metrics.get("groups")
    if groups:
        scores = "; ".join(f"{name} {v['accuracy']:.4f}" for name, v in groups["aggregators"].items())
        notes.append(f"Decided per {groups['by']} ({groups['key']}): {groups['n_groups']} groups of "
                     f"{groups['sessions']} test sessions; accuracy by aggregator: {scores}. Pooling uses temperature "
                     f"{groups['temperature']:.3f}, fitted on the validation split. The scores above are pooled.")
    if metrics.get("protocol"):
        notes.append(f"Protocol: {metrics['protocol']}.")
    provenance += "".join(f"</p><p>{html.escape(n)}" for n in notes)
    table = f"<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>"
    path.write_text(page(title, f"<p><b>{summary}</b></p><p>Produced by: {provenance}</p>", table, figures))
    return path


# -- comparisons and cross-validations ----------------------------------------------------------
def _html_table(rows: list[dict[str, Any]], keys: list[str], fmt) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k), k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _provenance_html(result: dict[str, Any]) -> str:
    ds = result["dataset"]
    seeds = result.get("seeds") or [result.get("seed")]
    bits = [f"dataset {ds['name']} ({ds['n_sessions']:,} sessions)", f"split {result['split']}",
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}",
            f"mask {result['mask']}", f"layer {result['layer']}", f"unit {result['unit']}", f"{len(result['classes'])} classes"]
    return "<p>Produced by: " + html.escape(", ".join(bits)) + "</p>"


def scores_figure(rows: list[dict[str, Any]], save_as: Path | None = None) -> str:
    """Accuracy and macro-F1 per model; {"mean", "std"} values get error bars (std over seeds)."""
    plt = pyplot()
    names = [r["model"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for i, (key, colour) in enumerate((("accuracy", "#9ecae1"), ("macro_f1", "#3182bd"))):
        values = [r.get(key) for r in rows]
        means = [(v["mean"] if isinstance(v, dict) else v) or 0 for v in values]
        errors = [v["std"] if isinstance(v, dict) else 0 for v in values]
        ax.barh(y + (i - 0.5) * 0.38, means, height=0.38, color=colour, label=key.replace("_", "-"),
                xerr=errors if any(errors) else None, error_kw={"elinewidth": 1, "capsize": 2})
    ax.set_yticks(y, [f"{n} ({r['kind']})" for n, r in zip(names, rows)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("test score (mean ± std over seeds)" if any(isinstance(r.get("macro_f1"), dict) for r in rows)
                  else "test score")
    ax.legend(fontsize=8, loc="lower right")
    return figure_png(fig, save_as)


def class_f1_figure(metrics: dict[str, dict[str, Any]], labels: list[str], save_as: Path | None = None) -> str:
    plt = pyplot()
    models = list(metrics)
    grid = np.array([[metrics[m]["per_class"][c]["f1"] for c in labels] for m in models])
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(labels) + 3), 0.4 * len(models) + 2))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(image, ax=ax, label="test F1")
    return figure_png(fig, save_as)


def cost_figure(rows: list[dict[str, Any]], save_as: Path | None = None) -> str:
    """Training seconds and learned parameters per model (Chen 2023 Table 9, Figure 13)."""
    plt = pyplot()
    names = [r["model"] for r in rows]
    y = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.4 * len(rows) + 1.4), sharey=True)
    colours = ["#e6550d" if r["kind"] == "deep" else "#31a354" for r in rows]
    left.barh(y, [max(r.get("train_seconds") or 0, 1e-3) for r in rows], color=colours)
    left.set_xscale("log")  # from milliseconds (naive Bayes) to minutes (deep models)
    left.set_xlabel("training seconds, log scale (deep: whole fit; baselines: fit)")
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    right.barh(y, [max(r.get("parameters") or 0, 1) for r in rows], color=colours)
    right.set_xscale("log")
    right.set_xlabel("learned parameters, log scale (weights; tree nodes; stored values)")
    for r, yy in zip(rows, y):
        if r.get("seconds_per_epoch"):
            left.annotate(f"{r['seconds_per_epoch']:.1f} s/epoch", (r["train_seconds"], yy), fontsize=7,
                          xytext=(3, -3), textcoords="offset points")
    return figure_png(fig, save_as)


def deep_curves_figure(histories: dict[str, dict[str, Any]], save_as: Path | None = None) -> str | None:
    histories = {k: h for k, h in histories.items() if h.get("epochs")}
    if not histories:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, h in histories.items():
        xs = range(1, len(h["epochs"]) + 1)
        left.plot(xs, [e.get("train_loss") for e in h["epochs"]], label=name)
        right.plot(xs, [e.get("val_macro_f1") for e in h["epochs"]], label=name)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    right.set_xlabel("epoch")
    right.set_ylabel("validation macro-F1")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=7)
    return figure_png(fig, save_as)


def spread_figure(rows: list[dict[str, Any]], keys: list[str], save_as: Path | None = None) -> str:
    """Per-fold values of each metric, one line per fold, with the mean (Chen 2023 Figure 12)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(keys)), 3.6))
    x = np.arange(len(keys))
    for r in rows:
        name = f"fold {r['fold']}" if r.get("repeat", 1) == 1 else f"repeat {r['repeat']} fold {r['fold']}"
        ax.plot(x, [r[k] for k in keys], marker="o", alpha=0.7, label=name)
    means = [float(np.mean([r[k] for r in rows])) for k in keys]
    ax.plot(x, means, "k_", markersize=30, mew=2, label="mean")
    ax.set_xticks(x, [k.replace("_", " ") for k in keys], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncols=2)
    return figure_png(fig, save_as)


def pool_seeds(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One model's metrics over several seeds: per-class scores averaged, confusion matrices summed."""
    scored = [m for m in per_seed.values() if "per_class" in m]
    if not scored:
        return {}
    labels = scored[0]["confusion_matrix"]["labels"]
    per_class = {c: {k: float(np.mean([m["per_class"][c][k] for m in scored])) for k in ("precision", "recall", "f1")}
                 | {"support": int(sum(m["per_class"][c]["support"] for m in scored))} for c in labels}
    matrix = np.sum([np.array(m["confusion_matrix"]["matrix"]) for m in scored], axis=0)
    return {"per_class": per_class, "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
            "macro_f1": float(np.mean([m["macro_f1"] for m in scored]))}


def write_comparison_report(out: Path, result: dict[str, Any], keys: Sequence[str]) -> Path:
    """report.html for a comparison (the summary table over `keys`), figures also under out/figures/."""
    from trafficlens.evaluation.tables import cell

    figs = out / "figures"
    summary, labels = result["summary"], result["classes"]
    n_seeds = len(result.get("seeds") or [result.get("seed")])
    pooled = {k: pool_seeds(per_seed) for k, per_seed in result["metrics"].items()}
    scored = {k: m for k, m in pooled.items() if m}
    over = f" (over {n_seeds} seeds)" if n_seeds > 1 else ""
    figures = [("Test accuracy and macro-F1" + over, scores_figure(summary, figs / "scores"))]
    if scored:
        figures.append(("Per-class F1 of every model" + over, class_f1_figure(scored, labels, figs / "class_f1")))
        best = max(scored, key=lambda k: scored[k]["macro_f1"])
        figures.append((f"Per-class precision, recall and F1 of the best model ({best}){over}",
                        per_class_figure(scored[best]["per_class"], figs / "best_per_class")))
        cm = scored[best]["confusion_matrix"]
        figures.append((f"Confusion matrix of {best}" + (f", summed over {n_seeds} seeds" if n_seeds > 1 else "")
                        + ", classes ordered by hierarchical clustering",
                        confusion_figure(cm["labels"], np.array(cm["matrix"]), figs / "best_confusion")))
    curves = deep_curves_figure(result.get("histories") or {}, figs / "curves")
    if curves:
        figures.append(("Training curves of the deep models" + (" (first seed)" if n_seeds > 1 else ""), curves))
    means = [{k: (v["mean"] if isinstance(v, dict) else v) for k, v in r.items()} for r in summary]
    figures.append(("Training time and parameters" + (" (means)" if n_seeds > 1 else ""), cost_figure(means, figs / "cost")))
    info = result["split_info"]
    intro = _provenance_html(result) + html.escape(
        f"Protocol: {result.get('protocol', '')}. Sessions of the first seed's split: train {info['sizes']['train']} / "
        f"val {info['sizes']['val']} / test {info['sizes']['test']}; captures {info['captures']['train']} / "
        f"{info['captures']['val']} / {info['captures']['test']}; identical tensors removed from later sides: "
        f"{info['deduplication'].get('removed')}.")
    html_page = page(f"Comparison on {result['dataset']['name']} ({result['split']} split, {result['mask']} mask)",
                 f"<p>{intro}</p>", _html_table(summary, list(keys), cell), figures)
    path = out / "report.html"
    path.write_text(html_page)
    return path


def write_cv_report(out: Path, result: dict[str, Any]) -> Path:
    from trafficlens.evaluation.tables import cell as _cell

    figs = out / "figures"
    keys = [k for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "top3_accuracy")
            if k in result["summary"]]
    figures = [("Per-fold scores (spread over folds)", spread_figure(result["rows"], keys, figs / "spread"))]
    scored = [m for m in result["metrics"] if "confusion_matrix" in m]
    if scored:
        total = np.sum([np.array(m["confusion_matrix"]["matrix"]) for m in scored], axis=0)
        figures.append(("Confusion matrix summed over folds, classes ordered by hierarchical clustering",
                        confusion_figure(result["classes"], total, figs / "confusion")))
    summary_rows = [{"fold": "mean", **{k: v["mean"] for k, v in result["summary"].items()}},
                    {"fold": "std", **{k: v["std"] for k, v in result["summary"].items()}},
                    {"fold": "95% low", **{k: v["ci95"][0] for k, v in result["summary"].items() if "ci95" in v}},
                    {"fold": "95% high", **{k: v["ci95"][1] for k, v in result["summary"].items() if "ci95" in v}}]
    table = _html_table(result["rows"] + summary_rows, ["repeat", "fold", *result["summary"]], _cell)
    repeats = result.get("repeats", 1)
    title = f"{result['model']}: {result['folds']}-fold cross-validation" + (f" x {repeats}" if repeats > 1 else "")
    intro = _provenance_html(result) + f"<p>{html.escape(result.get('interval', ''))}</p>"
    html_page = page(f"{title} on {result['dataset']['name']}", intro, table, figures)
    path = out / "report.html"
    path.write_text(html_page)
    return path

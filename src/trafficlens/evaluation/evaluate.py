"""Evaluate a trained run on its own test split: metrics.json and a self-contained report.html."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.errors import BundleError


def evaluate_run(run: str | os.PathLike, out: str | os.PathLike | None = None, dataset: str | os.PathLike | None = None) -> dict[str, Any]:
    """Re-score a run directory on the test rows it recorded in split.npy; returns the metrics.

    Writes `metrics.json` and `report.html` into `out` (default: the run directory's
    `evaluation/`).
    """
    from trafficlens.datasets import Dataset
    from trafficlens.evaluation.metrics import classification_report, provenance
    from trafficlens.evaluation.report import write_report
    from trafficlens.models import count_parameters
    from trafficlens.serving import Classifier
    from trafficlens.training.splits import Split

    run = Path(run)
    clf = Classifier.load(run, device="auto")
    config = clf.bundle.config
    ds = Dataset.open(dataset or config["dataset"]["path"])
    split_path = run / "split.npy"
    if not split_path.is_file():
        raise BundleError(f"{run}: missing split.npy (which sessions were test)")
    assignment = np.load(split_path)
    if len(assignment) != len(ds):
        raise BundleError(f"{run}: split.npy has {len(assignment)} rows, {ds.path} has {len(ds)}: not the dataset it was trained on")
    test = np.flatnonzero(assignment == 2)
    index = {label: i for i, label in enumerate(clf.labels)}
    y = np.array([index[str(label)] for label in ds.labels[test]])
    start = time.perf_counter()
    proba = clf.probabilities({name: ds.tensor(name)[test] for name in clf.inputs}) if len(test) else np.zeros((0, len(clf.labels)))
    seconds = time.perf_counter() - start
    metrics = classification_report(y, proba, clf.labels)
    history_path = run / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else {}
    split_cfg = config["split"]
    split = Split(split_cfg["kind"], *(np.flatnonzero(assignment == side) for side in range(3)),
                  dedup=split_cfg.get("deduplication", {}))
    metrics.update(model=clf.bundle.name, kind="deep", features="+".join(clf.inputs))
    metrics.update(provenance(ds, split, classes=list(clf.labels), seed=split_cfg.get("seed"),
                              min_class_sessions=split_cfg.get("min_class_sessions"), dropped=split_cfg.get("dropped_classes"),
                              min_class_captures=split_cfg.get("min_class_captures", 0),
                              exclude_classes=split_cfg.get("exclude_classes", ())))
    metrics["split_info"]["missing"] = split_cfg.get("missing", {})
    epochs = history.get("epochs", [])
    metrics.update(
        parameters=count_parameters(clf.bundle.model),
        train_seconds=history.get("seconds", sum(e.get("seconds", 0) for e in epochs)),
        epochs=len(epochs),
        seconds_per_epoch=float(np.mean([e["train_seconds"] for e in epochs])) if epochs and "train_seconds" in epochs[0] else None,
        inference_seconds=seconds,
        inference_sessions_per_s=len(test) / seconds if seconds > 0 else None,
        run=str(run),
    )
    out = Path(out) if out else run / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out / "report.html", f"{clf.bundle.name} on {ds.path.name} ({metrics['split']} split, {metrics['mask']} mask)", metrics, history)
    return metrics

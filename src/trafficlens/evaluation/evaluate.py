"""Score a run: on its own test split, or on another dataset (`evaluate RUN --on DATASET`).

    evaluate_run("runs/cnn")                              # the test sessions recorded in split.npy
    evaluate_run("runs/cnn", on="ds/other", unseen="error")   # every labelled session of another dataset

Deep runs and baseline runs alike (both load through `Classifier`). Scoring on another dataset
needs the tensors the run was trained on: the same unit, layer, mask (and mask version) and
the same tensor shapes; anything else is a one-line error naming the setting. Labels match by
name. Sessions whose label the run never learned are counted apart (`unseen`) and, with
`unseen="error"`, scored as errors. When the run's own dataset is still there, sessions of the
other dataset whose tensors are byte-identical to one the run learned from or selected on are
counted (`identical_to_training`): a cross-dataset score is only as clean as that number is small.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.errors import BundleError, ConfigError

# Settings that decide what the bytes a model reads mean; the shapes are checked tensor by tensor.
MUST_MATCH = ("unit", "layer", "mask", "mask_version")
_OPTION = {"unit": "--unit", "layer": "--layer", "mask": "--mask", "mask_version": "--mask (version)"}
_SHAPE_OPTION = {"image": "--image-bytes {0}", "packets": "--packets {0} --packet-bytes {1}",
                 "sequence": "--sequence-length {0}", "stats": "the same trafficlens version (its flow statistics differ)"}
UNSEEN = ("ignore", "error")
_CHUNK = 4096


def check_compatible(run: Path, config: dict[str, Any], ds) -> list[str]:
    """Raise ConfigError when `ds` holds other tensors than the run was trained on; return the
    differing settings that only change which sessions exist (idle timeout, filters), as notes."""
    trained = dict(config.get("preprocessing") or {})
    for key in MUST_MATCH:
        want, have = trained.get(key, 1 if key == "mask_version" else None), ds.config.get(key, 1 if key == "mask_version" else None)
        if want != have:
            raise ConfigError(f"{ds.path} was prepared with {_OPTION[key]} {have}, {run} was trained with {want}; "
                              f"prepare it again with the run's settings")
    shapes = (config.get("dataset") or {}).get("input_shapes") or {}
    for name in (config.get("model") or {}).get("inputs") or []:
        have = list(ds.tensor(name).shape[1:])
        if name in shapes and list(shapes[name]) != have:
            raise ConfigError(f"{ds.path}: its {name} tensor has shape {tuple(have)}, {run} reads {tuple(shapes[name])}; "
                              f"prepare it with {_SHAPE_OPTION[name].format(*shapes[name], *[0, 0])}")
    notes = []
    for key in ("idle_timeout", "min_packets", "min_bytes", "min_payload_packets"):
        if key in trained and trained.get(key) != ds.config.get(key):
            notes.append(f"{key}: trained with {trained.get(key)}, this dataset {ds.config.get(key)}")
    return notes


def _probabilities(clf, ds, rows: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    parts = [clf.probabilities({name: ds.tensor(name)[rows[i:i + _CHUNK]] for name in clf.inputs})
             for i in range(0, len(rows), _CHUNK)]
    proba = np.concatenate(parts) if parts else np.zeros((0, len(clf.labels)), dtype=np.float32)
    return proba, time.perf_counter() - start


def _cost(clf, run: Path, n: int, seconds: float) -> dict[str, Any]:
    from trafficlens.models import count_parameters

    history_path = run / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else {}
    epochs = history.get("epochs", [])
    deep = clf.kind == "deep"
    return {
        "parameters": count_parameters(clf.bundle.model) if deep else clf.bundle.config["model"].get("parameters"),
        "train_seconds": history.get("seconds", sum(e.get("seconds", 0) for e in epochs)) if deep else None,
        "epochs": len(epochs) if deep else None,
        "seconds_per_epoch": float(np.mean([e["train_seconds"] for e in epochs])) if epochs and "train_seconds" in epochs[0] else None,
        "inference_seconds": seconds, "inference_sessions_per_s": n / seconds if seconds > 0 else None, "run": str(run),
    }


def _identity(clf) -> dict[str, Any]:
    model = clf.bundle.config["model"]
    return {"model": clf.bundle.name, "kind": clf.kind,
            "features": model.get("features") if clf.kind == "baseline" else "+".join(clf.inputs)}


def evaluate_run(run: str | os.PathLike, out: str | os.PathLike | None = None, dataset: str | os.PathLike | None = None,
                 *, on: str | os.PathLike | None = None, unseen: str = "ignore") -> dict[str, Any]:
    """Score a run directory; writes `metrics.json` and `report.html` into `out` (default:
    RUN/evaluation, or RUN/evaluation-<dataset name> with `on`) and returns the metrics."""
    from trafficlens.inference.classifier import Classifier

    if unseen not in UNSEEN:
        raise ConfigError(f"unseen must be one of {', '.join(UNSEEN)}, got {unseen!r}")
    run = Path(run)
    clf = Classifier.load(run, device="auto")
    if on is not None:
        metrics, title, history = _on_other(clf, run, Path(on), unseen)
        default_out = run / f"evaluation-{Path(on).resolve().name}"
    else:
        metrics, title, history = _on_own_split(clf, run, dataset)
        default_out = run / "evaluation"
    from trafficlens.evaluation.report import write_report
    from trafficlens.files import atomic_write_text

    target = Path(out) if out else default_out
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(target / "report.html", title, metrics, history)
    metrics["out"] = str(target)
    return metrics


def _on_own_split(clf, run: Path, dataset) -> tuple[dict[str, Any], str, dict]:
    from trafficlens.datasets import Dataset
    from trafficlens.training.metrics import classification_report
    from trafficlens.training.bundle import read_split

    config = clf.bundle.config
    split_cfg = config.get("split") or {}
    if split_cfg.get("kind") == "none":
        raise ConfigError(f"{run} was trained with --split none: it has no test side; score it on another "
                          f"dataset with `trafficlens evaluate {run} --on DATASET`")
    ds = Dataset.open(dataset or (config.get("dataset") or {}).get("path"))
    assignment = read_split(run, len(ds))
    test = np.flatnonzero(assignment == 2)
    index = {label: i for i, label in enumerate(clf.labels)}
    y = np.array([index[str(label)] for label in ds.labels[test]], dtype=np.int64)
    proba, seconds = _probabilities(clf, ds, test)
    metrics = classification_report(y, proba, clf.labels)
    metrics.update(own_split_provenance(clf, run, ds, assignment))
    metrics.update(_pretraining(run, ds, test))
    metrics.update(_cost(clf, run, len(test), seconds))
    history_path = run / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else {}
    title = f"{clf.bundle.name} on {ds.path.name} ({metrics['split']} split, {metrics['mask']} mask)"
    return metrics, title, history


def own_split_provenance(clf, run: Path, ds, assignment: np.ndarray) -> dict[str, Any]:
    """The model, dataset, split, side, mask and protocol behind a score on the run's own test
    split (what metrics.json carries beside the scores; `evaluate --by` shares it)."""
    from trafficlens.training.metrics import provenance
    from trafficlens.training.selection import ClassSelection
    from trafficlens.training.splits import Split

    split_cfg = clf.bundle.config.get("split") or {}
    split = Split(split_cfg.get("kind", "?"), *(np.flatnonzero(assignment == side) for side in range(3)),
                  dedup=split_cfg.get("deduplication", {}))
    out = _identity(clf)
    out.update(provenance(ds, split, classes=list(clf.labels), seed=split_cfg.get("seed"),
                          selection=ClassSelection.from_config(split_cfg), dropped=split_cfg.get("dropped_classes")))
    out["split_info"]["missing"] = split_cfg.get("missing", {})
    for key in ("coverage", "warnings"):
        if key in split_cfg:
            out["split_info"][key] = split_cfg[key]
    saved = _saved_metrics(run)
    out.update(n_fit=saved.get("n_fit"), n_select=saved.get("n_select"))
    return out


def _pretraining(run: Path, ds, rows: np.ndarray) -> dict[str, Any]:
    """For a run initialised from a pre-trained encoder: the encoder and how many of the scored
    captures its pre-training read (flagged: then the score is not independent of them)."""
    from trafficlens.training.encoder import PRETRAINING, pretraining_record

    path = run / PRETRAINING
    if not path.is_file():
        return {}
    return {"pretraining": pretraining_record(json.loads(path.read_text()), ds, rows)}


def _saved_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _on_other(clf, run: Path, on: Path, unseen: str) -> tuple[dict[str, Any], str, dict]:
    from trafficlens.datasets import Dataset
    from trafficlens.training.metrics import classification_report

    config = clf.bundle.config
    ds = Dataset.open(on)
    trained_path = (config.get("dataset") or {}).get("path")
    if trained_path and Path(trained_path).resolve() == ds.path.resolve():
        raise ConfigError(f"{on} is the dataset {run} was trained on; `trafficlens evaluate {run}` (without --on) "
                          "scores its own test split")
    notes = check_compatible(run, config, ds)
    labels = ds.labels
    labelled = np.flatnonzero(np.array([x is not None for x in labels], dtype=bool))
    index = {label: i for i, label in enumerate(clf.labels)}
    names = labels[labelled].astype(str)
    known = np.array([n in index for n in names], dtype=bool)
    unseen_names, unseen_counts = np.unique(names[~known], return_counts=True)
    rows = labelled[known] if unseen == "ignore" else labelled
    y = np.array([index.get(n, -1) for n in names[known if unseen == "ignore" else slice(None)]], dtype=np.int64)
    proba, seconds = _probabilities(clf, ds, rows)
    scored = y >= 0
    metrics = classification_report(y[scored], proba[scored], clf.labels)
    n_unseen = int((~known).sum())
    if unseen == "error" and n_unseen:
        correct = int((proba[scored].argmax(1) == y[scored]).sum()) if scored.any() else 0
        metrics["accuracy_known_labels"] = metrics["accuracy"]
        metrics["accuracy"] = correct / len(y)
        metrics["n"] = int(len(y))
    metrics.update(_identity(clf))
    trained = {"name": Path(trained_path).name if trained_path else None, "path": trained_path,
               "split": (config.get("split") or {}).get("kind"), "mask": (config.get("preprocessing") or {}).get("mask")}
    metrics.update({
        "dataset": {"path": str(ds.path.resolve()), "name": ds.path.name, "n_sessions": len(ds),
                    "created": ds.manifest.get("created"), "config": ds.config},
        "trained_on": trained, "split": "other-dataset", "side": "all labelled sessions",
        "mask": ds.config.get("mask"), "layer": ds.config.get("layer"), "unit": ds.config.get("unit"),
        "unseen": {"policy": unseen, "sessions": n_unseen,
                   "labels": {str(k): int(v) for k, v in zip(unseen_names, unseen_counts)}},
        "unlabelled_sessions": int(len(ds) - len(labelled)),
        "classes_absent_from_dataset": [c for c in clf.labels if c not in set(names)],
        "setting_differences": notes,
        "identical_to_training": _overlap(trained_path, config, run, ds, rows),
    })
    metrics.update(_pretraining(run, ds, rows))
    metrics.update(_cost(clf, run, len(rows), seconds))
    title = f"{clf.bundle.name} trained on {trained['name']}, tested on {ds.path.name} ({ds.config.get('mask')} mask)"
    return metrics, title, {}


def _overlap(trained_path: str | None, config: dict[str, Any], run: Path, ds, rows: np.ndarray) -> dict[str, Any] | None:
    """Sessions of `rows` whose image + packets bytes equal a training or validation session of
    the run's own dataset (None when that dataset is gone or has no such tensors)."""
    from trafficlens.datasets import Dataset
    from trafficlens.errors import DatasetError
    from trafficlens.training.bundle import read_split
    from trafficlens.training.splits import tensor_keys

    split_path = run / "split.npy"
    if not trained_path or not split_path.is_file():
        return None
    try:
        own = Dataset.open(trained_path)
        assignment = read_split(split_path, len(own))
    except (DatasetError, BundleError):
        return None
    if own.tensor("image").shape[1:] != ds.tensor("image").shape[1:] or own.tensor("packets").shape[1:] != ds.tensor("packets").shape[1:]:
        return None
    learned = set(tensor_keys(own, np.flatnonzero((assignment == 0) | (assignment == 1))).tolist())
    mine = tensor_keys(ds, rows)
    hits = int(sum(k in learned for k in mine.tolist()))
    return {"sessions": hits, "share": hits / len(rows) if len(rows) else 0.0,
            "of": "training and validation sessions of the run's own dataset (identical image + packets bytes)"}

"""One training run, dataset directory in, model bundle out (what `trafficlens train` does).

    from trafficlens.training import TrainConfig, train_run
    summary = train_run("ds/iot", "runs/cnn", "chen-cnn", TrainConfig(split="capture"))
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trafficlens.errors import ConfigError
from trafficlens.training.config import TrainConfig


def select_classes(labels: np.ndarray, min_sessions: int) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, int]]:
    """Labelled rows of classes with >= min_sessions sessions: (classes, rows, class ids, dropped)."""
    labelled = np.array([x is not None for x in labels], dtype=bool)
    names, counts = np.unique(labels[labelled].astype(str), return_counts=True)
    keep = counts >= max(min_sessions, 1)
    classes = [str(n) for n in names[keep]]
    dropped = {str(n): int(c) for n, c in zip(names[~keep], counts[~keep])}
    if len(classes) < 2:
        raise ConfigError(f"need at least 2 classes with >= {min_sessions} sessions, found {len(classes)}; lower --min-class-sessions")
    index = {c: i for i, c in enumerate(classes)}
    rows = np.flatnonzero(labelled)
    ids = np.array([index.get(str(x), -1) for x in labels[rows]], dtype=np.int64)
    return classes, rows[ids >= 0], ids[ids >= 0], dropped


def make_split(ds, rows: np.ndarray, y: np.ndarray, cfg: TrainConfig):
    from trafficlens.training.splits import capture_split, column_split, random_split

    if cfg.split == "random":
        return random_split(rows, y, cfg.seed)
    if cfg.split == "capture":
        return capture_split(rows, y, ds.column("capture")[rows].astype(str), cfg.seed)
    return column_split(rows, y, ds.column("split")[rows])


def undersample(rows: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Positions keeping, per class, as many rows as the smallest class has (seeded)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    smallest = counts[counts > 0].min()
    keep = [rng.choice(np.flatnonzero(y == c), size=smallest, replace=False) for c in np.flatnonzero(counts)]
    return np.sort(np.concatenate(keep))


def test_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from trafficlens.training.trainer import classification_metrics

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    out = classification_metrics(y_true, y_pred)
    out["n"] = int(len(y_true))
    out["per_class"] = {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i in ids}
    out["confusion_matrix"] = {"labels": labels, "rows": "true", "columns": "predicted",
                               "matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist()}
    return out


def _model_a(from_runs: Sequence[str], ds, num_classes: int, input_shapes: dict, split_assignment: np.ndarray):
    """Build chen-model-a from trained chen-cnn and chen-gru runs (frozen branches)."""
    from trafficlens.models import create_model
    from trafficlens.training.bundle import SPLIT, load_bundle

    if len(from_runs) != 2:
        raise ConfigError("chen-model-a needs --from CNN_RUN,GRU_RUN (a chen-cnn run and a chen-gru run)")
    bundles = {}
    for path in from_runs:
        b = load_bundle(path)
        bundles[b.name] = b
        if b.preprocessing != ds.config:
            diff = sorted(k for k in set(b.preprocessing) | set(ds.config) if b.preprocessing.get(k) != ds.config.get(k))
            raise ConfigError(f"{path} was trained on a dataset prepared with other settings ({', '.join(diff)}); use the same dataset")
        split_file = Path(path) / SPLIT
        if not split_file.is_file() or not np.array_equal(np.load(split_file, allow_pickle=False), split_assignment):
            raise ConfigError(f"{path} used another train/validation/test split; train the branches with the same "
                              "--split, --seed and --min-class-sessions, or its test sessions leak into training")
    if set(bundles) != {"chen-cnn", "chen-gru"}:
        raise ConfigError(f"chen-model-a needs one chen-cnn run and one chen-gru run, got {', '.join(sorted(bundles))}")
    cnn, gru = bundles["chen-cnn"], bundles["chen-gru"]
    model = create_model("chen-model-a", num_classes, input_shapes,
                         cnn=cnn.config["model"]["config"], gru=gru.config["model"]["config"])
    for branch, trained in ((model.cnn, cnn.model), (model.gru, gru.model)):
        state = trained.state_dict()
        branch.load_state_dict({k: state[k] for k in branch.state_dict()})  # all but their classifier heads
    return model


def train_run(dataset: str | os.PathLike, out_dir: str | os.PathLike, model_name: str, cfg: TrainConfig,
              model_kwargs: dict[str, Any] | None = None, from_runs: Sequence[str] = (), progress: bool = True,
              overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train `model_name` on a dataset directory and write the bundle to `out_dir`.

    Returns a summary: test accuracy and macro-F1, best epoch, why it stopped, seconds.
    """
    from trafficlens.datasets import Dataset
    from trafficlens.models import create_model, model_info
    from trafficlens.training.bundle import CONFIG, SPLIT, save_bundle
    from trafficlens.training.trainer import fit, predict_logits, setup

    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out_dir)
    if (out / CONFIG).exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a trained model (choose another -o or pass --overwrite)")
    info = model_info(model_name)
    if from_runs and model_name != "chen-model-a":
        raise ConfigError(f"--from is only for chen-model-a, not {model_name}")
    device = setup(cfg)
    ds = Dataset.open(dataset)
    classes, rows, y_rows, dropped = select_classes(ds.labels, cfg.min_class_sessions)
    if dropped:
        log(f"dropped {len(dropped)} classes with < {cfg.min_class_sessions} sessions: {', '.join(sorted(dropped))}")
    split = make_split(ds, rows, y_rows, cfg)
    for side, absent in split.missing.items():
        log(f"warning: {len(absent)} classes have no {side} sessions in this split: {', '.join(classes[i] for i in absent)}")
    label_of = np.full(len(ds), -1, dtype=np.int64)
    label_of[rows] = y_rows
    train_idx = split.train
    if cfg.balance == "undersample":
        train_idx = train_idx[undersample(train_idx, label_of[train_idx], cfg.seed)]

    input_shapes = {t: tuple(ds.tensor(t).shape[1:]) for t in info.inputs}
    assignment = split.assignment(len(ds))
    if model_name == "chen-model-a":
        if not from_runs:
            raise ConfigError("chen-model-a trains on top of two trained runs: pass --from CNN_RUN,GRU_RUN")
        model = _model_a(from_runs, ds, len(classes), input_shapes, assignment)
    else:
        model = create_model(model_name, len(classes), input_shapes, **(model_kwargs or {}))
    tensors = {t: ds.tensor(t) for t in info.inputs}
    log(f"{model_name}: {len(classes)} classes, train {len(train_idx)} / val {len(split.val)} / test {len(split.test)} "
        f"sessions ({split.kind} split), device {device}")

    result = fit(model, tensors, train_idx, label_of[train_idx], split.val, label_of[split.val], cfg, len(classes),
                 progress=progress, device=device)

    metrics: dict[str, Any] = {"split": "test", "split_kind": split.kind}
    if len(split.test):
        logits = predict_logits(model, tensors, split.test, cfg.eval_batch_size, device, cfg.amp)
        metrics.update(test_metrics(label_of[split.test], logits.argmax(1), classes))
    metrics.update({"layer": ds.config.get("layer"), "mask": ds.config.get("mask"), "unit": ds.config.get("unit")})
    history = {"epochs": result.history, "best_epoch": result.best_epoch, "best_val_macro_f1": result.best_val_macro_f1,
               "stopped": result.stopped, "seconds": result.seconds}
    split_info = {"kind": split.kind, "seed": cfg.seed, "min_class_sessions": cfg.min_class_sessions,
                  "sizes": split.sizes(), "train_after_balance": int(len(train_idx)), "file": SPLIT,
                  "missing": {side: [classes[i] for i in ids] for side, ids in split.missing.items()},
                  "dropped_classes": dropped}
    dataset_info = {"path": str(Path(dataset).resolve()), "n_sessions": len(ds), "created": ds.manifest.get("created"),
                    "format_version": ds.manifest.get("format_version"), "input_shapes": {k: list(v) for k, v in input_shapes.items()}}
    model.cpu()
    save_bundle(out, model, labels=classes, preprocessing=ds.config, train=cfg.to_dict(), split=split_info,
                dataset=dataset_info, history=history, metrics=metrics,
                extra={"from": [str(p) for p in from_runs]} if from_runs else None)
    np.save(out / SPLIT, assignment, allow_pickle=False)
    return {"out": str(out), "model": model_name, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "epochs": len(result.history), "seconds": result.seconds, "val_macro_f1": result.best_val_macro_f1,
            "test_accuracy": metrics.get("accuracy"), "test_macro_f1": metrics.get("macro_f1")}

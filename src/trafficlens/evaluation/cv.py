"""Stratified group k-fold cross-validation of one model: what `trafficlens cv` does.

    from trafficlens.evaluation.cv import cross_validate
    result = cross_validate("ds/iot", "chen-model-b", "reports/cv", folds=4, split="capture")
    result["summary"]["macro_f1"]        # {"mean": ..., "std": ..., "min": ..., "max": ...}

Chen 2023 Algorithm 1 with groups: the sessions are cut into k folds (`capture`: whole capture
files per fold, StratifiedGroupKFold; `random` / `packet-leak`: StratifiedKFold by session);
each fold is the test side once, and of the other folds a quarter (by capture) is the
validation side for early stopping (and `--tune`). Chen scored one fixed test set after every
fold; here each held-out fold is scored, so every session is tested once and the spread covers
both the training data and the test captures. Identical tensors are removed from the later side
within each fold, as in `compare`. For `chen-model-a` each fold trains its own `chen-cnn` and
`chen-gru` first, as Algorithm 1 does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trafficlens.errors import ConfigError
from trafficlens.evaluation.compare import CompareConfig, parse_models, prepare, run_model, table_row

CV_SPLITS = ("capture", "random", "packet-leak")
SUMMARY_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "top3_accuracy",
                "train_seconds", "inference_seconds")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1), min and max."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def cross_validate(dataset: str | os.PathLike, model: str, out: str | os.PathLike | None = None, folds: int = 4,
                   cfg: CompareConfig | None = None, *, log: Callable[[str], None] | None = None, **settings) -> dict[str, Any]:
    """k-fold scores of `model` (a deep model or `baseline[:features]`); writes `out` when given."""
    from trafficlens.evaluation.metrics import provenance
    from trafficlens.training.run import log_split
    from trafficlens.training.splits import deduplicate, kfold_splits, tensor_keys

    cfg = dataclasses.replace(cfg or CompareConfig(), **settings) if settings else (cfg or CompareConfig())
    log = log or (lambda message: print(message, file=sys.stderr))
    if cfg.split not in CV_SPLITS:
        raise ConfigError(f"cv folds by {', '.join(CV_SPLITS)}; --split {cfg.split} has no k-fold form "
                          "(a time split has one future; use `trafficlens train --split time`)")
    specs = parse_models(model)
    if len(specs) != 1:
        raise ConfigError(f"cv takes one model, got {len(specs)}; compare several with `trafficlens compare`")
    spec = specs[0]
    p = prepare(dataset, cfg, log)
    y = p.label_of[p.rows]
    groups = p.ds.column("capture")[p.rows].astype(str) if cfg.split == "capture" else None
    splits = kfold_splits(p.rows, y, folds, groups, cfg.seed, kind=cfg.split)
    keys = tensor_keys(p.ds, p.rows)
    per_fold: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trafficlens-cv-") as scratch:
        base = Path(out) if out is not None else Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        for i, split in enumerate(splits):
            deduplicate(split, p.rows, y, keys, remove=cfg.split != "packet-leak")
            log(f"-- fold {i + 1}/{folds}: train {len(split.train)} / val {len(split.val)} / test {len(split.test)} sessions")
            log_split(split, p.classes, log)
            m = run_model(p, spec, split, cfg, base / f"fold-{i + 1}" / "runs", log)
            m["fold"] = i + 1
            per_fold.append(m)
            log(f"fold {i + 1}: accuracy {m.get('accuracy', float('nan')):.4f}, macro-F1 {m.get('macro_f1', float('nan')):.4f}")
        rows = [table_row(m) | {"fold": m["fold"]} for m in per_fold]
        summary = {k: spread([r[k] for r in rows]) for k in SUMMARY_KEYS if all(r.get(k) is not None for r in rows)}
        info = provenance(p.ds, splits[0], classes=p.classes, seed=cfg.seed, min_class_sessions=cfg.min_class_sessions,
                          min_class_captures=cfg.min_class_captures, exclude_classes=cfg.exclude_classes,
                          dropped=p.dropped)
        info.pop("split_info")
        result = {"kind": "cross-validation", "model": spec.key, "folds": folds, "config": dataclasses.asdict(cfg),
                  "classes": p.classes, **info, "summary": summary, "rows": rows,
                  "fold_sizes": [s.sizes() for s in splits],
                  "fold_deduplication": [s.dedup for s in splits], "metrics": per_fold}
        if out is not None:
            write_cv(base, result)
    return result


def markdown(result: dict[str, Any]) -> str:
    keys = [k for k in SUMMARY_KEYS if k in result["summary"]]
    lines = [f"# {result['model']}: {result['folds']}-fold cross-validation on {result['dataset']['name']}", "",
             f"{result['split']} folds (seed {result['seed']}), {result['mask']} mask, {result['layer']} layer, "
             f"{len(result['classes'])} classes.", "",
             "| fold | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for r in result["rows"]:
        lines.append(f"| {r['fold']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
    s = result["summary"]
    lines.append("| mean ± std | " + " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_cv(out: Path, result: dict[str, Any]) -> None:
    from trafficlens.evaluation.compare import write_csv
    from trafficlens.evaluation.report import write_cv_report

    for m in result["metrics"]:
        target = out / f"fold-{m['fold']}"
        target.mkdir(parents=True, exist_ok=True)
        (target / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    (out / "cv.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "cv.md").write_text(markdown(result))
    write_csv(out / "cv.csv", result["rows"], ("fold", *[k for k in SUMMARY_KEYS]))
    write_cv_report(out, result)

"""Stratified group k-fold cross-validation of one model: what `trafficlens cv` does.

    from trafficlens.evaluation.cv import cross_validate
    result = cross_validate("ds/iot", "chen-model-b", "reports/cv", folds=4, repeats=3, split="capture")
    result["summary"]["macro_f1"]   # {"mean", "std", "min", "max", "n", "ci95": [low, high]}

Chen 2023 Algorithm 1 with groups: the sessions are cut into k folds (`capture`: whole capture
files per fold, dealt at random per seed and stratified where captures allow; `random` /
`packet-leak`: StratifiedKFold by session); each fold is the test side once, and of the other
folds a quarter (by capture) is the validation side for early stopping (and `--tune`). Every
fold follows the one fitting protocol of `compare` (`training.splits.PROTOCOL`). Chen scored
one fixed test set after every fold; here each held-out fold is scored, so every session is
tested once per repeat and the spread covers both the training data and the test captures.
`repeats` R runs the k folds R times with seeds seed, seed+1, ... (repeated group k-fold).
Identical tensors are removed from the later side within each fold. For `chen-model-a` each
fold trains its own `chen-cnn` and `chen-gru` first, as Algorithm 1 does.

The 95% interval is Nadeau and Bengio's corrected resampled t interval: the folds share training
data, so their scores are correlated and the plain t interval over R*k scores is too narrow;
the variance is inflated by (1/(R k) + n_test/n_train) before the t quantile with R k - 1
degrees of freedom.
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


def interval(values: list[float], test_share: float) -> list[float]:
    """Nadeau-Bengio corrected resampled t interval (95%) of the mean of `values`."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    n = len(a)
    if n < 2:
        return [float(a.mean()), float(a.mean())] if n else [float("nan"), float("nan")]
    ratio = test_share / max(1.0 - test_share, 1e-9)
    half = stats.t.ppf(0.975, n - 1) * np.sqrt((1.0 / n + ratio) * a.var(ddof=1))
    return [float(a.mean() - half), float(a.mean() + half)]


def cross_validate(dataset: str | os.PathLike, model: str, out: str | os.PathLike | None = None, folds: int = 4,
                   cfg: CompareConfig | None = None, *, repeats: int = 1, log: Callable[[str], None] | None = None,
                   **settings) -> dict[str, Any]:
    """k-fold scores of `model` (a deep model or `baseline[:features]`), `repeats` times; writes `out` when given."""
    from trafficlens.training.metrics import provenance
    from trafficlens.evaluation.tables import spread
    from trafficlens.training.run import log_split
    from trafficlens.training.splits import deduplicate, kfold_splits, tensor_keys

    cfg = dataclasses.replace(cfg or CompareConfig(), **settings) if settings else (cfg or CompareConfig())
    log = log or (lambda message: print(message, file=sys.stderr))
    if cfg.split not in CV_SPLITS:
        raise ConfigError(f"cv folds by {', '.join(CV_SPLITS)}; --split {cfg.split} has no k-fold form "
                          "(a time split has one future; use `trafficlens train --split time`)")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    specs = parse_models(model)
    if len(specs) != 1:
        raise ConfigError(f"cv takes one model, got {len(specs)}; compare several with `trafficlens compare`")
    spec = specs[0]
    p = prepare(dataset, cfg, log)
    y = p.label_of[p.rows]
    groups = p.ds.column("capture")[p.rows].astype(str) if cfg.split == "capture" else None
    keys = tensor_keys(p.ds, p.rows)
    per_fold: list[dict[str, Any]] = []
    all_splits = []
    with tempfile.TemporaryDirectory(prefix="trafficlens-cv-") as scratch:
        base = Path(out) if out is not None else Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        for r in range(repeats):
            seed = cfg.seed + r
            fold_cfg = dataclasses.replace(cfg, seed=seed)
            splits = kfold_splits(p.rows, y, folds, groups, seed, kind=cfg.split)
            for i, split in enumerate(splits):
                deduplicate(split, p.rows, y, keys, remove=cfg.split != "packet-leak")
                name = f"repeat-{r + 1}-fold-{i + 1}" if repeats > 1 else f"fold-{i + 1}"
                log(f"-- {name.replace('-', ' ')} (seed {seed}): train {len(split.train)} / val {len(split.val)} / "
                    f"test {len(split.test)} sessions")
                log_split(split, p.classes, log)
                m = run_model(p, spec, split, fold_cfg, Path(scratch) / name / "runs", log)
                m.pop("run", None)
                m.update(fold=i + 1, repeat=r + 1, name=name)
                per_fold.append(m)
                all_splits.append(split)
                log(f"{name}: accuracy {m.get('accuracy', float('nan')):.4f}, macro-F1 {m.get('macro_f1', float('nan')):.4f}")
        rows = [table_row(m) | {"fold": m["fold"], "repeat": m["repeat"]} for m in per_fold]
        test_share = float(np.mean([len(s.test) / max(len(s.train) + len(s.val) + len(s.test), 1) for s in all_splits]))
        summary = {}
        for k in SUMMARY_KEYS:
            values = [r[k] for r in rows if r.get(k) is not None]
            if len(values) == len(rows):
                summary[k] = spread(values) | {"ci95": interval(values, test_share)}
        info = provenance(p.ds, all_splits[0], classes=p.classes, seed=cfg.seed, selection=cfg.selection,
                          dropped=p.dropped)
        info.pop("split_info")
        result = {"kind": "cross-validation", "model": spec.key, "folds": folds, "repeats": repeats,
                  "seeds": [cfg.seed + r for r in range(repeats)], "config": dataclasses.asdict(cfg),
                  "classes": p.classes, **info, "summary": summary, "rows": rows,
                  "interval": "95% Nadeau-Bengio corrected resampled t interval",
                  "fold_sizes": [s.sizes() for s in all_splits],
                  "fold_deduplication": [s.dedup for s in all_splits], "metrics": per_fold}
        if out is not None:
            write_cv(base, result)
    return result


def markdown(result: dict[str, Any]) -> str:
    from trafficlens.evaluation.tables import cell

    keys = [k for k in SUMMARY_KEYS if k in result["summary"]]
    reps = result.get("repeats", 1)
    title = f"{result['folds']}-fold cross-validation" + (f", repeated {reps} times" if reps > 1 else "")
    lines = [f"# {result['model']}: {title} on {result['dataset']['name']}", "",
             f"{result['split']} folds (seed{'s' if reps > 1 else ''} {', '.join(map(str, result['seeds']))}), "
             f"{result['mask']} mask, {result['layer']} layer, {len(result['classes'])} classes.", "",
             f"Protocol: {result['protocol']}.", "",
             "| repeat | fold | " + " | ".join(keys) + " |", "|---:|---:|" + "---:|" * len(keys)]
    for r in result["rows"]:
        lines.append(f"| {r['repeat']} | {r['fold']} | " + " | ".join(cell(r[k], k) for k in keys) + " |")
    s = result["summary"]
    lines.append("| | mean ± std | " + " | ".join(f"{cell(s[k]['mean'], k)} ± {cell(s[k]['std'], k)}" for k in keys) + " |")
    lines.append("| | 95% interval | " + " | ".join(f"{cell(s[k]['ci95'][0], k)} to {cell(s[k]['ci95'][1], k)}"
                                                    for k in keys) + " |")
    return "\n".join(lines) + "\n\n" + f"Interval: {result['interval']}.\n"


def write_cv(out: Path, result: dict[str, Any]) -> None:
    from trafficlens.evaluation.report import write_cv_report
    from trafficlens.evaluation.tables import csv_text
    from trafficlens.files import atomic_write_text

    for m in result["metrics"]:
        target = out / m["name"]
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target / "metrics.json", json.dumps(m, indent=2) + "\n")
    atomic_write_text(out / "cv.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "cv.md", markdown(result))
    atomic_write_text(out / "cv.csv", csv_text(result["rows"], ("repeat", "fold", "seed", "n_fit", "n_select",
                                                                 *SUMMARY_KEYS)))
    write_cv_report(out, result)

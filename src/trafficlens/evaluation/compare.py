"""Deep models and baselines side by side on one split: what `trafficlens compare` does.

    from trafficlens.evaluation.compare import compare
    result = compare("ds/iot", ["chen-cnn", "rf", "xgboost:header", "lightgbm"], "reports/iot",
                     split="capture", seed=0, min_class_sessions=50)
    result["rows"]            # one dict per model: accuracy, macro_f1, ..., parameters, seconds

A model is a registered deep model (`trafficlens models`) or a baseline, optionally with its
feature set (`rf:header`; default `stats`, `sequence` for knn-seq). Every model sees the same
split (made once, identical tensors removed from the later side), deep models train on its
train side with early stopping on val, baselines fit train + val (`--tune`: grid on val
first). `chen-model-a` is fused from this comparison's `chen-cnn` and `chen-gru` runs (trained
for it when not listed). Writes, under `out`: `comparison.json`, `comparison.md`,
`comparison.csv`, `report.html` (offline), `figures/*.png|svg`, `models/<model>/metrics.json`
and the deep models' run directories under `runs/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trafficlens.errors import ConfigError

MODEL_A_BRANCHES = ("chen-cnn", "chen-gru")


@dataclass
class CompareConfig:
    """Settings shared by every model of a comparison (or a cross-validation)."""

    split: str = "capture"
    seed: int = 0
    min_class_sessions: int = 0
    min_class_captures: int = 0  # classes seen in fewer capture files are dropped
    exclude_classes: tuple[str, ...] = ()
    mask: str | None = None  # the dataset's mask must be this one (None: whatever it has)
    tune: bool = False  # baselines: small grid search on the validation side
    class_weight: str | None = None  # baselines: "balanced"
    balance: str = "none"  # deep models: none | undersample | weights (training side only)
    loss: str = "ce"
    max_epochs: int = 30
    patience: int = 5
    time_budget: float | None = None  # seconds per deep model
    batch_size: int = 256
    device: str = "auto"
    progress: bool = False

    def __post_init__(self) -> None:
        self.train_config()  # checks split, balance, loss, epochs, budget, device
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")

    def train_config(self):
        from trafficlens.training.config import TrainConfig

        return TrainConfig(split=self.split, seed=self.seed, min_class_sessions=self.min_class_sessions,
                           min_class_captures=self.min_class_captures, exclude_classes=self.exclude_classes,
                           balance=self.balance, loss=self.loss, max_epochs=self.max_epochs, patience=self.patience,
                           time_budget=self.time_budget, batch_size=self.batch_size, device=self.device)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # deep | baseline
    features: str | None = None  # baselines only

    @property
    def key(self) -> str:
        """The name, with `:features` where they are not the baseline's own (`rf:header`, but `rf`)."""
        from trafficlens.evaluation.baselines import baseline_info

        if self.kind == "deep" or self.features == baseline_info(self.name).features:
            return self.name
        return f"{self.name}:{self.features}"


def parse_models(models: str | Sequence[str]) -> list[ModelSpec]:
    """`chen-cnn,rf,xgboost:header` (or a list) to specs; unknown names fail with both registries listed."""
    from trafficlens.evaluation.baselines import baseline_info, list_baselines
    from trafficlens.evaluation.features import FEATURE_KINDS
    from trafficlens.models import list_models

    items = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not items:
        raise ConfigError("--models names no model; e.g. --models chen-cnn,rf,xgboost,lightgbm")
    deep, baselines = set(list_models()), set(list_baselines())
    specs: list[ModelSpec] = []
    for item in items:
        name, _, features = item.partition(":")
        if name in deep:
            if features:
                raise ConfigError(f"{item}: deep models read their own tensors; drop ':{features}'")
            spec = ModelSpec(name, "deep")
        elif name in baselines:
            features = features or baseline_info(name).features
            if features not in FEATURE_KINDS:
                raise ConfigError(f"{item}: unknown feature set {features!r}; choose from {', '.join(FEATURE_KINDS)}")
            spec = ModelSpec(name, "baseline", features)
        else:
            raise ConfigError(f"unknown model {name!r}; deep models: {', '.join(sorted(deep))}; "
                              f"baselines: {', '.join(list_baselines())}")
        if spec in specs:
            raise ConfigError(f"{item} is listed twice in --models")
        specs.append(spec)
    return specs


def create_estimator(model: str, dataset=None, seed: int = 0, **params):
    """One scikit-learn estimator for any model name: a `Baseline` or a deep `TrafficClassifier`.

    Both take X = session row numbers into `dataset` (or their own array forms), so pipelines,
    `clone` and `GridSearchCV` treat deep models and baselines alike:

        create_estimator("rf:header", ds).fit(rows, ds.labels[rows])
        create_estimator("chen-cnn", ds, max_epochs=10).fit(rows, ds.labels[rows])
    """
    from trafficlens.evaluation.baselines import create_baseline
    from trafficlens.training.estimator import TrafficClassifier

    (spec,) = parse_models([model])
    if spec.kind == "baseline":
        return create_baseline(spec.name, spec.features, dataset=dataset, random_state=seed, **params)
    return TrafficClassifier(model=spec.name, dataset=dataset, seed=seed, **params)


@dataclass
class Prepared:
    """An open dataset with its selected classes, labels per row and one split."""

    ds: Any
    classes: list[str]
    rows: np.ndarray
    label_of: np.ndarray  # class id per dataset row, -1 outside the selection
    dropped: dict[str, int]


def prepare(dataset: str | os.PathLike, cfg: CompareConfig, log: Callable[[str], None]) -> Prepared:
    from trafficlens.datasets import Dataset
    from trafficlens.training.run import select_dataset_classes

    ds = Dataset.open(dataset)
    if cfg.mask is not None and ds.config.get("mask") != cfg.mask:
        raise ConfigError(f"{ds.path} was prepared with --mask {ds.config.get('mask')}, not {cfg.mask}; "
                          f"prepare it with `trafficlens prep ... --mask {cfg.mask}`")
    classes, rows, y, dropped = select_dataset_classes(ds, cfg.min_class_sessions, cfg.min_class_captures,
                                                       cfg.exclude_classes, log)
    label_of = np.full(len(ds), -1, dtype=np.int64)
    label_of[rows] = y
    return Prepared(ds, classes, rows, label_of, dropped)


def run_model(p: Prepared, spec: ModelSpec, split, cfg: CompareConfig, runs: Path, log: Callable[[str], None],
              trained: dict[str, Path] | None = None) -> dict[str, Any]:
    """Train or fit one model on `split`, score its test side; metrics in the metrics.json schema.

    Deep runs are written to `runs/<name>` and recorded in `trained`; `chen-model-a` reuses the
    `chen-cnn` / `chen-gru` runs in `trained`, training them first when absent.
    """
    from trafficlens.evaluation.baselines import score_baseline
    from trafficlens.evaluation.metrics import provenance
    from trafficlens.training.run import train_run

    trained = {} if trained is None else trained
    if spec.kind == "baseline":
        m = score_baseline(p.ds, spec.name, split, p.classes, p.label_of, features=spec.features, seed=cfg.seed,
                           class_weight=cfg.class_weight, tune=cfg.tune, log=log)
        m.update(provenance(p.ds, split, classes=p.classes, seed=cfg.seed, min_class_sessions=cfg.min_class_sessions,
                            min_class_captures=cfg.min_class_captures, exclude_classes=cfg.exclude_classes,
                            dropped=p.dropped))
        return m
    from_runs: list[str] = []
    if spec.name == "chen-model-a":
        for branch in MODEL_A_BRANCHES:
            if branch not in trained:
                log(f"chen-model-a: training its {branch} branch first")
                run_model(p, ModelSpec(branch, "deep"), split, cfg, runs, log, trained)
            from_runs.append(str(trained[branch]))
    run_dir = runs / spec.name
    train_run(p.ds.path, run_dir, spec.name, cfg.train_config(), from_runs=from_runs, progress=cfg.progress,
              overwrite=True, log=log, split=split)
    trained[spec.name] = run_dir
    m = json.loads((run_dir / "metrics.json").read_text())
    m["run"] = str(run_dir)
    return m


ROW_KEYS = ("model", "kind", "features", "n", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1",
            "top3_accuracy", "parameters", "train_seconds", "seconds_per_epoch", "inference_seconds")


def table_row(m: dict[str, Any]) -> dict[str, Any]:
    """The comparison table's columns from one metrics dict."""
    macro = m.get("macro") or {}
    return {"model": m["model"], "kind": m["kind"], "features": m.get("features"), "n": m.get("n"),
            "accuracy": m.get("accuracy"), "macro_precision": macro.get("precision"), "macro_recall": macro.get("recall"),
            "macro_f1": m.get("macro_f1"), "weighted_f1": m.get("weighted_f1"),
            "top3_accuracy": (m.get("top_k_accuracy") or {}).get("3"), "parameters": m.get("parameters"),
            "train_seconds": m.get("train_seconds"), "seconds_per_epoch": m.get("seconds_per_epoch"),
            "inference_seconds": m.get("inference_seconds")}


def compare(dataset: str | os.PathLike, models: str | Sequence[str], out: str | os.PathLike | None = None,
            cfg: CompareConfig | None = None, *, log: Callable[[str], None] | None = None, **settings) -> dict[str, Any]:
    """Every model on one split of `dataset`; returns {"rows", "metrics", "split", ...} and writes `out`.

    `settings` are CompareConfig fields (split, seed, mask, min_class_sessions, tune, time_budget...)
    overriding `cfg`. Rows come in the order of `models`.
    """
    from trafficlens.evaluation.metrics import provenance
    from trafficlens.training.run import log_split, make_split

    cfg = dataclasses.replace(cfg or CompareConfig(), **settings) if settings else (cfg or CompareConfig())
    log = log or (lambda message: print(message, file=sys.stderr))
    specs = parse_models(models)
    p = prepare(dataset, cfg, log)
    split = make_split(p.ds, p.rows, p.label_of[p.rows], cfg.train_config())
    log_split(split, p.classes, log)
    with tempfile.TemporaryDirectory(prefix="trafficlens-compare-") as scratch:
        base = Path(out) if out is not None else Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        trained: dict[str, Path] = {}
        metrics: dict[str, dict[str, Any]] = {}
        for spec in sorted(specs, key=lambda s: s.name == "chen-model-a"):  # fused model after its branches
            log(f"-- {spec.key}")
            m = run_model(p, spec, split, cfg, base / "runs", log, trained)
            metrics[spec.key] = m
            log(f"{spec.key}: accuracy {m.get('accuracy', float('nan')):.4f}, macro-F1 {m.get('macro_f1', float('nan')):.4f}")
        info = provenance(p.ds, split, classes=p.classes, seed=cfg.seed, min_class_sessions=cfg.min_class_sessions,
                          min_class_captures=cfg.min_class_captures, exclude_classes=cfg.exclude_classes,
                          dropped=p.dropped)
        result = {"kind": "comparison", "models": [s.key for s in specs], "config": dataclasses.asdict(cfg),
                  "classes": p.classes, **info,
                  "rows": [table_row(metrics[s.key]) | {"model": s.key} for s in specs],
                  "metrics": {s.key: metrics[s.key] for s in specs}}
        if out is not None:
            write_comparison(base, result)
    return result


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key in ("parameters", "n"):
        return f"{int(value):,}"
    if key.endswith("seconds") or key == "seconds_per_epoch":
        return f"{value:.1f}" if value >= 1 else f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], keys: Sequence[str] = ROW_KEYS) -> str:
    best = max((r["macro_f1"] for r in rows if r.get("macro_f1") is not None), default=None)
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" if k in ("model", "kind", "features") else "---:" for k in keys) + "|"]
    for r in rows:
        cells = [_cell(r.get(k), k) for k in keys]
        if best is not None and r.get("macro_f1") == best and "macro_f1" in keys:
            i = list(keys).index("macro_f1")
            cells[i] = f"**{cells[i]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(keys), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_comparison(out: Path, result: dict[str, Any]) -> None:
    """comparison.json / .md / .csv, models/<model>/metrics.json, figures/ and report.html."""
    from trafficlens.evaluation.report import write_comparison_report

    for key, m in result["metrics"].items():
        target = out / "models" / key.replace(":", "-")
        target.mkdir(parents=True, exist_ok=True)
        (target / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    write_csv(out / "comparison.csv", result["rows"], ROW_KEYS)
    info = result["split_info"]
    head = (f"# Comparison on {result['dataset']['name']}\n\n{result['split']} split (seed {result['seed']}), "
            f"{result['mask']} mask, {result['layer']} layer; {len(result['classes'])} classes; sessions "
            f"train {info['sizes']['train']} / val {info['sizes']['val']} / test {info['sizes']['test']}; "
            f"captures {info['captures']['train']} / {info['captures']['val']} / {info['captures']['test']}.\n\n")
    (out / "comparison.md").write_text(head + markdown_table(result["rows"]))
    write_comparison_report(out, result)

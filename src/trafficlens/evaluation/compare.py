"""Deep models and baselines side by side on the same splits: what `trafficlens compare` does.

    from trafficlens.evaluation.compare import compare
    result = compare("ds/iot", ["chen-cnn", "rf", "xgboost:header", "lightgbm"], "reports/iot",
                     split="capture", seeds=(0, 1, 2), min_class_sessions=50)
    result["summary"]         # one dict per model: mean and std over the seeds of every score
    result["rows"]            # one dict per model and seed: accuracy, macro_f1, ..., n_fit, n_select

A model is a registered deep model (`trafficlens models`) or a baseline, optionally with its
feature set (`rf:header`; default `stats`, `sequence` for knn-seq). For every seed one split is
made (identical tensors removed from the later side) and every model follows one protocol
(`training.splits.PROTOCOL`): it learns from the same training sessions (`n_fit`, equal in every
row of a seed, checked), selects on the validation side (deep models: the early-stopping epoch;
baselines with `--tune`: the grid point) and is scored on the test side; nothing is refitted on
training + validation. `--balance` applies to every model alike: `undersample` draws the same
training rows for all, `weights` weighs classes in deep training and baseline fits. A model
built on trained runs (`chen-model-a`: `chen-cnn` and `chen-gru`) is built from the same seed's
runs of those models, trained for it when not listed.
Writes, under `out`: `comparison.json`, `comparison.md`, `comparison.csv` (one row per model and
seed), `report.html` (offline), `figures/*.png|svg`, `models/<model>/seed-<s>/metrics.json` and,
with `save_models`, every fitted model as a bundle under `runs/seed-<s>/<model>/` (deep runs and
baselines alike: `predict`, `serve` and `evaluate --on` take them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trafficlens.errors import ConfigError



@dataclass
class CompareConfig:
    """Settings shared by every model of a comparison (or a cross-validation)."""

    split: str = "capture"
    seed: int = 0
    min_class_sessions: int = 0
    min_class_captures: int = 0  # classes seen in fewer capture files are dropped
    include_classes: tuple[str, ...] = ()
    exclude_classes: tuple[str, ...] = ()
    mask: str | None = None  # the dataset's mask must be this one (None: whatever it has)
    tune: bool = False  # baselines: small grid search on the validation side
    balance: str = "none"  # every model: none | undersample | weights (training side only)
    loss: str = "ce"
    max_epochs: int | None = None  # None: the model's own default, else TrainConfig's (30)
    patience: int | None = None  # None: likewise (5)
    time_budget: float | None = None  # seconds per deep model
    batch_size: int | None = None  # None: likewise (256; the Ge models 32)
    device: str = "auto"
    lr: float | None = None  # None: TrainConfig's
    schedule: str | None = None  # learning-rate schedule (None: TrainConfig's)
    focal_gamma: float | None = None
    num_threads: int | None = None
    progress: bool = False
    save_models: bool = False  # keep every fitted model as a bundle under OUT/runs/

    def __post_init__(self) -> None:
        self.include_classes, self.exclude_classes = tuple(self.include_classes), tuple(self.exclude_classes)
        cfg = self.train_config()  # checks split, balance, loss, epochs, budget, device, classes
        if cfg.split == "none":
            raise ConfigError("--split none has no test side to compare on; use capture, random, time or column")

    @property
    def selection(self):
        from trafficlens.training.selection import ClassSelection

        return ClassSelection.from_config(self)

    def train_config(self, seed: int | None = None, model: str | None = None):
        """The TrainConfig of one training: these settings over `model`'s own training defaults
        (the same for every seed and split of a comparison: like for like)."""
        from trafficlens.training.config import TrainConfig, with_model_defaults

        chosen = {"lr": self.lr, "schedule": self.schedule, "focal_gamma": self.focal_gamma, "num_threads": self.num_threads,
                  "max_epochs": self.max_epochs, "patience": self.patience, "batch_size": self.batch_size}
        return TrainConfig(split=self.split, seed=self.seed if seed is None else seed,
                           min_class_sessions=self.min_class_sessions, min_class_captures=self.min_class_captures,
                           include_classes=self.include_classes, exclude_classes=self.exclude_classes,
                           balance=self.balance, loss=self.loss, time_budget=self.time_budget, device=self.device,
                           **with_model_defaults(model, chosen))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # deep | baseline
    features: str | None = None  # baselines only
    settings: tuple[tuple[str, Any], ...] = ()  # deep models: model settings of this variant (`--set`)

    @property
    def key(self) -> str:
        """The name, with `:features` where they are not the baseline's own (`rf:header`, but `rf`),
        and a variant's settings (`tl-fusion[use_bytes=false]`)."""
        from trafficlens.models.baselines.estimators import baseline_info

        if self.settings:
            return f"{self.name}[{','.join(f'{k}={json.dumps(v)}' for k, v in self.settings)}]"
        if self.kind == "deep" or self.features == baseline_info(self.name).features:
            return self.name
        return f"{self.name}:{self.features}"


def _split_models(models: str) -> list[str]:
    """Split at the commas outside brackets: `a,b[x=1,y=2]` -> `a`, `b[x=1,y=2]`."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(models):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(models[start:i])
            start = i + 1
    return items + [models[start:]]


def _variant(item: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """`tl-fusion[use_bytes=false,dim=128]` -> ("tl-fusion", (("dim", 128), ("use_bytes", False)))."""
    from trafficlens.training.config import parse_settings

    name, bracket, rest = item.partition("[")
    if not bracket:
        return name, ()
    if not rest.endswith("]") or not rest[:-1].strip():
        raise ConfigError(f"{item}: write a variant as MODEL[KEY=VALUE,...], e.g. tl-fusion[use_bytes=false]")
    settings = parse_settings(_split_models(rest[:-1]), option=item)
    return name.strip(), tuple(sorted(settings.items()))


def parse_models(models: str | Sequence[str]) -> list[ModelSpec]:
    """`chen-cnn,rf,xgboost:header,tl-fusion[use_bytes=false]` (or a list) to specs; unknown names
    fail with both registries listed, unknown settings with the model's own."""
    from trafficlens.models.baselines.estimators import baseline_info, list_baselines
    from trafficlens.models.baselines.features import FEATURE_KINDS
    from trafficlens.models import list_models, model_info

    items = [m.strip() for m in (_split_models(models) if isinstance(models, str) else models) if m.strip()]
    if not items:
        raise ConfigError("--models names no model; e.g. --models chen-cnn,rf,xgboost,lightgbm")
    deep, baselines = set(list_models("deep")), set(list_baselines())
    specs: list[ModelSpec] = []
    for item in items:
        variant, settings = _variant(item)
        name, _, features = variant.partition(":")
        if name in deep:
            if features:
                raise ConfigError(f"{item}: deep models read their own tensors; drop ':{features}'")
            fields = {f.name for f in dataclasses.fields(model_info(name, "deep").config_cls)}
            unknown = sorted({k for k, _ in settings} - fields)
            if unknown:
                raise ConfigError(f"{item}: unknown setting(s) {', '.join(unknown)} for {name}; "
                                  f"allowed: {', '.join(sorted(fields))}")
            spec = ModelSpec(name, "deep", settings=settings)
        elif name in baselines:
            if settings:
                raise ConfigError(f"{item}: variants in brackets are for deep models; tune baselines with --tune")
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
    from trafficlens.models.baselines.estimators import create_baseline
    from trafficlens.training.estimator import TrafficClassifier

    (spec,) = parse_models([model])
    if spec.kind == "baseline":
        return create_baseline(spec.name, spec.features, dataset=dataset, random_state=seed, **params)
    if spec.settings:
        params["model_params"] = {**dict(spec.settings), **(params.get("model_params") or {})}
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

    ds = Dataset.open(dataset)
    if cfg.mask is not None and ds.config.get("mask") != cfg.mask:
        raise ConfigError(f"{ds.path} was prepared with --mask {ds.config.get('mask')}, not {cfg.mask}; "
                          f"prepare it with `trafficlens prep ... --mask {cfg.mask}`")
    classes, rows, y, dropped = cfg.selection.apply(ds, log)
    label_of = np.full(len(ds), -1, dtype=np.int64)
    label_of[rows] = y
    return Prepared(ds, classes, rows, label_of, dropped)


def run_model(p: Prepared, spec: ModelSpec, split, cfg: CompareConfig, runs: Path, log: Callable[[str], None],
              trained: dict[str, Path] | None = None, fitted: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train or fit one model on `split` (seeded by `cfg.seed`), score its test side; metrics in
    the metrics.json schema, with `n_fit` and `n_select`.

    Deep runs are written to `runs/<name>` and recorded in `trained`; a model built on trained runs
    (`ModelInfo.from_runs`) reuses those in `trained`, training them first when absent. Baselines are
    written there as bundles when `cfg.save_models`, and kept in `fitted` (for stacking).
    """
    from trafficlens.training.baselines import score_baseline
    from trafficlens.training.metrics import provenance
    from trafficlens.training.run import DATA_SETTINGS, train_run

    trained = {} if trained is None else trained
    if spec.kind == "baseline":
        baseline = score_baseline(p.ds, spec.name, split, p.classes, p.label_of, features=spec.features, seed=cfg.seed,
                                  balance=cfg.balance, tune=cfg.tune, log=log)
        if fitted is not None:
            fitted[spec.key] = baseline
        m = baseline.metrics
        m.update(provenance(p.ds, split, classes=p.classes, seed=cfg.seed, selection=cfg.selection, dropped=p.dropped))
        if cfg.save_models:
            from trafficlens.training.bundle import save_baseline_bundle
            from trafficlens.training.card import write_card

            target = runs / spec.key.replace(":", "-")
            save_baseline_bundle(target, baseline, p.ds, split, train=cfg.train_config().to_dict(), overwrite=True)
            write_card(target, p.ds)
            m["run"] = str(target)
        return m
    from trafficlens.models import model_info
    from trafficlens.models.registry import TRAINING_DEFAULT_KEYS

    from_runs: list[str] = []
    for branch in model_info(spec.name).from_runs:
        if branch not in trained:
            log(f"{spec.name}: training its {branch} branch first")
            run_model(p, ModelSpec(branch, "deep"), split, cfg, runs, log, trained)
        from_runs.append(str(trained[branch]))
    run_dir = runs / re.sub(r"[^\w.=-]+", "-", spec.key).strip("-")
    train = cfg.train_config(model=spec.name)
    train_run(p.ds.path, run_dir, spec.name, train, model_kwargs=dict(spec.settings),
              from_runs=from_runs, progress=cfg.progress, overwrite=True, log=log, split=split)
    trained[spec.key] = run_dir
    m = json.loads((run_dir / "metrics.json").read_text())
    m["run"], m["model"] = str(run_dir), spec.key
    m["training"] = {k: getattr(train, k) for k in (*TRAINING_DEFAULT_KEYS, "time_budget")}
    if spec.settings:
        m["model_settings"] = dict(spec.settings)
    # every setting the model was built with, defaults included (a default that changes, as
    # tl-fusion's members did, stays readable in old comparisons); not those the data decides
    built = json.loads((run_dir / "config.json").read_text())["model"]["config"]
    m["model_config"] = {k: v for k, v in built.items() if k not in DATA_SETTINGS}
    return m


ROW_KEYS = ("model", "kind", "features", "seed", "n_fit", "n_select", "n", "accuracy", "macro_precision",
            "macro_recall", "macro_f1", "weighted_f1", "top3_accuracy", "parameters", "train_seconds",
            "seconds_per_epoch", "inference_seconds")
SCORE_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "top3_accuracy",
              "train_seconds", "inference_seconds")
SUMMARY_KEYS = ("model", "kind", "features", "seeds", "n_fit", "n_select", "accuracy", "macro_f1", "weighted_f1",
                "top3_accuracy", "parameters", "train_seconds")


def table_row(m: dict[str, Any]) -> dict[str, Any]:
    """The comparison table's columns from one metrics dict."""
    macro = m.get("macro") or {}
    return {"model": m["model"], "kind": m["kind"], "features": m.get("features"), "seed": m.get("seed"),
            "n_fit": m.get("n_fit"), "n_select": m.get("n_select"), "n": m.get("n"),
            "accuracy": m.get("accuracy"), "macro_precision": macro.get("precision"), "macro_recall": macro.get("recall"),
            "macro_f1": m.get("macro_f1"), "weighted_f1": m.get("weighted_f1"),
            "top3_accuracy": (m.get("top_k_accuracy") or {}).get("3"), "parameters": m.get("parameters"),
            "train_seconds": m.get("train_seconds"), "seconds_per_epoch": m.get("seconds_per_epoch"),
            "inference_seconds": m.get("inference_seconds")}


def check_like_for_like(rows: list[dict[str, Any]]) -> None:
    """Every model of one seed learned from the same number of sessions (the protocol's promise)."""
    for seed in sorted({r["seed"] for r in rows}):
        fits = {r["model"]: r["n_fit"] for r in rows if r["seed"] == seed}
        if len(set(fits.values())) > 1:
            raise RuntimeError(f"comparison is not like-for-like: seed {seed} fitted on {fits} sessions")


def summarise(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per model: mean and std over its seeds for every score."""
    from trafficlens.evaluation.tables import spread

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        row = {k: mine[0].get(k) for k in ("model", "kind", "features")}
        row["seeds"] = len(mine)
        for k in ("n_fit", "n_select", "parameters"):
            values = [r.get(k) for r in mine if r.get(k) is not None]
            row[k] = spread(values)["mean"] if values else None
        for k in keys:
            values = [r.get(k) for r in mine if r.get(k) is not None]
            row[k] = spread(values) if values else None
        out.append(row)
    return out


def compare(dataset: str | os.PathLike, models: str | Sequence[str], out: str | os.PathLike | None = None,
            cfg: CompareConfig | None = None, *, seeds: Sequence[int] | None = None, stack: Sequence[str] | str = (),
            log: Callable[[str], None] | None = None, **settings) -> dict[str, Any]:
    """Every model on the same split of `dataset`, once per seed; returns {"summary", "rows",
    "metrics", ...} and writes `out`.

    `settings` are CompareConfig fields (split, seed, mask, min_class_sessions, tune, time_budget...)
    overriding `cfg`; `seeds` defaults to `(cfg.seed,)`. Each seed draws its own split and seeds
    every model's training with it. Rows come per seed, in the order of `models`, then one per
    `stack` (`tl-fusion+xgboost`: a meta-model over those models' probabilities, fitted on
    validation; evaluation/stacking.py).
    """
    from trafficlens.evaluation.stacking import parse_stacks, stack_key
    from trafficlens.training.metrics import provenance
    from trafficlens.progress import Steps
    from trafficlens.training.run import log_split, make_split

    cfg = dataclasses.replace(cfg or CompareConfig(), **settings) if settings else (cfg or CompareConfig())
    seeds = list(dict.fromkeys(int(s) for s in (seeds if seeds is not None and len(seeds) else [cfg.seed])))
    log = log or (lambda message: print(message, file=sys.stderr))
    specs = parse_models(models)
    stacks = parse_stacks(stack, [s.key for s in specs])
    keys = [s.key for s in specs] + [stack_key(m) for m in stacks]
    if cfg.save_models and out is None:
        raise ConfigError("save_models needs an output directory to keep the models in")
    p = prepare(dataset, cfg, log)
    rows: list[dict[str, Any]] = []
    metrics: dict[str, dict[str, Any]] = {key: {} for key in keys}
    splits: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="trafficlens-compare-") as scratch:
        base = Path(out) if out is not None else Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        runs_root = base / "runs" if cfg.save_models else Path(scratch) / "runs"
        info = None
        steps = Steps(len(seeds) * len(specs), log)  # model i of n, with an ETA
        for seed in seeds:
            seed_cfg = dataclasses.replace(cfg, seed=seed)
            split = make_split(p.ds, p.rows, p.label_of[p.rows], seed_cfg.train_config())
            log(f"== seed {seed}: {split.kind} split, train {len(split.train)} / val {len(split.val)} / "
                f"test {len(split.test)} sessions")
            log_split(split, p.classes, log)
            _run_seed(p, specs, stacks, split, seed_cfg, runs_root / f"seed-{seed}", log, steps, metrics)
            rows += [table_row(metrics[key][str(seed)]) | {"model": key, "seed": seed} for key in keys]
            seed_info = provenance(p.ds, split, classes=p.classes, seed=seed, selection=cfg.selection, dropped=p.dropped)
            splits[str(seed)] = seed_info["split_info"]
            info = info or seed_info
        steps.finish()
        check_like_for_like(rows)
        histories = {}  # the first seed's training curves, for the report
        for key, per_seed in metrics.items():
            history = Path(per_seed[str(seeds[0])].get("run") or "/nonexistent") / "history.json"
            if history.is_file():
                histories[key] = json.loads(history.read_text())
            if not cfg.save_models:
                for m in per_seed.values():
                    m.pop("run", None)  # scratch runs, gone with this function
        result = {"kind": "comparison", "models": keys, "stacks": [list(m) for m in stacks], "seeds": seeds,
                  "config": dataclasses.asdict(cfg), "classes": p.classes, **info, "seed": seeds[0],
                  "splits": splits, "summary": summarise(rows, SCORE_KEYS), "rows": rows, "metrics": metrics,
                  "histories": histories}
        if out is not None:
            write_comparison(base, result)
    return result


def _run_seed(p: Prepared, specs: list[ModelSpec], stacks: list[tuple[str, ...]], split, cfg: CompareConfig, runs: Path,
              log: Callable[[str], None], steps, metrics: dict[str, dict[str, Any]]) -> None:
    """One seed's models on its split, then its stacks; each model's metrics into `metrics[key][seed]`."""
    from trafficlens.evaluation.stacking import stack_key, stack_metrics
    from trafficlens.training.metrics import provenance

    seed = str(cfg.seed)
    trained: dict[str, Path] = {}
    fitted: dict[str, Any] = {}
    for spec in sorted(specs, key=_built_on_runs):  # models built on runs after the runs
        steps.start(f"{spec.key}, seed {seed}")
        m = run_model(p, spec, split, cfg, runs, log, trained, fitted)
        metrics[spec.key][seed] = m
        log(f"{spec.key}: accuracy {m.get('accuracy', float('nan')):.4f}, "
            f"macro-F1 {m.get('macro_f1', float('nan')):.4f} (fit on {m.get('n_fit')} sessions)")
    for members in stacks:
        key = stack_key(members)
        m = stack_metrics(p.ds, p.classes, p.label_of, split, members, {k: metrics[k][seed] for k in members}, fitted,
                          cfg.seed)
        m.update(provenance(p.ds, split, classes=p.classes, seed=cfg.seed, selection=cfg.selection, dropped=p.dropped))
        metrics[key][seed] = m
        log(f"{key}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} (meta-model fitted on "
            f"{m['n_select']} validation sessions)")


def summary_markdown(result: dict[str, Any]) -> str:
    """Mean ± std per model over the seeds."""
    from trafficlens.evaluation.tables import markdown_table

    return markdown_table(result["summary"], SUMMARY_KEYS)


def write_comparison(out: Path, result: dict[str, Any]) -> None:
    """comparison.json / .md / .csv, models/<model>/seed-<s>/metrics.json, figures/ and report.html."""
    from trafficlens.evaluation.report import write_comparison_report
    from trafficlens.evaluation.tables import csv_text
    from trafficlens.files import atomic_write_text

    for key, per_seed in result["metrics"].items():
        for seed, m in per_seed.items():
            target = out / "models" / key.replace(":", "-") / f"seed-{seed}"
            target.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target / "metrics.json", json.dumps(m, indent=2) + "\n")
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "comparison.csv", csv_text(result["rows"], ROW_KEYS))
    atomic_write_text(out / "comparison.md", comparison_markdown(result))
    write_comparison_report(out, result, SUMMARY_KEYS)


def comparison_markdown(result: dict[str, Any]) -> str:
    from trafficlens.evaluation.tables import markdown_table

    info = result["split_info"]
    seeds = ", ".join(map(str, result["seeds"]))
    head = (f"# Comparison on {result['dataset']['name']}\n\n{result['split']} split, seeds {seeds}; "
            f"{result['mask']} mask, {result['layer']} layer; {len(result['classes'])} classes; sessions of seed "
            f"{result['seeds'][0]}: train {info['sizes']['train']} / val {info['sizes']['val']} / "
            f"test {info['sizes']['test']}.\n\nProtocol: {result['protocol']}.\n\n"
            f"## Mean ± std over {len(result['seeds'])} seed(s)\n\n")
    return (head + summary_markdown(result) + "\n## Every model and seed\n\n"
            + markdown_table(result["rows"], ROW_KEYS))


def _built_on_runs(spec: ModelSpec) -> bool:
    from trafficlens.models import model_info

    return spec.kind == "deep" and bool(model_info(spec.name).from_runs)

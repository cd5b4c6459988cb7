"""Leakage audit: how much of a score comes from the split and from identifying header fields?

    result = audit("ds/iot", "reports/leak", AuditConfig(model="chen-cnn"))

The same captures are scored under four settings (Zhao et al. 2025; Wickramasinghe et al. 2025):

- (a) the papers' protocol: `random` split (sessions of one capture on both sides), `paper` mask
  (addresses zeroed, everything else kept);
- (b) `capture` split, `paper` mask: what the split leak was worth is (a) - (b);
- (c) `capture` split, `strict` mask (also ports, IP id, checksums, sequence numbers, TCP
  timestamps, flow label, TLS SNI): what those fields were worth is (b) - (c);
- (d) header only: the baseline on the first packets' header bytes with nothing masked
  (addresses, ports, TTL, window...) and no payload, under both splits: how far identity alone goes.

In (a)-(c) three models run: the deep model, the baseline on header bytes (which see exactly
the masked bytes the deep model sees) and the baseline on flow statistics (which no mask
touches, so it isolates the split's effect). Datasets for the other masks are re-prepared from
the captures named in the dataset's manifest (`sources`), with every other prep setting kept,
and cached under `OUT/datasets/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trafficlens.errors import ConfigError
from trafficlens.pages import figure_png, page, pyplot


@dataclass(frozen=True)
class Setting:
    key: str
    title: str
    split: str
    mask: str
    header_only: bool = False


SETTINGS = (
    Setting("a", "papers' protocol: random split, paper mask", "random", "paper"),
    Setting("b", "capture split, paper mask", "capture", "paper"),
    Setting("c", "capture split, strict mask (our default)", "capture", "strict"),
    Setting("d-random", "header bytes only, nothing masked, random split", "random", "none", header_only=True),
    Setting("d-capture", "header bytes only, nothing masked, capture split", "capture", "none", header_only=True),
)


@dataclass
class AuditConfig:
    """What `audit` runs. `training`: TrainConfig settings of the deep trainings (batch size,
    learning rate, patience, ...), as `train` takes them; split, seed and classes come from here."""

    model: str = "chen-cnn"  # the deep model; "" or None skips it
    baseline: str = "rf"  # a fast registered baseline, run on header bytes and on stats
    min_class_sessions: int = 0  # as `train`: keep every class unless asked
    min_class_captures: int = 0
    include_classes: tuple[str, ...] = ()
    exclude_classes: tuple[str, ...] = ()
    seed: int = 0
    time_budget: float = 180.0  # seconds per deep training (three trainings per audit)
    max_epochs: int = 30
    batch_size: int | None = None  # None: the model's own default, else TrainConfig's (256)
    training: dict[str, Any] = field(default_factory=dict)  # further TrainConfig settings (lr, patience, device, ...)
    workers: int | None = None  # prep workers for the re-prepared masks
    captures: tuple[str, ...] = ()  # where the captures are when the manifest has no `sources`

    def __post_init__(self) -> None:
        if self.time_budget <= 0:
            raise ConfigError(f"audit time budget must be > 0 seconds, got {self.time_budget}")
        if self.min_class_sessions < 0:
            raise ConfigError(f"min_class_sessions must be >= 0, got {self.min_class_sessions}")
        self.train_config("capture")  # checks the training settings before any work

    def train_config(self, split: str):
        """The TrainConfig of one setting's trainings."""
        from trafficlens.training.config import TrainConfig, with_model_defaults

        chosen = with_model_defaults(self.model, {**self.training, "batch_size": self.batch_size})
        return TrainConfig.from_dict({**chosen, "split": split, "seed": self.seed,
                                      "min_class_sessions": self.min_class_sessions,
                                      "min_class_captures": self.min_class_captures,
                                      "include_classes": self.include_classes, "exclude_classes": self.exclude_classes,
                                      "time_budget": self.time_budget, "max_epochs": self.max_epochs})


def dataset_for_mask(dataset: Path, mask: str, cache: Path, cfg: AuditConfig, log: Callable[[str], None]) -> Path:
    """`dataset` itself when it was prepared with `mask`, else a re-prepared copy under `cache`."""
    from trafficlens.datasets import Dataset
    from trafficlens.prep.config import MASK_VERSION, PrepConfig
    from trafficlens.prep.local import prep

    ds = Dataset.open(dataset)
    if ds.config.get("mask") == mask:
        return dataset
    config = dataclasses.replace(PrepConfig.from_dict(ds.config), mask=mask, mask_version=MASK_VERSION)
    target = cache / f"mask-{mask}"
    if (target / "manifest.json").exists():
        cached = json.loads((target / "manifest.json").read_text())
        if cached.get("config") == config.to_dict():
            log(f"reusing {target} ({mask} mask)")
            return target
    sources = list(cfg.captures) or ds.manifest.get("sources") or []
    if not sources:
        raise ConfigError(f"{dataset}: its manifest does not say where its captures are (made by an older "
                          f"trafficlens); pass --captures PATH to re-prepare them with the {mask} mask")
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise ConfigError(f"{dataset}: the captures it was prepared from are gone ({', '.join(missing)}); "
                          f"pass --captures PATH")
    log(f"preparing {target} from {', '.join(sources)} with the {mask} mask (other settings as {dataset})")
    t0 = time.perf_counter()
    prep(sources, target, config, workers=cfg.workers, overwrite=True)
    log(f"prepared {target} in {time.perf_counter() - t0:.0f} s")
    return target


def _jobs(setting: Setting, cfg: AuditConfig) -> list[tuple[str, str]]:
    """The baseline fits of one setting: header bytes always, flow statistics unless header-only."""
    return [(cfg.baseline, "header")] + ([] if setting.header_only else [(cfg.baseline, "stats")])


def _row(setting: Setting, model: str, kind: str, features: str, m: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"setting": setting.key, "title": setting.title, "split": setting.split, "mask": setting.mask,
            "model": model, "kind": kind, "features": features, "n_fit": m.get("n_fit"), "n_select": m.get("n_select"),
            "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "weighted_f1": m.get("weighted_f1"),
            "n_test": m.get("n"), "seconds": round(seconds, 1)}


def audit(dataset: str | os.PathLike, out: str | os.PathLike, cfg: AuditConfig | None = None,
          progress: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every setting, write `audit.json`, `audit.md`, `audit.csv` and `report.html` to `out`."""
    from trafficlens.datasets import Dataset
    from trafficlens.models.baselines.estimators import baseline_info
    from trafficlens.training.baselines import train_baseline
    from trafficlens.models import model_info
    from trafficlens.progress import Steps
    from trafficlens.training.run import train_run

    cfg = cfg or AuditConfig()
    log = log or (lambda message: print(message, file=sys.stderr))
    if cfg.model:
        model_info(cfg.model, "deep")  # unknown names fail before any work
    baseline_info(cfg.baseline)
    dataset, out = Path(dataset), Path(out)
    source = Dataset.open(dataset)
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda message: None  # noqa: E731 - the per-model chatter of train_baseline
    rows: list[dict[str, Any]] = []
    datasets: dict[str, str] = {}
    t_start = time.perf_counter()
    steps = Steps(sum(len(_jobs(s, cfg)) + bool(cfg.model and not s.header_only) for s in SETTINGS), log)
    for setting in SETTINGS:
        if setting.mask not in datasets:
            datasets[setting.mask] = str(dataset_for_mask(dataset, setting.mask, out / "datasets", cfg, log))
        ds_path = datasets[setting.mask]
        train = cfg.train_config(setting.split)
        for name, features in _jobs(setting, cfg):
            steps.start(f"({setting.key}) {name} on {features}")
            t0 = time.perf_counter()
            m = train_baseline(ds_path, name, features, train, log=quiet)
            rows.append(_row(setting, name, "baseline", features, m, time.perf_counter() - t0))
            log(f"({setting.key}) {name} on {features}: macro-F1 {m.get('macro_f1', float('nan')):.3f}")
        if cfg.model and not setting.header_only:
            steps.start(f"({setting.key}) {cfg.model}")
            t0 = time.perf_counter()
            run_dir = out / "runs" / f"{setting.key}-{cfg.model}"
            summary = train_run(ds_path, run_dir, cfg.model, train, progress=progress, overwrite=True, log=quiet)
            m = json.loads((run_dir / "metrics.json").read_text())
            rows.append(_row(setting, cfg.model, "deep", "+".join(model_info(cfg.model).inputs), m,
                             time.perf_counter() - t0))
            log(f"({setting.key}) {cfg.model}: macro-F1 {summary['test_macro_f1']:.3f} "
                f"({summary['epochs']} epochs, stopped: {summary['stopped']})")
    steps.finish()
    result = {
        "dataset": str(dataset.resolve()), "n_sessions": len(source), "config": dataclasses.asdict(cfg),
        "prep": {k: source.config.get(k) for k in ("unit", "layer", "image_bytes", "packets", "packet_bytes", "labels")},
        "datasets": datasets, "settings": [dataclasses.asdict(s) for s in SETTINGS], "rows": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_outputs(out, result)
    return result


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(model, features) pairs in first-seen order: the table's result columns."""
    seen: list[tuple[str, str]] = []
    for r in rows:
        if (r["model"], r["features"]) not in seen:
            seen.append((r["model"], r["features"]))
    return seen


def markdown_table(result: dict[str, Any]) -> str:
    """One row per setting, one column per (model, features): test accuracy / macro-F1."""
    from trafficlens.evaluation.tables import markdown_table as table

    rows, columns = result["rows"], _columns(result["rows"])
    names = [f"{m} on {f}" for m, f in columns]
    pivot = []
    for s in result["settings"]:
        row = {"setting": f"({s['key']}) {s['title']}", "split": s["split"], "mask": s["mask"]}
        for name, (model, features) in zip(names, columns):
            hit = [r for r in rows if r["setting"] == s["key"] and r["model"] == model and r["features"] == features]
            row[name] = (f"{hit[0]['accuracy']:.3f} / {hit[0]['macro_f1']:.3f}"
                         if hit and hit[0]["accuracy"] is not None else "—")
        pivot.append(row)
    return table(pivot, ["setting", "split", "mask", *names], bold_best=None) + "\nCells: test accuracy / macro-F1.\n"


def figure(result: dict[str, Any]) -> str:
    """Grouped bars of macro-F1 per setting and model, as a data URI."""
    import numpy as np

    plt = pyplot()
    keys = [s["key"] for s in result["settings"]]
    columns = _columns(result["rows"])
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 3.6))
    width = 0.8 / max(len(columns), 1)
    for i, (model, features) in enumerate(columns):
        values = []
        for key in keys:
            hit = [r["macro_f1"] for r in result["rows"] if r["setting"] == key and r["model"] == model
                   and r["features"] == features and r["macro_f1"] is not None]
            values.append(hit[0] if hit else np.nan)
        ax.bar(np.arange(len(keys)) + (i - (len(columns) - 1) / 2) * width, values, width, label=f"{model} on {features}")
    ax.set_xticks(np.arange(len(keys)), [f"({k})" for k in keys])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test macro-F1")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    import csv
    import html

    (out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / "audit.md").write_text(table)
    with open(out / "audit.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result["rows"][0]) if result["rows"] else ["setting"])
        writer.writeheader()
        writer.writerows(result["rows"])
    settings = "".join(f"<li><b>({s['key']})</b> {html.escape(s['title'])}</li>" for s in result["settings"])
    cells = table.strip().splitlines()
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in cells[0].strip("|").split("|"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
                   for line in cells[2:] if line.startswith("|"))

    tables = (f"<table><tr>{head}</tr>{body}</table><p>Cells: test accuracy / macro-F1. Prep: "
              f"{html.escape(json.dumps(result['prep']))}.</p>")
    (out / "report.html").write_text(page(f"Leakage audit of {result['dataset']}", f"<ul>{settings}</ul>", tables,
                                          [("Test macro-F1 per setting", figure(result))]))

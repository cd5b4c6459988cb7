"""`TrainConfig`: every setting of a training run, checked once at the boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

from trafficlens.errors import ConfigError

LOSSES = ("ce", "weighted-ce", "focal")
BALANCES = ("none", "undersample", "weights")
SPLITS = ("random", "capture", "time", "packet-leak", "column", "none")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("plateau", "cosine")


@dataclass
class TrainConfig:
    """Optimisation and data settings (the model's own settings live in its config).

    balance: `undersample` draws every class down to the smallest one in the training split;
    `weights` samples batches with probability inversely proportional to class frequency
    (class-balanced sampling, same number of batches). Validation and test are never balanced.
    split: `random` (stratified 60/20/20 by session), `capture` (grouped by capture file,
    stratified where possible), `time` (earliest sessions train, latest test), `packet-leak`
    (random without cross-side deduplication: the papers' error, as a demonstration),
    `column` (the dataset's `split` column: train/val/test), `none` (a deployment model: every
    session trains but a 10% random slice for early stopping; no test side, no test score).
    Identical tensors are removed from the later side in all but `packet-leak`
    (training/splits.py).
    """

    max_epochs: int = 30
    time_budget: float | None = None  # seconds for the whole fit; checked after every batch
    batch_size: int = 256
    eval_batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # epochs without a better validation macro-F1 before stopping
    lr_patience: int = 2  # epochs without improvement before the learning rate halves
    lr_factor: float = 0.5
    # plateau: halve the rate after lr_patience epochs without improvement. cosine: warm up over
    # the first 2% of the run, then anneal to 0 at its end: the time budget when one is given
    # (the rate reaches 0 as time runs out), else max_epochs; for short budgets (issue 18)
    schedule: str = "plateau"
    loss: str = "ce"
    focal_gamma: float = 2.0
    balance: str = "none"
    split: str = "capture"
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    bn_batches: int = 16  # training batches that re-estimate batch-norm statistics before each validation (0: off)
    min_class_sessions: int = 0  # drop classes with fewer labelled sessions
    min_class_captures: int = 0  # drop classes seen in fewer capture files
    include_classes: tuple[str, ...] = ()  # only these labels (empty: all that pass the minimums)
    exclude_classes: tuple[str, ...] = ()  # labels never trained on (e.g. "Unknown")
    num_threads: int | None = None  # CPU threads; default all available cores
    train_fraction: float = 1.0  # a stratified, seeded share of the training side (learning curves, few labels)
    init: str | None = None  # encoder file from `trafficlens pretrain` whose parameters start the model
    freeze_init: bool = False  # keep the parameters loaded from `init` fixed; train only what follows them

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        need(self.time_budget is None or self.time_budget > 0, f"time_budget must be > 0 seconds, got {self.time_budget}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        need(self.bn_batches >= 0, f"bn_batches must be >= 0, got {self.bn_batches}")
        need(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(self.balance in BALANCES, f"balance must be one of {', '.join(BALANCES)}, got {self.balance!r}")
        need(self.split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        need(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(self.min_class_sessions >= 0, f"min_class_sessions must be >= 0, got {self.min_class_sessions}")
        need(self.init is not None or not self.freeze_init, "freeze_init needs init (an encoder file)")
        need(0 < self.train_fraction <= 1, f"train_fraction must be in (0, 1], got {self.train_fraction}")
        need(self.min_class_captures >= 0, f"min_class_captures must be >= 0, got {self.min_class_captures}")
        self.include_classes = tuple(self.include_classes)
        self.exclude_classes = tuple(self.exclude_classes)
        self.selection  # checks the class options

    @property
    def selection(self):
        from trafficlens.training.selection import ClassSelection

        return ClassSelection.from_config(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def with_model_defaults(model: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments: `given` (what the user chose; None: not chosen) over the
    model's own training defaults (`register_model(training=...)`, e.g. the Ge models' batch of
    32), which sit over TrainConfig's. A name that is not a deep model has none."""
    from trafficlens.models.registry import model_defaults

    chosen = {k: v for k, v in given.items() if v is not None}
    return {**(model_defaults(model) if model else {}), **chosen}


def parse_settings(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings (repeated `--set`) to a dict; values are JSON where they parse, else strings."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out

"""The typed settings of `prep`: everything that decides which tensors a capture becomes.

A model bundle copies these settings, so `predict` rebuilds exactly the tensors a model was
trained on; any change here that alters tensors must be recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from trafficlens.errors import ConfigError

UNITS = ("session", "flow")
LAYERS = ("all", "network", "transport", "payload")
MASKS = ("none", "paper", "strict")
UNLABELED = ("drop", "keep")  # or "as:NAME"


@dataclass(frozen=True)
class PrepConfig:
    """Settings of `prep`; defaults are the leakage-aware ones.

    `min_bytes` counts application payload bytes (Ge 2021 drops sessions under 400 bytes).
    """

    unit: str = "session"
    layer: str = "all"
    mask: str = "strict"
    image_bytes: int = 784
    packets: int = 6
    packet_bytes: int = 96
    sequence_length: int = 32
    idle_timeout: float = 120.0
    min_packets: int = 1
    min_bytes: int = 0
    labels: str | None = None
    label_column: str | None = None
    unlabeled: str = "drop"
    max_per_class: int | None = None
    deduplicate: bool = True

    def __post_init__(self) -> None:
        _choice("unit", self.unit, UNITS)
        _choice("layer", self.layer, LAYERS)
        _choice("mask", self.mask, MASKS)
        for name in ("image_bytes", "packets", "packet_bytes", "sequence_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.idle_timeout <= 0:
            raise ConfigError(f"idle_timeout must be positive seconds, got {self.idle_timeout}")
        if self.min_packets < 0 or self.min_bytes < 0:
            raise ConfigError("min_packets and min_bytes must be >= 0")
        if self.unlabeled not in UNLABELED and not (self.unlabeled.startswith("as:") and len(self.unlabeled) > 3):
            raise ConfigError(f"unlabeled must be drop, keep or as:NAME, got {self.unlabeled!r}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError(f"max_per_class must be >= 1, got {self.max_per_class}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown prep settings: {', '.join(unknown)}")
        return cls(**data)

    def for_prediction(self) -> "PrepConfig":
        """The same tensors, without label handling or sampling (for new captures)."""
        return dataclasses.replace(self, labels=None, label_column=None, unlabeled="keep", max_per_class=None, deduplicate=False)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))

"""The typed settings of `prep`: everything that decides which tensors a capture becomes.

A model bundle copies these settings, so `predict` rebuilds exactly the tensors a model was
trained on; any change here that alters tensors must be recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from trafficlens.errors import ConfigError

UNITS = ("session", "flow")
LAYERS = ("all", "network", "transport", "payload")
MASKS = ("none", "paper", "strict")
# What `strict` zeroes, by version: 2 adds the TLS hellos' random, session id and key shares,
# hellos cut across segments, and QUIC connection IDs; 3 adds TLS session tickets (the
# ClientHello extension and NewSessionTicket), the pre_shared_key's identities, ticket ages
# and binders, and QUIC Initial tokens (docs/dataset-format.md). Tensors are only ever made with the current version;
# settings without the key (datasets and bundles made before it existed) are version 1.
MASK_VERSION = 3
UNLABELED = ("drop", "keep")  # or "as:NAME"
# Upper bounds of the tensor sizes: far above any paper's (1225-byte images, 6 x 96 packets) and
# low enough that a session's tensors stay under a few MB; a bundle's settings are checked too.
TENSOR_LIMITS = {"image_bytes": 1 << 16, "packets": 1 << 10, "packet_bytes": 1 << 16, "sequence_length": 1 << 16}


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
    mask_version: int = MASK_VERSION

    def __post_init__(self) -> None:
        _choice("unit", self.unit, UNITS)
        _choice("layer", self.layer, LAYERS)
        _choice("mask", self.mask, MASKS)
        if self.mask_version not in range(1, MASK_VERSION + 1):
            raise ConfigError(f"mask_version must be 1 to {MASK_VERSION}, got {self.mask_version!r} "
                              "(settings made by a newer trafficlens: upgrade it)")
        for name, most in TENSOR_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ConfigError(f"{name} must be an integer from 1 to {most}, got {value!r}")
        if not 0 < self.idle_timeout <= 10**7:
            raise ConfigError(f"idle_timeout must be positive seconds (at most 10^7), got {self.idle_timeout}")
        if self.min_packets < 0 or self.min_bytes < 0:
            raise ConfigError("min_packets and min_bytes must be >= 0")
        if self.unlabeled not in UNLABELED and not (self.unlabeled.startswith("as:") and len(self.unlabeled) > 3):
            raise ConfigError(f"unlabeled must be drop, keep or as:NAME, got {self.unlabeled!r}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError(f"max_per_class must be >= 1, got {self.max_per_class}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (what a dataset's manifest and a bundle keep)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepConfig":
        """Settings as stored in a manifest or bundle; without `mask_version` they are version 1."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown prep settings: {', '.join(unknown)}")
        return cls(**{"mask_version": 1, **data})

    def require_current_mask(self) -> None:
        """Raise unless these settings name the mask version `prep` makes (the current one)."""
        if self.mask_version != MASK_VERSION:
            raise ConfigError(f"mask_version {self.mask_version} tensors can no longer be made: this trafficlens makes "
                              f"mask_version {MASK_VERSION} (leave mask_version at its default)")

    @property
    def mask_outdated(self) -> bool:
        """Whether tensors made now would be masked more than these settings say (strict, older version)."""
        return self.mask == "strict" and self.mask_version < MASK_VERSION

    def for_prediction(self) -> "PrepConfig":
        """The same tensors, without label handling or sampling (for new captures).

        Tensors are made with the current mask only: settings with an older strict mask
        version get the current one, with a warning (the model saw values it will now see zeroed).
        """
        if self.mask_outdated:
            warnings.warn(f"model trained with strict mask version {self.mask_version}, inputs made with version "
                          f"{MASK_VERSION}, which zeroes more (docs/dataset-format.md); "
                          "retrain on a new prep for exact inputs", stacklevel=2)
        return dataclasses.replace(self, labels=None, label_column=None, unlabeled="keep", max_per_class=None,
                                   deduplicate=False, mask_version=MASK_VERSION)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

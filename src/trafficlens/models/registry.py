"""The model registry: every network registers by name and is built by `create_model`.

    from trafficlens.models import create_model, list_models
    model = create_model("chen-cnn", num_classes=10, input_shapes={"image": (1225,)})
    logits = model(image_batch)                      # uint8 (B, 1225) -> (B, 10)

A model is a builder function decorated with `@register_model`, taking one typed dataclass
config. `create_model` turns keyword arguments into that config (dropping `None` values, so
command-line defaults never override the model's own), fills the input sizes from the dataset's
tensor shapes, and rejects unknown keys with `ConfigError`.

Models take the dataset tensors raw (uint8 bytes, float32 sequences) in the order of
`model.inputs` and normalise inside `forward_features`, so a saved model needs no separate
preprocessing state.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from trafficlens.errors import ConfigError

# One module per model family, imported on first use of the registry (not at package import).
_FAMILIES = (
    "ge_capsnet",
    "ge_lstm",
    "ge_joint",
    "chen_cnn",
    "chen_gru",
    "chen_han",
    "chen_fusion",
    "wang_cnn",
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[[Any], Any]
    config_cls: type
    paper: str
    inputs: tuple[str, ...]
    description: str


_REGISTRY: dict[str, ModelInfo] = {}
_loaded = False


def register_model(name: str, *, config: type, paper: str, inputs: tuple[str, ...], description: str = ""):
    """Decorator for a builder `fn(cfg) -> nn.Module`; `config` is the model's dataclass."""

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, config, paper, tuple(inputs), description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return decorate


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for family in _FAMILIES:
            importlib.import_module(f"trafficlens.models.{family}")
        _loaded = True


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} (see `trafficlens models`)")
    return _REGISTRY[name]


def shape_kwargs(input_shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Config fields implied by dataset tensor shapes (per-session shapes, without N)."""
    out: dict[str, int] = {}
    if "image" in input_shapes:
        (k,) = tuple(input_shapes["image"])
        out["image_bytes"] = int(k)
        side = math.isqrt(int(k))
        if side * side == k:
            out["image_side"] = side
    if "packets" in input_shapes:
        m, b = tuple(input_shapes["packets"])
        out["packets"], out["packet_bytes"] = int(m), int(b)
    if "sequence" in input_shapes:
        out["sequence_length"] = int(tuple(input_shapes["sequence"])[0])
    if "stats" in input_shapes:
        out["stats_features"] = int(tuple(input_shapes["stats"])[0])
    return out


def make_config(config_cls: type, kwargs: dict[str, Any]):
    """Build a dataclass config from keyword arguments: unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)} for {config_cls.__name__}; allowed: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(config_cls)
    values = {}
    for key, value in kwargs.items():
        values[key] = _coerce(config_cls.__name__, key, hints[key], value)
    return config_cls(**values)


def _coerce(owner: str, key: str, hint: Any, value: Any) -> Any:
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)  # JSON gives lists
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{owner}.{key} must be {hint.__name__}, got {value!r}")
    return value


def create_model(name: str, num_classes: int | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None, **kwargs: Any):
    """Build a registered model. `input_shapes` maps tensor name -> per-session shape, as in
    `Dataset.tensor(name).shape[1:]`; only the sizes of tensors the model consumes are used."""
    info = model_info(name)
    fields = {f.name for f in dataclasses.fields(info.config_cls)}
    merged: dict[str, Any] = {}
    if input_shapes:
        missing = [t for t in info.inputs if t not in input_shapes]
        if missing:
            raise ConfigError(f"model {name!r} needs dataset tensor(s) {', '.join(missing)}")
        implied = shape_kwargs({t: input_shapes[t] for t in info.inputs})
        if "image_side" in fields and "image" in info.inputs and "image_side" not in implied:
            raise ConfigError(
                f"model {name!r} needs a square image (K = side * side bytes); the dataset has "
                f"K = {implied.get('image_bytes')}: prepare it with a square --image-bytes such as 784 or 1225"
            )
        merged.update({k: v for k, v in implied.items() if k in fields})
    if num_classes is not None:
        merged["num_classes"] = int(num_classes)
    merged.update({k: v for k, v in kwargs.items() if v is not None})
    cfg = make_config(info.config_cls, merged)
    model = info.builder(cfg)
    model.model_name = name
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

"""The model registry: every model (deep networks and classical baselines) registers by name.

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
    "tl_fusion",
    "baselines.catalog",
)


KINDS = ("deep", "baseline")


@dataclass(frozen=True)
class ModelInfo:
    """One registered model: a deep network (`kind="deep"`: `builder(cfg)` makes an nn.Module
    from its dataclass `config_cls`) or a classical baseline (`kind="baseline"`: `builder(random_state,
    **params)` makes an unfitted scikit-learn estimator for its `features`, searched over `grid`
    by `--tune`). `from_runs`: a model built on top of trained runs of these models, by
    `assemble(num_classes, input_shapes, branches)`."""

    name: str
    kind: str
    builder: Callable[..., Any]
    paper: str
    inputs: tuple[str, ...]
    description: str
    config_cls: type | None = None
    features: str | None = None
    grid: dict[str, tuple] | None = None
    from_runs: tuple[str, ...] = ()
    assemble: Callable[..., Any] | None = None
    training: tuple[tuple[str, Any], ...] = ()  # (TrainConfig field, value): what this model trains with by default
    # (config field, value) a saved config that lacks the field means: what the model was before the field existed
    saved_defaults: tuple[tuple[str, Any], ...] = ()


# Training settings a model may default to; an option given on the command line still wins.
TRAINING_DEFAULT_KEYS = ("batch_size", "lr", "schedule", "max_epochs", "patience")

_REGISTRY: dict[str, ModelInfo] = {}
_loaded = False


def _add(info: ModelInfo) -> None:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} registered twice")
    _REGISTRY[info.name] = info


def register_model(name: str, *, config: type, paper: str, inputs: tuple[str, ...], description: str = "",
                   from_runs: tuple[str, ...] = (), assemble: Callable[..., Any] | None = None,
                   training: dict[str, Any] | None = None, saved_defaults: dict[str, Any] | None = None):
    """Decorator for a deep model's builder `fn(cfg) -> nn.Module`; `config` is its dataclass.
    `training`: settings (TRAINING_DEFAULT_KEYS) this model trains with unless told otherwise,
    for a model whose papers' setting does not suit the shared defaults (batch, schedule).
    `saved_defaults`: for a config field added with a default that changes the model, the value
    that rebuilds bundles (and replays) saved before the field existed (`saved_config`)."""
    unknown = sorted(set(training or {}) - set(TRAINING_DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"model {name!r}: training defaults {unknown} are not among {TRAINING_DEFAULT_KEYS}")

    def decorate(fn):
        _add(ModelInfo(name, "deep", fn, paper, tuple(inputs),
                       description or (fn.__doc__ or "").strip().split("\n")[0], config_cls=config,
                       from_runs=tuple(from_runs), assemble=assemble, training=tuple(sorted((training or {}).items())),
                       saved_defaults=tuple(sorted((saved_defaults or {}).items()))))
        return fn

    return decorate


def model_defaults(name: str) -> dict[str, Any]:
    """The training settings `name` defaults to ({} for a baseline or an unknown name: the
    caller's own lookup reports an unknown name in its words)."""
    _ensure_loaded()
    info = _REGISTRY.get(name)
    return dict(info.training) if info is not None else {}


def saved_config(name: str, saved: dict[str, Any]) -> dict[str, Any]:
    """A model config as a bundle or run saved it, with the fields it predates set to what the
    model was then (`register_model(saved_defaults=...)`), not to today's defaults."""
    _ensure_loaded()
    info = _REGISTRY.get(name) if isinstance(name, str) else None
    return {**dict(info.saved_defaults), **saved} if info is not None else dict(saved)


def register_baseline(name: str, description: str, *, features: str = "stats", grid: dict[str, tuple] | None = None,
                      paper: str = "", inputs: tuple[str, ...] = ()):
    """Decorator for a baseline's builder `fn(random_state=..., **params) -> estimator`."""

    def decorate(fn):
        from trafficlens.models.baselines.features import TENSOR_OF

        _add(ModelInfo(name, "baseline", fn, paper, tuple(inputs) or (TENSOR_OF[features],), description,
                       features=features, grid=grid))
        return fn

    return decorate


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for family in _FAMILIES:
            importlib.import_module(f"trafficlens.models.{family}")
        _loaded = True


def list_models(kind: str | None = None) -> list[str]:
    """Registered names: every model, or those of one kind ("deep", "baseline")."""
    _ensure_loaded()
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def model_info(name: str, kind: str | None = None) -> ModelInfo:
    """The registry entry of `name` (of `kind`, when given)."""
    _ensure_loaded()
    info = _REGISTRY.get(name)
    if info is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models(kind))} (see `trafficlens models`)")
    if kind is not None and info.kind != kind:
        raise ConfigError(f"{name!r} is a {info.kind} model, not a {kind} one; {kind} models: {', '.join(list_models(kind))}")
    return info


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
    """Build a registered deep model. `input_shapes` maps tensor name -> per-session shape, as in
    `Dataset.tensor(name).shape[1:]`; only the sizes of tensors the model consumes are used."""
    info = model_info(name, "deep")
    fields = {f.name for f in dataclasses.fields(info.config_cls)}
    merged: dict[str, Any] = {}
    if input_shapes:
        missing = [t for t in info.inputs if t not in input_shapes]
        if missing:
            raise ConfigError(f"model {name!r} needs dataset tensor(s) {', '.join(missing)}")
        implied = shape_kwargs({t: input_shapes[t] for t in info.inputs})
        if getattr(info.config_cls, "crops_image", False) and "image_bytes" in implied:
            implied["image_side"] = _cropped_side(name, info.config_cls, kwargs.get("image_side"), implied["image_bytes"])
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


def _cropped_side(name: str, config_cls: type, requested: int | None, k: int) -> int:
    """The image side of a model that reads the first side * side bytes of the dataset's K (its
    config says `crops_image`, as Ge 2021's models do, whose paper input is 400 bytes): the one
    asked for, else the config's default, else the largest that K holds."""
    side = requested if requested is not None else next(f.default for f in dataclasses.fields(config_cls)
                                                        if f.name == "image_side")
    if int(side) * int(side) <= k:
        return int(side)
    if requested is not None:
        raise ConfigError(f"model {name!r}: image_side={requested} needs {int(requested) ** 2} image bytes; "
                          f"the dataset has {k}")
    return math.isqrt(k)


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

"""Model bundles: a run directory that rebuilds exactly the model that was trained (deep or baseline).

    runs/cnn/
      model.safetensors   the best weights (safetensors: plain tensors, loading runs no code)
      config.json         model name + config, labels, training settings, the dataset's prep
                          settings ("preprocessing"), the split, sha256 of the weights
      history.json        per epoch: losses, accuracy, macro-F1, learning rate, seconds
      metrics.json        on the test split: accuracy, macro-F1, per-class P/R/F1, confusion matrix
      split.npy           int8 per dataset row: 0 train, 1 validation, 2 test, -1 unused

    bundle = load_bundle("runs/cnn")
    bundle.model, bundle.labels, bundle.preprocessing
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trafficlens import __version__
from trafficlens.errors import BundleError, TrafficlensError
from trafficlens.files import sha256_file

FORMAT = "trafficlens-bundle"
FORMAT_VERSION = 2  # 2: model.kind (deep | baseline); version 1 bundles (deep only) still load
READABLE_VERSIONS = (1, 2)
KINDS = ("deep", "baseline")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "history.json"
METRICS = "metrics.json"
SPLIT = "split.npy"


@dataclass
class Bundle:
    path: Path
    model: Any  # torch.nn.Module, in eval mode
    name: str
    labels: list[str]
    preprocessing: dict[str, Any]
    config: dict[str, Any]  # the whole config.json
    kind: str = "deep"  # or "baseline": `model` is then an evaluation.baseline_bundle.BaselinePredictor

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.model.inputs)


class DeferredBundle(Bundle):
    """A deep bundle whose PyTorch model is rebuilt only when something asks for it: `predict`
    answers from the cached ONNX export (`inference.onnx_cache`) without importing PyTorch.
    The weights file is checked against config.json's SHA-256 here, as `load_bundle` does."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any]):
        self.path, self.config, self.kind = Path(path), config, "deep"
        self.name, self.labels = config["model"]["name"], list(config["labels"])
        self.preprocessing = config["preprocessing"]
        self._model = None

    @classmethod
    def of(cls, path: str | os.PathLike, config: dict[str, Any]) -> "DeferredBundle | None":
        """None when the config lacks what deferring needs or the weights do not match it (then
        `load_bundle` gives the precise error)."""
        model, weights = config.get("model"), config.get("weights")
        if not (isinstance(model, dict) and model.get("inputs") and model.get("name") and isinstance(weights, dict)
                and isinstance(config.get("labels"), list) and isinstance(config.get("preprocessing"), dict)):
            return None
        file = Path(path) / WEIGHTS
        if not weights.get("sha256") or not file.is_file() or sha256_file(file) != weights["sha256"]:
            return None
        return cls(path, config)

    @property
    def model(self):
        if self._model is None:
            self._model = load_bundle(self.path, "cpu").model
        return self._model

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.config["model"]["inputs"])

    def __repr__(self) -> str:  # the dataclass's would build the model to show it
        return f"DeferredBundle({os.fspath(self.path)!r}, model={self.name!r})"


def model_config_dict(model) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(model.cfg)


def save_bundle(out_dir: str | os.PathLike, model, *, labels: list[str], preprocessing: dict[str, Any],
                train: dict[str, Any] | None = None, split: dict[str, Any] | None = None,
                dataset: dict[str, Any] | None = None, history: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the bundle files (weights first, config with their hash last)."""
    from safetensors.torch import save_file

    from trafficlens.models import count_parameters

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "trafficlens_version": __version__,
        "created": utc_now(),
        "model": {"name": model.model_name, "kind": "deep", "config": model_config_dict(model),
                  "inputs": list(model.inputs), "parameters": count_parameters(model)},
        "labels": list(labels),
        "preprocessing": preprocessing,
        "train": train or {},
        "split": split or {},
        "dataset": dataset or {},
        "weights": {"file": WEIGHTS, "sha256": sha256_file(out / WEIGHTS)},
        **(extra or {}),
    }
    for name, content in ((HISTORY, history), (METRICS, metrics), (CONFIG, config)):
        if content is not None:
            write_json(out / name, content)
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, content: Any) -> None:
    """JSON through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such run directory")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {CONFIG})")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{cfg_path}: unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BundleError(f"{cfg_path}: not a trafficlens bundle config")
    if config.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{cfg_path}: bundle format version {config.get('format_version')}, this trafficlens reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    for key in ("model", "labels", "weights"):
        if key not in config:
            raise BundleError(f"{cfg_path}: missing {key!r}")
    if not isinstance(config["model"], dict) or bundle_kind(config) not in KINDS:
        raise BundleError(f"{cfg_path}: model.kind must be one of {', '.join(KINDS)}")
    return config


def read_split(path: str | os.PathLike, n_rows: int | None = None):
    """A run's `split.npy` (int8 per dataset row: 0 train, 1 validation, 2 test, -1 unused),
    checked: a plain integer array (never unpickled), of `n_rows` rows when given."""
    import numpy as np

    path = Path(path)
    target = path / SPLIT if path.is_dir() else path
    if not target.is_file():
        raise BundleError(f"{target.parent}: missing {SPLIT} (which sessions were train, validation and test)")
    try:
        assignment = np.load(target, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{target}: not a plain integer array ({str(exc).splitlines()[0][:120]})") from None
    if assignment.ndim != 1 or assignment.dtype.kind not in "iu" or (len(assignment) and
                                                                    (assignment.min() < -1 or assignment.max() > 2)):
        raise BundleError(f"{target}: not one side (-1..2) per dataset row")
    if n_rows is not None and len(assignment) != n_rows:
        raise BundleError(f"{target}: {len(assignment)} rows, the dataset has {n_rows}: not the dataset it was trained on")
    return assignment


# Bounds on a bundle's model settings, checked before anything is built: a crafted config.json
# must not make loading allocate or loop without end. Real models stay far inside them.
_MAX_INT, _MAX_LIST, _MAX_TEXT, _MAX_DEPTH = 1 << 24, 4096, 256, 4
MAX_PARAMETERS = 1 << 31  # elements; 8 GiB of float32


def check_settings(value: Any, where: str, depth: int = 0) -> None:
    """Every number, list and string of a model's settings within bounds (BundleError names the field)."""
    import math

    if depth > _MAX_DEPTH:
        raise BundleError(f"{where}: nested too deeply")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise BundleError(f"{where} = {value} is out of range (|value| <= {_MAX_INT})")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_INT:
            raise BundleError(f"{where} = {value} is out of range")
    elif isinstance(value, str):
        if len(value) > _MAX_TEXT:
            raise BundleError(f"{where}: a string of {len(value)} characters")
    elif isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST:
            raise BundleError(f"{where}: a list of {len(value)} items")
        for i, item in enumerate(value):
            check_settings(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        if len(value) > _MAX_LIST:
            raise BundleError(f"{where}: {len(value)} keys")
        for key, item in value.items():
            check_settings(item, f"{where}.{key}", depth + 1)
    else:
        raise BundleError(f"{where}: unexpected {type(value).__name__}")


def check_preprocessing(path: Path, config: dict[str, Any]) -> None:
    """The bundle's prep settings are valid `PrepConfig` settings, tensor sizes within bounds."""
    from trafficlens.prep.config import PrepConfig
    from trafficlens.errors import ConfigError

    prep = config.get("preprocessing") or {}
    check_settings(prep, f"{path}: preprocessing")
    try:
        PrepConfig.from_dict(prep)
    except (ConfigError, TypeError) as exc:
        raise BundleError(f"{path}: preprocessing settings unusable ({exc})") from None


def _check_shapes_before_building(path: Path, weights: Path, name: str, model_cfg: dict[str, Any]) -> None:
    """Build the model on PyTorch's meta device (no memory) and compare every weight's shape
    with the safetensors header, so a config that would allocate more than the file holds is
    refused before any real allocation."""
    import numpy as np
    import torch
    from safetensors import SafetensorError, safe_open

    from trafficlens.models import create_model

    try:
        with torch.device("meta"):
            skeleton = create_model(name, **model_cfg)
    except TrafficlensError as exc:
        raise BundleError(f"{path}: cannot rebuild model {name!r}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{path}: model settings do not build {name!r} ({str(exc).splitlines()[0][:160]})") from None
    own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if sum(int(np.prod(shape)) for shape in own.values()) > MAX_PARAMETERS:
        raise BundleError(f"{path}: the configured {name!r} would hold more than {MAX_PARAMETERS:,} weights")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: unreadable {WEIGHTS} ({exc})") from None
    missing, unexpected = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
    if missing or unexpected:
        raise BundleError(f"{path}: weights do not fit {name!r} as configured "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}); {CONFIG} does not match {WEIGHTS}")
    for key, shape in own.items():
        if stored[key] != shape:
            raise BundleError(f"{path}: weight {key} has shape {stored[key]}, the config builds {shape}; "
                              f"{CONFIG} does not match {WEIGHTS}")


def bundle_kind(config: dict[str, Any]) -> Any:
    """`deep` or `baseline` (version 1 bundles are deep and do not say so)."""
    return (config.get("model") or {}).get("kind", "deep")


def load_bundle(path: str | os.PathLike, device: str = "cpu") -> Bundle:
    """Rebuild the model of a run directory; every inconsistency is a one-line `BundleError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trafficlens.models import create_model
    from trafficlens.models.registry import saved_config

    path = Path(path)
    config = read_config(path)
    if bundle_kind(config) != "deep":
        raise BundleError(f"{path}: a {bundle_kind(config)} bundle, not a deep model's")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{path}: missing {WEIGHTS}")
    expected = config["weights"].get("sha256") if isinstance(config["weights"], dict) else None
    if not expected or sha256_file(weights) != expected:
        raise BundleError(f"{path}: {WEIGHTS} does not match the sha256 in {CONFIG} (tampered or mixed-up files)")
    model_section, labels = config["model"], config["labels"]
    name = model_section.get("name") if isinstance(model_section, dict) else None
    if not isinstance(labels, list) or not labels:
        raise BundleError(f"{path}: {CONFIG} has no label list")
    model_cfg = saved_config(name, dict(model_section.get("config") or {}))
    if model_cfg.get("num_classes") != len(labels):
        raise BundleError(f"{path}: {CONFIG} says num_classes={model_cfg.get('num_classes')} but lists {len(labels)} labels")
    check_settings(model_cfg, f"{path}: model.config")
    check_settings(labels, f"{path}: labels")
    check_preprocessing(path, config)
    _check_shapes_before_building(path, weights, name, model_cfg)
    try:
        model = create_model(name, **model_cfg)
    except TrafficlensError as exc:
        raise BundleError(f"{path}: cannot rebuild model {name!r}: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: unreadable {WEIGHTS} ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BundleError(f"{path}: weights do not fit {name!r} as configured "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}); {CONFIG} does not match {WEIGHTS}")
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise BundleError(f"{path}: weight {key} has shape {tuple(state[key].shape)}, the config builds "
                              f"{tuple(tensor.shape)}; {CONFIG} does not match {WEIGHTS}")
    model.load_state_dict(state)
    model.to(device).eval()
    return Bundle(path, model, name, [str(x) for x in labels], dict(config.get("preprocessing") or {}), config)


def check_output(out: str | os.PathLike, overwrite: bool) -> None:
    """Before any work: refuse to write over a bundle without `overwrite`, or where no directory
    can be made."""
    from trafficlens.errors import ConfigError
    from trafficlens.files import check_writable_dir

    if (Path(out) / CONFIG).exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a trained model (choose another -o or pass --overwrite)")
    check_writable_dir(out)


def save_baseline_bundle(out: str | os.PathLike, fitted, ds, split, *, train: dict[str, Any] | None = None,
                         overwrite: bool = False) -> Path:
    """Write a fitted baseline (`training.baselines.FittedBaseline`) trained on `split` of `ds`."""
    import numpy as np

    from trafficlens.models.baselines.export import RUNTIMES, export_baseline
    from trafficlens.models.baselines.features import TENSOR_OF, header_shape

    check_output(out, overwrite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in RUNTIMES.values():  # an --overwrite of another baseline kind
        (out / stale).unlink(missing_ok=True)
    model, metrics = fitted.model, fitted.metrics
    stored = export_baseline(model, int(metrics["n_features"]), out)
    tensor = TENSOR_OF[model.features]
    shape = tuple(ds.tensor(tensor).shape[1:])
    feature_config: dict[str, Any] = {}
    if model.features == "header":
        feature_config["header_packets"], feature_config["header_bytes"] = header_shape(ds.config.get("layer"), shape)
    names = np.array(fitted.classes, dtype=str)
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "trafficlens_version": __version__, "created": utc_now(),
        "model": {"name": metrics["model"], "kind": "baseline", "features": model.features,
                  "feature_config": feature_config, "inputs": [tensor], "input_shape": list(shape),
                  "n_features": int(metrics["n_features"]), "runtime": stored["runtime"],
                  "runtime_config": stored["runtime_config"], "params": metrics.get("params") or {},
                  "parameters": metrics.get("parameters"),
                  "class_index": np.searchsorted(names, model.classes_.astype(str)).tolist()},
        "labels": list(fitted.classes),
        "preprocessing": ds.config,
        "train": train or {},
        "split": {**(metrics.get("split_info") or {}), "file": SPLIT},
        "dataset": {"path": str(Path(ds.path).resolve()), "n_sessions": len(ds), "created": ds.manifest.get("created"),
                    "format_version": ds.manifest.get("format_version"), "input_shapes": {tensor: list(shape)}},
        "weights": {"file": stored["file"], "sha256": sha256_file(out / stored["file"])},
    }
    np.save(out / SPLIT, split.assignment(len(ds)), allow_pickle=False)
    write_json(out / METRICS, metrics)
    write_json(out / CONFIG, config)  # last: its presence marks a complete bundle
    return out


def load_baseline_bundle(path: str | os.PathLike, config: dict[str, Any] | None = None) -> Bundle:
    """A `Bundle` whose `model` is a `models.baselines.export.BaselinePredictor`; every
    inconsistency is a one-line `BundleError`."""
    from trafficlens.models.baselines.export import RUNTIMES, load_predictor

    path = Path(path)
    config = config or read_config(path)
    section, labels = config["model"], config["labels"]
    if not isinstance(section, dict) or not isinstance(labels, list) or not labels:
        raise BundleError(f"{path}: config.json has no model section or label list")
    check_settings(section, f"{path}: model")
    check_settings(labels, f"{path}: labels")
    check_preprocessing(path, config)
    runtime = section.get("runtime")
    weights = config.get("weights") if isinstance(config.get("weights"), dict) else {}
    if runtime not in RUNTIMES or weights.get("file") != RUNTIMES[runtime]:
        raise BundleError(f"{path}: a {runtime} baseline is stored in {RUNTIMES.get(runtime, '?')}, "
                          f"config.json names {weights.get('file')!r}")
    target = path / RUNTIMES[runtime]
    if not target.is_file():
        raise BundleError(f"{path}: missing {target.name}")
    if not weights.get("sha256") or sha256_file(target) != weights["sha256"]:
        raise BundleError(f"{path}: {target.name} does not match the sha256 in config.json (tampered or mixed-up files)")
    preprocessing = dict(config.get("preprocessing") or {})
    predictor = load_predictor(path, section, len(labels), preprocessing.get("layer"))
    return Bundle(path, predictor, section["name"], [str(x) for x in labels], preprocessing, config, kind="baseline")


def load_any_bundle(path: str | os.PathLike, device: str = "cpu", config: dict[str, Any] | None = None) -> Bundle:
    """A deep model's or a baseline's bundle, by its config's `model.kind`."""
    config = config or read_config(path)
    if bundle_kind(config) == "baseline":
        return load_baseline_bundle(path, config)
    return load_bundle(path, device)

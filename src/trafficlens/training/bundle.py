"""Model bundles: a run directory that rebuilds exactly the model that was trained.

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


def bundle_kind(config: dict[str, Any]) -> Any:
    """`deep` or `baseline` (version 1 bundles are deep and do not say so)."""
    return (config.get("model") or {}).get("kind", "deep")


def load_bundle(path: str | os.PathLike, device: str = "cpu") -> Bundle:
    """Rebuild the model of a run directory; every inconsistency is a one-line `BundleError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trafficlens.models import create_model

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
    model_cfg = dict(model_section.get("config") or {})
    if model_cfg.get("num_classes") != len(labels):
        raise BundleError(f"{path}: {CONFIG} says num_classes={model_cfg.get('num_classes')} but lists {len(labels)} labels")
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

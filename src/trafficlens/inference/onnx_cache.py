"""The ONNX Runtime side of inference, without PyTorch: the compiled model, and the user cache
of exports keyed by bundle.

A small `predict` spends most of its start-up importing PyTorch (about 1.7 s here) to rebuild
a model whose export is already in the cache. `load_cached` opens that export with ONNX
Runtime alone; the key (`onnx_cache_key`) covers the bundle's config.json, which holds the
weights' SHA-256 (the caller checks the weights file against it), the inputs and the versions
of the exporter and runtime that made it, so an entry is never used for another bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np

CACHE_FORMAT = 3  # 2: versions read from package metadata (no torch import to compute a key); 3: an embedding output


class OnnxModel:
    """A model compiled for ONNX Runtime's CPU engine: numpy inputs in, logits out (and, from
    exports that have it, each session's unit-length embedding: `outputs`).

    On this project's 2-core CPU it gives the same probabilities (to 1e-4, checked at build)
    at 1.5-1.9x PyTorch's inference rate (chen-cnn 1.73x, ge-cnn-lstm 1.89x, chen-model-b
    1.64x at batch 256, 2 threads; benchmarks/predict_throughput.py), mostly from fused
    convolution kernels and less per-operator overhead. ONNX Runtime releases the GIL while
    it computes, as PyTorch does.
    """

    def __init__(self, session, names: list[str], model_bytes: bytes = b""):
        self.session = session
        self.names = names
        self.model_bytes = model_bytes  # the ONNX model itself (`trafficlens export` writes it)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], dict(zip(self.names, arrays)))[0]

    @property
    def has_embedding(self) -> bool:
        return "embedding" in {o.name for o in self.session.get_outputs()}

    def outputs(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embedding) of one batch, in one run of the graph (`has_embedding` exports only)."""
        logits, embedding = self.session.run(["logits", "embedding"], dict(zip(self.names, arrays)))
        return logits, embedding


def open_model(model_bytes: bytes, names: list[str], threads: int) -> OnnxModel:
    """An ONNX model on ONNX Runtime's CPU engine with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return OnnxModel(ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]), list(names),
                     model_bytes)


def cache_dir() -> Path:
    """$TRAFFICLENS_CACHE, else $XDG_CACHE_HOME/trafficlens, else ~/.cache/trafficlens."""
    if os.environ.get("TRAFFICLENS_CACHE"):
        return Path(os.environ["TRAFFICLENS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trafficlens"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def onnx_cache_key(config: dict, names: list[str]) -> str:
    """A key for one bundle's export: its config.json (which holds the weights' SHA-256, checked
    at load), the inputs, and the versions of the exporter and runtime that made it. Raises
    ImportError without onnxruntime (there is nothing to cache then)."""
    runtime = _version("onnxruntime")
    if runtime is None:
        raise ImportError("onnxruntime is not installed")
    record = {"config": config, "inputs": names, "torch": _version("torch"), "onnxruntime": runtime,
              "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(key: str | None) -> Path | None:
    """Where the export of `key` is kept; None when there is no key or TRAFFICLENS_CACHE=off."""
    if not key or os.environ.get("TRAFFICLENS_CACHE", None) == "off":
        return None
    return cache_dir() / "onnx" / f"{key}.onnx"


def load_cached(key: str | None, names: list[str], threads: int) -> OnnxModel | None:
    """The cached export under `key` on ONNX Runtime, or None (no entry, unreadable, no
    onnxruntime). It was checked against the PyTorch model when it was written."""
    path = cache_path(key)
    if path is None or not path.is_file():
        return None
    try:
        model = open_model(path.read_bytes(), names, threads)
    except Exception:  # noqa: BLE001  unreadable or not a model: the caller builds it again
        return None
    return model if [i.name for i in model.session.get_inputs()] == list(names) else None


def cuda_may_be_present() -> bool:
    """Whether PyTorch could find a CUDA device, answered without importing it: False for a CPU
    build, with CUDA_VISIBLE_DEVICES empty, or without NVIDIA device files (Linux)."""
    torch_version = _version("torch") or ""
    if torch_version.endswith("+cpu") or os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if os.name == "posix" and Path("/dev").is_dir():
        return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
    return True

"""The compiled (numba) prep backend: the same datasets as the Python path, many times faster.

The Python path (capture.reader/decode, flows.assembler, features.views/tensors) stays the
reference: this backend re-implements it over blocks of packets in numba and must give
byte-identical tensors (tests/test_fast_backend.py runs both). `backend="python"` (or
`--backend python`, or TRAFFICLENS_BACKEND=python) selects the reference.
"""

from __future__ import annotations

import importlib.util
import os

from trafficlens.errors import ConfigError

BACKENDS = ("python", "numba")


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def resolve_backend(backend: str | None = None) -> str:
    """The backend to use: the one asked for, else $TRAFFICLENS_BACKEND, else numba when installed."""
    backend = backend or os.environ.get("TRAFFICLENS_BACKEND") or ("numba" if numba_available() else "python")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "numba" and not numba_available():
        raise ConfigError("backend numba needs the numba package (pip install numba), or use --backend python")
    return backend

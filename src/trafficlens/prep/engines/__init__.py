"""prep's session engines: packets in, sessions with tensors out (see `base.py`).

`make_engine(backend, ...)` gives the compiled engine (numba kernels over blocks of packets, the
default when numba is installed and the input is not small: `resolve_backend`) or the Python reference (`backend="python"`, `--backend
python` or TRAFFICLENS_BACKEND=python); both give byte-identical tensors
(tests/test_fast_backend.py runs both).
"""

from __future__ import annotations

import importlib.util
import os

from trafficlens.errors import ConfigError
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.engines.base import EngineSink, SessionEngine

BACKENDS = ("python", "numba")


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


# Below this much input (bytes as stored), unless a backend is asked for, the Python engine runs:
# loading the compiled kernels costs more than they save (benchmarks/startup.py: prep of a 30-session
# capture 2.8 s against 6.0 s; all of iot-sentinel, 63 MB of small files, 11.8 s against 13.4 s).
SMALL_INPUT_BYTES = 16 << 20


def resolve_backend(backend: str | None = None, input_bytes: int | None = None) -> str:
    """The backend to use: the one asked for, else $TRAFFICLENS_BACKEND, else numba when installed,
    except for an input known to be under SMALL_INPUT_BYTES (`input_bytes`), which the Python
    engine reads sooner than the kernels load. Both give the same datasets, byte for byte."""
    small = input_bytes is not None and input_bytes < SMALL_INPUT_BYTES
    backend = backend or os.environ.get("TRAFFICLENS_BACKEND") or ("numba" if numba_available() and not small else "python")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "numba" and not numba_available():
        raise ConfigError("backend numba needs the numba package (pip install numba), or use --backend python")
    return backend


def make_engine(backend: str | None, config: PrepConfig, source: str, sink: EngineSink, **options) -> SessionEngine:
    """The engine `backend` names ("python", "numba"; None: $TRAFFICLENS_BACKEND, else numba when
    installed); `options` are `SessionEngine`'s keyword arguments."""
    if resolve_backend(backend) == "numba":
        from trafficlens.prep.engines.compiled import CompiledEngine

        return CompiledEngine(config, source, sink, **options)
    from trafficlens.prep.engines.reference import ReferenceEngine

    return ReferenceEngine(config, source, sink, **options)

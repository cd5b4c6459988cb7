"""Feature matrices for the classical baselines, read from a dataset's memory-mapped tensors.

    X = baseline_features(ds, rows, "stats")      # (len(rows), F) float32

Kinds:
- `stats`: the flow statistics (`ds.stats_names`), as written by prep.
- `header`: the first `header_bytes` bytes of each of the first `header_packets` packets of the
  `packets` tensor, one byte value (0-255) per column. By default the fixed headers of the
  layer view: Ethernet type + IPv4 + TCP for `all` (14 + 20 + 20 = 54 bytes), IPv4 + TCP for
  `network` (40), TCP for `transport` (20). The tensor is already masked by prep
  (`ds.config["mask"]`: under `strict` ports, IP id, checksums, sequence numbers... are
  zero), so these features see exactly what the deep models see. Missing packets are zeros.
- `sequence`: the signed lengths of the first L packets (`sequence[:, :, 0]`, + from the
  initiator), zero-padded: the packet-length sequence.
Non-finite values become 0.
"""

from __future__ import annotations

import numpy as np

from trafficlens.errors import ConfigError

FEATURE_KINDS = ("stats", "header", "sequence")
TENSOR_OF = {"stats": "stats", "header": "packets", "sequence": "sequence"}  # the dataset tensor each kind reads
HEADER_BYTES = {"all": 54, "network": 40, "transport": 20}  # fixed IPv4 + TCP headers in each view
_CHUNK = 65536  # rows copied out of a memory map at a time


def header_shape(layer: str | None, shape: tuple[int, int], header_packets: int | None = None,
                 header_bytes: int | None = None) -> tuple[int, int]:
    """(packets, bytes per packet) of the header features for a `packets` tensor of row shape `shape`."""
    m, b = shape
    if header_bytes is None:
        if layer not in HEADER_BYTES:
            raise ConfigError(f"header features need a layer view with headers (all, network, transport); "
                              f"this dataset was prepared with --layer {layer}")
        header_bytes = HEADER_BYTES[layer]
    p = m if header_packets is None else header_packets
    if not 1 <= p <= m or not 1 <= header_bytes <= b:
        raise ConfigError(f"header features: header_packets must be in 1..{m} and header_bytes in 1..{b} "
                          f"for this dataset, got {header_packets} and {header_bytes}")
    return p, header_bytes


def feature_matrix(kind: str, tensor: np.ndarray, layer: str | None = None, *, header_packets: int | None = None,
                   header_bytes: int | None = None) -> np.ndarray:
    """Feature matrix (n, F) float32 of `kind` from the rows of its tensor (`TENSOR_OF[kind]`):
    what `baseline_features` does per chunk of a dataset, and what a baseline bundle does on
    the tensors `predict` builds from a capture."""
    tensor = np.asarray(tensor)
    if kind == "stats":
        X = tensor
    elif kind == "sequence":
        X = tensor[:, :, 0]  # (n, L) signed lengths
    elif kind == "header":
        p, b = header_shape(layer, tensor.shape[1:], header_packets, header_bytes)
        X = tensor[:, :p, :b].reshape(len(tensor), p * b)  # (n, p * bytes)
    else:
        raise ConfigError(f"unknown feature set {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    return X


def baseline_features(ds, rows: np.ndarray, kind: str, *, header_packets: int | None = None,
                      header_bytes: int | None = None) -> np.ndarray:
    """Feature matrix (len(rows), F) float32 of `kind` for the given session rows of `ds`."""
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"unknown feature set {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    array = ds.tensor(TENSOR_OF[kind])
    layer = ds.config.get("layer")
    take = lambda part: feature_matrix(kind, part, layer, header_packets=header_packets,  # noqa: E731
                                       header_bytes=header_bytes)
    parts = [take(array[rows[i:i + _CHUNK]]) for i in range(0, len(rows), _CHUNK)]
    return np.concatenate(parts) if parts else take(array[:0])

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
HEADER_BYTES = {"all": 54, "network": 40, "transport": 20}  # fixed IPv4 + TCP headers in each view
_CHUNK = 65536  # rows copied out of a memory map at a time


def _gather(array: np.ndarray, rows: np.ndarray, take) -> np.ndarray:
    """`take(array[chunk])` over chunks of rows, concatenated as float32."""
    parts = [take(array[rows[i:i + _CHUNK]]) for i in range(0, len(rows), _CHUNK)]
    if not parts:
        return take(array[:0]).astype(np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def baseline_features(ds, rows: np.ndarray, kind: str, *, header_packets: int | None = None,
                      header_bytes: int | None = None) -> np.ndarray:
    """Feature matrix (len(rows), F) float32 of `kind` for the given session rows of `ds`."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if kind == "stats":
        X = _gather(ds.tensor("stats"), rows, lambda a: a)
    elif kind == "sequence":
        X = _gather(ds.tensor("sequence"), rows, lambda a: a[:, :, 0])  # (n, L) signed lengths
    elif kind == "header":
        packets = ds.tensor("packets")  # (N, M, B)
        m, b = packets.shape[1:]
        layer = ds.config.get("layer")
        if header_bytes is None:
            if layer not in HEADER_BYTES:
                raise ConfigError(f"header features need a layer view with headers (all, network, transport); "
                                  f"this dataset was prepared with --layer {layer}")
            header_bytes = HEADER_BYTES[layer]
        p = m if header_packets is None else header_packets
        if not 1 <= p <= m or not 1 <= header_bytes <= b:
            raise ConfigError(f"header features: header_packets must be in 1..{m} and header_bytes in 1..{b} "
                              f"for this dataset, got {header_packets} and {header_bytes}")
        X = _gather(packets, rows, lambda a: a[:, :p, :header_bytes].reshape(len(a), -1))  # (n, p * bytes)
    else:
        raise ConfigError(f"unknown feature set {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
    if not np.isfinite(X).all():
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    return X

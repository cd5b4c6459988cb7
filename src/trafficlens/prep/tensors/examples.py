"""Finished sessions -> examples: filters, label, tensors and statistics, in batches."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trafficlens.prep.config import PrepConfig
from trafficlens.prep.sessions.session import Session
from trafficlens.prep.tensors.filters import reject_reason, unlabeled_fill
from trafficlens.prep.tensors.statistics import flow_stats

_BATCH = 512


@dataclass
class Example:
    meta: dict[str, Any]
    image: np.ndarray
    packets: np.ndarray
    sequence: np.ndarray
    stats: np.ndarray | None = None


class ExampleBatch:
    """Many examples at once (what the compiled backend emits).

    The model inputs (`image`, `packets`) and the labels are ready; the metadata columns,
    sequences and statistics are built by `rows(idx)` only for the rows a consumer keeps (most
    IoT sessions are duplicates the writer drops). `build(idx, tensors)` returns (columns with the
    keys of `session_meta` plus "label", sequences, stats; None, None when `tensors` is false); `extra` holds constant columns (presets).
    """

    def __init__(self, image: np.ndarray, packets: np.ndarray, labels: list, build: Callable):
        self.image = image
        self.packets = packets
        self.labels = labels
        self.build = build
        self.extra: dict[str, Any] = {}
        self.both: np.ndarray | None = None  # (n, image + packets bytes) when the two are views of it

    def __len__(self) -> int:
        return len(self.image)

    def rows(self, idx: np.ndarray, tensors: bool = True) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
        """(columns, sequences, stats) of rows `idx`; `tensors=False`: the columns only (None, None),
        for consumers whose model reads neither sequences nor statistics."""
        columns, sequence, stats = self.build(np.asarray(idx, dtype=np.int64), tensors)
        for key, value in self.extra.items():
            columns[key] = [value] * len(idx)
        return columns, sequence, stats

    def meta(self, i: int) -> dict[str, Any]:
        return meta_at(self.rows([i])[0], 0)

    def examples(self):
        columns, sequence, stats = self.rows(np.arange(len(self)))
        for i in range(len(self)):
            yield Example(meta_at(columns, i), self.image[i], self.packets[i], sequence[i], stats[i])

    @classmethod
    def of(cls, examples: list[Example]) -> "ExampleBatch":
        """The batch of ready examples (the reference engine's output)."""
        if not examples:
            raise ValueError("an ExampleBatch needs at least one example")
        return cls(np.stack([e.image for e in examples]), np.stack([e.packets for e in examples]),
                   [e.meta.get("label") for e in examples], _ExampleRows(examples))


class _ExampleRows:
    """`ExampleBatch.build` over ready examples (a class, not a closure: batches cross processes)."""

    def __init__(self, examples: list[Example]):
        self.metas = [e.meta for e in examples]
        self.sequences = np.stack([e.sequence for e in examples])
        self.stats = np.stack([e.stats for e in examples])

    def __call__(self, idx: np.ndarray, tensors: bool = True):
        columns = {k: [self.metas[i].get(k) for i in idx.tolist()] for k in self.metas[0]}
        return (columns, self.sequences[idx], self.stats[idx]) if tensors else (columns, None, None)


def meta_at(columns: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: (v[i].item() if isinstance(v, np.ndarray) else v[i]) for k, v in columns.items()}


def metas_of(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """`meta_at` for every row, converting each column once (Python ints and floats, as `.item()`)."""
    keys = list(columns)
    values = [v.tolist() if isinstance(v, np.ndarray) else list(v) for v in columns.values()]
    return [dict(zip(keys, row)) for row in zip(*values)]


def address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def session_meta(s: Session, capture: str) -> dict[str, Any]:
    fwd = s.dirs.count(0)
    bytes_fwd = sum(size for size, d in zip(s.sizes, s.dirs) if d == 0)
    return {
        "capture": capture,
        "src_ip": address(s.client[0]),
        "dst_ip": address(s.server[0]),
        "src_port": s.client[1],
        "dst_port": s.server[1],
        "protocol": "TCP" if s.proto == 6 else "UDP",
        "ts_start": min(s.times) if s.times else s.ts_start,
        "ts_end": max(s.times) if s.times else s.ts_last,
        "packets": len(s.times),
        "bytes": int(sum(s.sizes)),
        "payload_bytes": s.payload_bytes,
        "packets_fwd": fwd,
        "packets_bwd": len(s.dirs) - fwd,
        "bytes_fwd": bytes_fwd,
        "bytes_bwd": int(sum(s.sizes)) - bytes_fwd,
    }


class Featurizer:
    """Turn finished sessions of one capture into `Example`s.

    `label_of(meta)` returns a label or None. Sessions that a filter rejects are counted in
    `dropped` under the filter's name and passed to `on_reject(meta, reason)` when given.
    """

    def __init__(
        self,
        config: PrepConfig,
        capture: str,
        label_of: Callable[[dict[str, Any]], str | None] | None,
        emit: Callable[[Example], None],
        on_reject: Callable[[dict[str, Any], str], None] | None = None,
    ):
        self.config = config
        self.capture = capture
        self.label_of = label_of
        self.emit = emit
        self.on_reject = on_reject
        self.dropped: dict[str, int] = {}
        self._pending: list[tuple[dict[str, Any], bytes, bytes, Session]] = []

    def _reject(self, meta: dict[str, Any], reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(meta, reason)

    def __call__(self, s: Session) -> None:
        meta = session_meta(s, self.capture)
        reason = reject_reason(s.payload_bytes, len(s.times), self.config)
        if reason is not None:
            return self._reject(meta, reason)
        label = self.label_of(meta) if self.label_of is not None else None
        if label is None and self.label_of is not None:
            drop, fill = unlabeled_fill(self.config)
            if drop:
                return self._reject(meta, "unlabeled")
            label = fill
        meta["label"] = label
        self._pending.append((meta, *self._byte_rows(s), s))
        if len(self._pending) >= _BATCH:
            self.flush()

    def _byte_rows(self, s: Session) -> tuple[bytes, bytes]:
        """The image row (K bytes) and packets rows (M x N bytes) as zero-padded bytes."""
        cfg = self.config
        views = [view for _, _, view in s.ordered_views()]
        image = b"".join(views)[: cfg.image_bytes].ljust(cfg.image_bytes, b"\0")
        rows = [view[: cfg.packet_bytes].ljust(cfg.packet_bytes, b"\0") for view in views[: cfg.packets]]
        packets = b"".join(rows).ljust(cfg.packets * cfg.packet_bytes, b"\0")
        return image, packets

    def flush(self) -> None:
        """Build the batch's tensors and statistics at once and emit its examples.

        One NumPy pass per batch instead of a dozen calls per session: with the short sessions
        of IoT captures the per-call overhead would cost as much as reading the packets.
        """
        if not self._pending:
            return
        cfg = self.config
        n = len(self._pending)
        sessions = [item[3] for item in self._pending]
        images = np.frombuffer(b"".join(item[1] for item in self._pending), dtype=np.uint8).reshape(n, cfg.image_bytes)
        packets = np.frombuffer(b"".join(item[2] for item in self._pending), dtype=np.uint8).reshape(
            n, cfg.packets, cfg.packet_bytes
        )
        lengths = np.array([len(s.times) for s in sessions])
        times = np.concatenate([np.frombuffer(s.times, dtype=np.float64) for s in sessions])
        order = time_order(times, lengths)
        times = times[order]
        sizes = np.concatenate([np.asarray(s.sizes) for s in sessions])[order]
        dirs = np.concatenate([np.frombuffer(s.dirs, dtype=np.uint8) for s in sessions])[order]
        flags = np.concatenate([np.frombuffer(s.flags, dtype=np.uint8) for s in sessions])[order]
        stats = flow_stats(times, sizes, dirs, flags, lengths)
        seqs = sequences(times, sizes, dirs, lengths, cfg.sequence_length)
        for i, item in enumerate(self._pending):
            self.emit(Example(item[0], images[i], packets[i], seqs[i], stats[i]))
        self._pending.clear()


def sequences(times: np.ndarray, sizes: np.ndarray, dirs: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """(n, L, 2): the first L packets' signed sizes (+ from the initiator) and inter-arrival times."""
    n = len(lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gaps = np.zeros(times.size, dtype=np.float64)
    gaps[1:] = np.diff(times)
    gaps[starts] = 0.0
    signed = np.where(dirs == 0, sizes, -sizes)
    out = np.zeros((n, length, 2), dtype=np.float32)
    steps = np.arange(length)
    valid = steps[None, :] < lengths[:, None]  # (n, L)
    index = (starts[:, None] + steps[None, :])[valid]
    out[..., 0][valid] = signed[index]
    out[..., 1][valid] = gaps[index]
    return out


def time_order(times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices that sort packets by time within each session (captures are not always monotonic)."""
    seg = np.repeat(np.arange(len(lengths)), lengths)
    if np.all((np.diff(times) >= 0) | (seg[1:] != seg[:-1])):
        return np.arange(times.size)
    return np.lexsort((times, seg))

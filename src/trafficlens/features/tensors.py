"""Finished sessions -> examples: filters, label, tensors and statistics, in batches."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trafficlens.datasets.config import PrepConfig
from trafficlens.features.stats import flow_stats
from trafficlens.flows.session import Session

_BATCH = 512


@dataclass
class Example:
    meta: dict[str, Any]
    image: np.ndarray
    packets: np.ndarray
    sequence: np.ndarray
    stats: np.ndarray | None = None


def address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def session_meta(s: Session, capture: str) -> dict[str, Any]:
    fwd = s.dirs.count(0)
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
        self._pending: list[tuple[Example, Session]] = []

    def _reject(self, meta: dict[str, Any], reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(meta, reason)

    def __call__(self, s: Session) -> None:
        cfg = self.config
        meta = session_meta(s, self.capture)
        if s.payload_bytes == 0:
            return self._reject(meta, "empty_sessions")
        if len(s.times) < cfg.min_packets:
            return self._reject(meta, "min_packets")
        if s.payload_bytes < cfg.min_bytes:
            return self._reject(meta, "min_bytes")
        label = self.label_of(meta) if self.label_of is not None else None
        if label is None and self.label_of is not None:
            if cfg.unlabeled == "drop":
                return self._reject(meta, "unlabeled")
            if cfg.unlabeled.startswith("as:"):
                label = cfg.unlabeled[3:]
        meta["label"] = label
        image, packets = self._byte_tensors(s)
        self._pending.append((Example(meta, image, packets, self._sequence(s)), s))
        if len(self._pending) >= _BATCH:
            self.flush()

    def _byte_tensors(self, s: Session) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        views = [view for _, _, view in s.ordered_views()]
        image = np.zeros(cfg.image_bytes, dtype=np.uint8)
        joined = b"".join(views)[: cfg.image_bytes]
        image[: len(joined)] = np.frombuffer(joined, dtype=np.uint8)
        packets = np.zeros((cfg.packets, cfg.packet_bytes), dtype=np.uint8)
        for row, view in enumerate(views[: cfg.packets]):
            chunk = view[: cfg.packet_bytes]
            packets[row, : len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        return image, packets

    def _sequence(self, s: Session) -> np.ndarray:
        length = self.config.sequence_length
        times = np.frombuffer(s.times, dtype=np.float64)[:length]
        sizes = np.frombuffer(s.sizes, dtype=np.int64 if s.sizes.itemsize == 8 else np.int32)[:length]
        dirs = np.frombuffer(s.dirs, dtype=np.uint8)[:length]
        seq = np.zeros((length, 2), dtype=np.float32)
        n = len(times)
        seq[:n, 0] = np.where(dirs == 0, sizes, -sizes)
        if n > 1:
            seq[1:n, 1] = np.maximum(np.diff(times), 0.0)
        return seq

    def flush(self) -> None:
        """Compute statistics for the pending batch and emit its examples."""
        if not self._pending:
            return
        sessions = [s for _, s in self._pending]
        lengths = np.array([len(s.times) for s in sessions])
        times = np.concatenate([np.frombuffer(s.times, dtype=np.float64) for s in sessions])
        order = _time_order(times, lengths)
        stats = flow_stats(
            times[order],
            np.concatenate([np.asarray(s.sizes) for s in sessions])[order],
            np.concatenate([np.frombuffer(s.dirs, dtype=np.uint8) for s in sessions])[order],
            np.concatenate([np.frombuffer(s.flags, dtype=np.uint8) for s in sessions])[order],
            lengths,
        )
        for (example, _), row in zip(self._pending, stats):
            example.stats = row
            self.emit(example)
        self._pending.clear()


def _time_order(times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices that sort packets by time within each session (captures are not always monotonic)."""
    seg = np.repeat(np.arange(len(lengths)), lengths)
    if np.all((np.diff(times) >= 0) | (seg[1:] != seg[:-1])):
        return np.arange(times.size)
    return np.lexsort((times, seg))

"""Classical flow statistics (ISCX / CICFlowMeter time-related features), computed in batches.

The papers' baselines (C4.5, random forest, kNN, ...) use these. Computing them per session
with NumPy costs ~60 calls of overhead per session, so sessions are concatenated and reduced
by segment ids in one pass for a whole batch.

Definitions: sizes are IP-level bytes of kept packets; forward = from the initiator; IAT =
time between consecutive packets (all, forward only, backward only); a gap longer than
`ACTIVITY_TIMEOUT` seconds is an idle period, and the spans between idle periods are active
periods; all min/mean/max/std are 0 where a session has no such value; std is the
population standard deviation.
"""

from __future__ import annotations

import numpy as np

ACTIVITY_TIMEOUT = 5.0
_FLAGS = (("fin", 0x01), ("syn", 0x02), ("rst", 0x04), ("psh", 0x08), ("ack", 0x10), ("urg", 0x20))
_AGG = ("min", "mean", "max", "std")

STATS_NAMES: tuple[str, ...] = (
    ("duration", "fwd_packets", "bwd_packets", "fwd_bytes", "bwd_bytes")
    + tuple(f"{prefix}pkt_len_{agg}" for prefix in ("", "fwd_", "bwd_") for agg in _AGG)
    + tuple(f"{prefix}iat_{agg}" for prefix in ("", "fwd_", "bwd_") for agg in _AGG)
    + tuple(f"{kind}_{agg}" for kind in ("active", "idle") for agg in _AGG)
    + ("bytes_per_s", "packets_per_s")
    + tuple(f"{name}_count" for name, _ in _FLAGS)
)


def _aggregate(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) min, mean, max, std of `values` grouped by `seg`; zeros for empty groups."""
    out = np.zeros((n, 4), dtype=np.float64)
    if values.size == 0:
        return out
    count = np.bincount(seg, minlength=n)
    total = np.bincount(seg, weights=values, minlength=n)
    total_sq = np.bincount(seg, weights=values * values, minlength=n)
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, seg, values)
    np.maximum.at(hi, seg, values)
    has = count > 0
    mean = np.divide(total, count, out=np.zeros(n), where=has)
    var = np.divide(total_sq, count, out=np.zeros(n), where=has) - mean * mean
    out[has, 0] = lo[has]
    out[:, 1] = mean
    out[has, 2] = hi[has]
    out[:, 3] = np.sqrt(np.maximum(var, 0.0))
    return out


def _gaps(times: np.ndarray, seg: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive time differences within each segment (optionally of masked packets only)."""
    if mask is not None:
        times, seg = times[mask], seg[mask]
    same = seg[1:] == seg[:-1]
    return (times[1:] - times[:-1])[same], seg[1:][same]


def flow_stats(times: np.ndarray, sizes: np.ndarray, dirs: np.ndarray, flags: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Statistics for a batch of sessions, as float32 (n_sessions, len(STATS_NAMES)).

    The packet arrays are the sessions' packets concatenated in session order, each session's
    packets in time order; `lengths` gives each session's packet count (all >= 1).
    """
    n = len(lengths)
    seg = np.repeat(np.arange(n), lengths)
    times = times.astype(np.float64)
    sizes = sizes.astype(np.float64)
    fwd = dirs == 0
    bwd = ~fwd
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ends = starts + lengths - 1
    duration = times[ends] - times[starts]

    columns = [
        duration,
        np.bincount(seg[fwd], minlength=n),
        np.bincount(seg[bwd], minlength=n),
        np.bincount(seg[fwd], weights=sizes[fwd], minlength=n),
        np.bincount(seg[bwd], weights=sizes[bwd], minlength=n),
    ]
    blocks = [np.stack(columns, axis=1)]
    blocks.append(_aggregate(sizes, seg, n))
    blocks.append(_aggregate(sizes[fwd], seg[fwd], n))
    blocks.append(_aggregate(sizes[bwd], seg[bwd], n))
    iat, iat_seg = _gaps(times, seg)
    blocks.append(_aggregate(iat, iat_seg, n))
    blocks.append(_aggregate(*_gaps(times, seg, fwd), n))
    blocks.append(_aggregate(*_gaps(times, seg, bwd), n))

    # Active spans: runs of packets separated by idle gaps; their duration is last - first.
    idle = iat > ACTIVITY_TIMEOUT
    breaks = np.zeros(times.size, dtype=bool)
    breaks[starts] = True
    gap_positions = np.flatnonzero(seg[1:] == seg[:-1]) + 1  # index of the later packet of each gap
    breaks[gap_positions[idle]] = True
    run_starts = np.flatnonzero(breaks)
    run_ends = np.concatenate((run_starts[1:], [times.size])) - 1
    active = times[run_ends] - times[run_starts]
    blocks.append(_aggregate(active, seg[run_starts], n))
    blocks.append(_aggregate(iat[idle], iat_seg[idle], n))

    total_bytes = columns[3] + columns[4]
    safe = np.where(duration > 0, duration, np.inf)
    blocks.append(np.stack([total_bytes / safe, lengths / safe], axis=1))
    flag_counts = [np.bincount(seg, weights=(flags & bit) > 0, minlength=n) for _, bit in _FLAGS]
    blocks.append(np.stack(flag_counts, axis=1))
    return np.concatenate(blocks, axis=1).astype(np.float32)

"""features.stats.flow_stats as one numba pass: the same float operations in the same order.

NumPy's bincount adds weights in index order and the min/max are exact, so a loop that adds
each session's values in packet order gives bit-identical sums, means and deviations; the
equivalence tests compare the stats tensors byte for byte.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from trafficlens.prep.tensors.statistics import ACTIVITY_TIMEOUT, STATS_NAMES

_N = len(STATS_NAMES)
_FLAG_BITS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20)  # features.stats._FLAGS, in order


@njit(cache=True)
def _agg(acc, col, out, row):
    """acc[col: count, sum, sum of squares, min, max] -> out[row, min, mean, max, std] (the
    layout of stats._aggregate, zeros for an empty group)."""
    count = acc[col]
    if count > 0:
        mean = acc[col + 1] / count
        var = acc[col + 2] / count - mean * mean
        out[row, 0] = acc[col + 3]
        out[row, 1] = mean
        out[row, 2] = acc[col + 4]
        out[row, 3] = np.sqrt(max(var, 0.0))
    else:
        out[row, 0] = 0.0
        out[row, 1] = 0.0
        out[row, 2] = 0.0
        out[row, 3] = 0.0


@njit(cache=True)
def _add(acc, col, v):
    if acc[col] == 0:
        acc[col + 3] = v
        acc[col + 4] = v
    else:
        if v < acc[col + 3]:
            acc[col + 3] = v
        if v > acc[col + 4]:
            acc[col + 4] = v
    acc[col] += 1
    acc[col + 1] += v
    acc[col + 2] += v * v


@njit(cache=True)
def flow_stats_kernel(times, sizes, dirs, flags, lengths, timeout, out64):
    """out64 (n, len(STATS_NAMES)) float64, filled as stats.flow_stats computes it."""
    n = lengths.size
    acc = np.zeros(9 * 5, np.float64)  # sizes all/fwd/bwd, iat all/fwd/bwd, active, idle (+1 spare)
    block = np.zeros((1, 4), np.float64)
    p = 0
    for s in range(n):
        m = lengths[s]
        acc[:] = 0.0
        fwd_n = 0
        bwd_n = 0
        fwd_b = 0.0
        bwd_b = 0.0
        flag_counts = np.zeros(6, np.float64)
        last_fwd = -1
        last_bwd = -1
        run_start = p
        for i in range(p, p + m):
            size = np.float64(sizes[i])
            if dirs[i] == 0:
                fwd_n += 1
                fwd_b += size
                _add(acc, 5, size)
                if last_fwd >= 0:
                    _add(acc, 20, times[i] - times[last_fwd])
                last_fwd = i
            else:
                bwd_n += 1
                bwd_b += size
                _add(acc, 10, size)
                if last_bwd >= 0:
                    _add(acc, 25, times[i] - times[last_bwd])
                last_bwd = i
            _add(acc, 0, size)
            if i > p:
                gap = times[i] - times[i - 1]
                _add(acc, 15, gap)
                if gap > timeout:  # an idle period ends the active run before it
                    _add(acc, 30, times[i - 1] - times[run_start])
                    _add(acc, 35, gap)
                    run_start = i
            for k in range(6):
                if flags[i] & _FLAG_BITS[k]:
                    flag_counts[k] += 1.0
        _add(acc, 30, times[p + m - 1] - times[run_start])
        duration = times[p + m - 1] - times[p]
        row = out64[s]
        row[0] = duration
        row[1] = fwd_n
        row[2] = bwd_n
        row[3] = fwd_b
        row[4] = bwd_b
        c = 5
        for group in range(8):  # sizes all/fwd/bwd, iat all/fwd/bwd, active, idle
            _agg(acc, group * 5, block, 0)
            row[c : c + 4] = block[0]
            c += 4
        safe = duration if duration > 0 else np.inf
        row[c] = (fwd_b + bwd_b) / safe
        row[c + 1] = m / safe
        c += 2
        for k in range(6):
            row[c + k] = flag_counts[k]
        p += m


def flow_stats_fast(times: np.ndarray, sizes: np.ndarray, dirs: np.ndarray, flags: np.ndarray,
                    lengths: np.ndarray) -> np.ndarray:
    """stats.flow_stats: float32 (n_sessions, len(STATS_NAMES)), packets in session then time order."""
    out = np.zeros((len(lengths), _N), np.float64)
    if len(lengths):
        flow_stats_kernel(times, sizes, dirs, flags, lengths.astype(np.int64), ACTIVITY_TIMEOUT, out)
    return out.astype(np.float32)

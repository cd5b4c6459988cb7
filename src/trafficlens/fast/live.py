"""The compiled session engine for live decisions: blocks of captured packets in, ready sessions out.

`LiveEngine` is prep's `Engine` with a trigger: a session whose `after`-th packet is kept is
judged at once on exactly the packets it had then (the kernel records what was stored at that
moment, so later packets of the same block do not leak in), and it is judged again only if it
never reached the trigger before it ended, idled out or was evicted. What `serving.live` did per
packet in Python (decode, assemble, snapshot) runs per block in the kernels, which is what lets
it keep up with libpcap at 100 k packets/s on one core.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from trafficlens.datasets.config import PrepConfig
from trafficlens.fast import kernels as kn
from trafficlens.fast.engine import REJECT_NAMES, Engine, filter_reasons
from trafficlens.features.tensors import ExampleBatch, meta_at


class LiveEngine(Engine):
    """Sessions of live traffic, fed block by block.

    `on_ready(batch, trigger, trigger_ts)` receives the sessions to decide (`trigger` is "after"
    or "end"; `trigger_ts` the capture time of each one's `after`-th packet, or of its last);
    `on_reject(meta, reason, trigger)` those the model's filters cannot judge. State is bounded:
    past `max_sessions` live sessions, the least recently active are ended after the block
    (counted in `evicted`), so the cap holds between blocks, a block's new sessions above it.
    """

    def __init__(self, config: PrepConfig, capture: str, after: int, max_sessions: int | None,
                 on_ready: Callable[[ExampleBatch, str, np.ndarray], None],
                 on_reject: Callable[[dict[str, Any], str, str], None]):
        super().__init__(config, capture, None, lambda example: None)
        if after < 1:
            raise ValueError(f"after must be >= 1, got {after}")
        self.after = after
        self.max_sessions = max_sessions
        self.on_ready = on_ready
        self.on_reject_live = on_reject
        self.decided = np.zeros(self.SI.shape[0], bool)
        self.evicted = 0
        self.last_ts: float | None = None
        # Load (or compile, once per install) the kernels only live uses now, with nothing to do,
        # rather than at the first eviction or quiet spell in the middle of a capture.
        kn.evict_oldest(0, self.HT, self.SI, self.SF, self.EMIT, self.K)
        kn.flush_idle(0.0, float(config.idle_timeout), self.HT, self.SI, self.SF, self.EMIT, self.K)

    @property
    def tracked(self) -> int:
        """Sessions held now."""
        return int(self.SI.shape[0] - self.K[kn.K_NSFREE])

    def feed(self, data, offs, caps, origs, times, linktypes) -> None:
        super().feed(data, offs, caps, origs, times, linktypes)  # harvests
        if len(times):
            self.last_ts = float(times[-1])
        if self.max_sessions is not None and self.tracked > self.max_sessions:
            excess = self.tracked - self.max_sessions + max(1, self.max_sessions // 10)
            self.evicted += int(kn.evict_oldest(excess, self.HT, self.SI, self.SF, self.EMIT, self.K))
            self.harvest()

    def flush_idle(self, now: float) -> None:
        """End the sessions silent for longer than the idle timeout at capture time `now`."""
        kn.flush_idle(now, float(self.config.idle_timeout), self.HT, self.SI, self.SF, self.EMIT, self.K)
        self.harvest()

    def harvest(self) -> None:
        if len(self.decided) < self.SI.shape[0]:  # the slot table grew
            self.decided = np.concatenate([self.decided, np.zeros(self.SI.shape[0] - len(self.decided), bool)])
        K = self.K
        t = int(K[kn.K_NTRIG])
        if t:  # first: a session may have triggered and ended within one block
            slots = self.TRIG[:t].copy()
            K[kn.K_NTRIG] = 0
            self.decided[slots] = True
            self._judge(slots, "after")
        m = int(K[kn.K_NEMIT])
        if m:
            slots = self.EMIT[:m].copy()
            K[kn.K_NEMIT] = 0
            fresh = slots[~self.decided[slots]]
            fresh = fresh[self.SI[fresh, kn.C_NPK] > 0]  # nothing kept (pure ACKs only): nothing to say
            if len(fresh):
                self._judge(fresh, "end")
            self.decided[slots] = False
            kn.free_sessions(slots, self.SI, self.PK, self.ST, self.SFREE, K)

    def _judge(self, slots: np.ndarray, trigger: str) -> None:
        after = self.after if trigger == "after" else 0
        batch = self._batch(slots, [None] * len(slots), after)
        details = batch.build
        reason = filter_reasons(details.SI, self.config)  # on the session as it was at its trigger
        last = details.times[details.starts + details.lengths - 1]  # the trigger packet, in arrival order
        rejected = np.flatnonzero(reason)
        if len(rejected):
            columns = details._columns(rejected)
            for j, i in enumerate(rejected.tolist()):
                self.on_reject_live(meta_at(columns, j), REJECT_NAMES[reason[i]], trigger)
        keep = np.flatnonzero(reason == 0)
        if len(keep) == len(slots):
            self.on_ready(batch, trigger, last)
        elif len(keep):
            part = ExampleBatch(batch.image[keep], batch.packets[keep], [None] * len(keep),
                                lambda idx, tensors=True, keep=keep: details(keep[idx], tensors))
            self.on_ready(part, trigger, last[keep])


def block_from_pcapy(data, meta, linktype: int) -> tuple[np.ndarray, ...] | None:
    """pcapy-ng's `next_batch` (bytes, uint32 records: sec, usec, offset, caplen) as `feed`'s
    arrays: data, offsets, captured lengths, lengths (the caplen: the batch has no other), times,
    link types."""
    if not len(meta):
        return None
    records = np.frombuffer(meta, np.uint32).reshape(-1, 4).astype(np.int64)
    times = records[:, 0] + records[:, 1] * 1e-6
    caps = np.ascontiguousarray(records[:, 3])
    return (np.frombuffer(data, np.uint8), np.ascontiguousarray(records[:, 2]), caps, caps,
            times, np.full(len(caps), linktype, np.int64))

"""The reference session engine: plain Python, packet by packet (the test oracle).

Decoding (`capture.decode`), assembly (`sessions.SessionAssembler`) and tensors
(`tensors.Featurizer`) are the readable definitions of what prep computes; the compiled engine
must match them byte for byte.
"""

from __future__ import annotations

import copy
from array import array
from typing import Any, Iterator

import numpy as np

from trafficlens.capture import decode
from trafficlens.capture.reader import RawPacket
from trafficlens.prep.engines.base import EngineCounts, PacketBlock, SessionEngine
from trafficlens.prep.engines.blocks import packet_blocks
from trafficlens.prep.sessions.assembler import SessionAssembler
from trafficlens.prep.sessions.session import Session
from trafficlens.prep.tensors.examples import Example, ExampleBatch, Featurizer

_new = tuple.__new__  # a RawPacket without NamedTuple.__new__'s Python-level call


def _snapshot(s: Session) -> Session:
    """A copy of a session as it is now: a live decision must not see packets that came later."""
    snap = copy.copy(s)
    snap.times, snap.sizes = array("d", s.times), array("l", s.sizes)
    snap.dirs, snap.flags, snap.stored = array("B", s.dirs), array("B", s.flags), list(s.stored)
    return snap


class ReferenceEngine(SessionEngine):
    def __init__(self, config, source, sink, *, label_of=None, after: int = 0, max_sessions: int | None = None):
        super().__init__(config, source, sink, label_of=label_of, after=after, max_sessions=max_sessions)
        self._examples: list[Example] = []
        self._rejected: list[tuple[dict[str, Any], str]] = []
        self._featurizer = Featurizer(config, source, label_of, self._examples.append,
                                      lambda meta, reason: self._rejected.append((meta, reason)))
        self._assembler = SessionAssembler(config, self._ended, watch=self._kept if after else None,
                                           max_sessions=max_sessions)
        self._ready: list[tuple[Session, str, float]] = []  # (session, trigger, trigger time)
        self._decided: set[int] = set()  # live: sessions handed over at their after-th packet
        self._skipped: dict[str, int] = {}
        self._fragments = 0

    def blocks(self, reader) -> Iterator[PacketBlock]:
        return packet_blocks(reader)

    def feed(self, block: PacketBlock) -> None:
        data, offs, caps, origs, times, links = block
        raw = data.tobytes()
        skipped, add = self._skipped, self._assembler.add
        for off, cap, orig, ts, link in zip(offs.tolist(), caps.tolist(), origs.tolist(), times.tolist(), links.tolist()):
            packet = decode(_new(RawPacket, (ts, raw[off:off + cap], orig, link)))
            if type(packet) is str:
                skipped[packet] = skipped.get(packet, 0) + 1
                continue
            if packet.fragmented:
                self._fragments += 1
            add(packet)
        self._hand_over()

    def flush_idle(self, now: float) -> None:
        self._assembler.flush_idle(now)
        self._hand_over()

    def close(self) -> None:
        self._assembler.close()
        self._hand_over()

    @property
    def counts(self) -> EngineCounts:
        a = self._assembler
        return EngineCounts(dict(self._skipped), dict(self._featurizer.dropped), a.retransmission_packets,
                            a.pure_ack_packets, self._fragments, a.quic_short_unmasked, a.evicted)

    @property
    def tracked(self) -> int:
        return len(self._assembler.sessions)

    # -- sessions ------------------------------------------------------------------------------
    def _kept(self, s: Session) -> None:
        """Live: a session's after-th kept packet decides it, on the packets it has now."""
        if len(s.times) == self.after and id(s) not in self._decided:
            self._decided.add(id(s))
            self._ready.append((_snapshot(s), "after", s.times[-1]))

    def _ended(self, s: Session) -> None:
        if id(s) in self._decided:
            self._decided.discard(id(s))
        elif not self.after or s.times:  # live: nothing kept (pure ACKs only), nothing to say
            self._ready.append((s, "end", max(s.times) if s.times else s.ts_last))

    def _hand_over(self) -> None:
        """Featurize the sessions made ready, in order, and pass them on grouped by trigger."""
        ready, self._ready = self._ready, []
        sink = self.sink
        i = 0
        while i < len(ready):
            trigger = ready[i][1]
            j = i
            while j < len(ready) and ready[j][1] == trigger:
                j += 1
            accepted: list[float] = []
            for s, _, ts in ready[i:j]:
                before = len(self._rejected)
                self._featurizer(s)
                if len(self._rejected) == before:
                    accepted.append(ts)
            self._featurizer.flush()
            if self._rejected and sink.reject is not None:
                for meta, reason in self._rejected:
                    sink.reject(meta, reason, trigger)
            self._rejected.clear()
            if self._examples:
                sink.sessions(ExampleBatch.of(self._examples), trigger, np.array(accepted, np.float64))
                self._examples.clear()
            i = j

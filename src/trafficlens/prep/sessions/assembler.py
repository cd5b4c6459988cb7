"""Group decoded packets into sessions, applying the papers' cleaning rules as packets arrive.

Rules (Ge 2021, Chen 2023): TCP retransmissions (a payload range already seen) and
zero-payload pure ACKs are dropped; a 5-tuple starts a new session on a SYN after FIN/RST and
after `idle_timeout` seconds of silence; out-of-order segments are reordered when the session
ends. Sessions idle past the timeout are flushed as the capture's clock advances, so memory is
bounded by the sessions alive at once.
"""

from __future__ import annotations

from typing import Callable

from trafficlens.prep.config import PrepConfig
from trafficlens.prep.tensors.quic import quic_fields, scid_length
from trafficlens.prep.tensors.tls import record_end
from trafficlens.prep.tensors.views import packet_view, view_offsets
from trafficlens.prep.sessions.session import ACK, FIN, RST, SYN, Session

_REORDER_MARGIN = 4  # extra packets stored so that late segments can still move forward
_MAX_STORED = 256  # hard cap per session, whatever the settings
_IDLE_SCAN_EVERY = 1 << 16  # packets between scans for idle sessions


class SessionAssembler:
    """Feed `add(packet)` with decoded packets in capture order; finished sessions go to `emit`."""

    def __init__(self, config: PrepConfig, emit: Callable[[Session], None],
                 watch: Callable[[Session], None] | None = None, max_sessions: int | None = None):
        """`watch(session)` runs after every kept packet (live decisions); `max_sessions` caps
        the sessions tracked at once, evicting the least recently active (counted in `evicted`)."""
        self.config = config
        self.emit = emit
        self.watch = watch
        self.max_sessions = max_sessions
        self.evicted = 0
        self.sessions: dict[tuple, Session] = {}
        self.bidirectional = config.unit == "session"
        self.timeout = float(config.idle_timeout)
        self.store_packets = config.packets + _REORDER_MARGIN
        self.store_bytes = config.image_bytes
        self.view_limit = max(config.packet_bytes, config.image_bytes)
        self.retransmission_packets = 0
        self.pure_ack_packets = 0
        self.quic_short_unmasked = 0  # stored QUIC short headers whose connection ID length was unknown
        self.sessions_started = 0
        self.strict = config.mask == "strict"
        self._since_scan = 0

    def add(self, p) -> None:
        if self.bidirectional:
            a = (p.src, p.sport)
            b = (p.dst, p.dport)
            key = (p.proto, a, b) if a <= b else (p.proto, b, a)
        else:
            key = (p.proto, p.src, p.sport, p.dst, p.dport)
        flags = p.flags
        s = self.sessions.get(key)
        if s is not None and (
            p.ts - s.ts_last > self.timeout or (s.closing and flags & (SYN | ACK) == SYN)
        ):
            del self.sessions[key]
            self.emit(s)
            s = None
        if s is None:
            # A capture that starts at the SYN-ACK still names the client correctly.
            s = Session(key, p, client_is_src=not (flags & (SYN | ACK) == (SYN | ACK)), strict=self.strict)
            self.sessions[key] = s
            self.sessions_started += 1
            if self.max_sessions is not None and len(self.sessions) > self.max_sessions:
                self._evict()
        if p.ts > s.ts_last:  # any packet, even one dropped below, keeps the session alive
            s.ts_last = p.ts
        direction = 0 if not self.bidirectional or (p.sport == s.client[1] and p.src == s.client[0]) else 1

        rel = None
        if p.proto == 6:
            if p.payload_len:
                retransmitted, rel = s.tcp_segment(direction, p.seq, p.payload_len)
                if retransmitted:
                    self.retransmission_packets += 1
                    return
            elif not flags & (SYN | FIN | RST):
                self.pure_ack_packets += 1
                return
            if flags & (FIN | RST):
                s.closing = True

        s.times.append(p.ts)
        s.sizes.append(p.ip_len)
        s.dirs.append(direction)
        s.flags.append(flags)
        s.payload_bytes += p.payload_len
        whole = False  # store the whole view: the segment may hold part of a TLS hello
        if self.strict:
            if rel is not None:
                if s.hello_end[direction] < 0:  # the direction's first payload segment
                    s.hello_end[direction] = record_end(p.frame, p.l7, p.end)
                whole = rel < s.hello_end[direction]
            elif p.proto == 17:
                scil = scid_length(p.frame, p.l7, p.end)
                if scil >= 0:  # a QUIC long header: the peer's short headers carry an ID this long
                    s.quic = True
                    s.cids[1 - direction] = scil
        if (s.stored_nonempty < self.store_packets or s.stored_bytes < self.store_bytes) and len(s.stored) < _MAX_STORED:
            view = packet_view(p, self.config.layer, self.config.mask, s.cids[direction])
            if view:
                s.stored.append((p.ts, direction, rel, view if whole else view[: self.view_limit],
                                 view_offsets(p, self.config.layer)[1]))
                s.stored_bytes += len(view)
                s.stored_nonempty += 1
                if s.quic and s.cids[direction] < 0 and quic_fields(p.frame, p.l7, p.end)[1]:
                    self.quic_short_unmasked += 1

        if self.watch is not None:
            self.watch(s)
        self._since_scan += 1
        if self._since_scan >= _IDLE_SCAN_EVERY:
            self._since_scan = 0
            self.flush_idle(p.ts)

    def _evict(self) -> None:
        """Emit the least recently active tenth of the sessions (bounded state for live capture)."""
        count = max(1, len(self.sessions) // 10)
        oldest = sorted(self.sessions.items(), key=lambda item: item[1].ts_last)[:count]
        for key, s in oldest:
            del self.sessions[key]
            self.evicted += 1
            self.emit(s)

    def flush_idle(self, now: float) -> None:
        """Emit every session silent for longer than the idle timeout at capture time `now`."""
        horizon = now - self.timeout
        idle = [key for key, s in self.sessions.items() if s.ts_last < horizon]
        for key in idle:
            self.emit(self.sessions.pop(key))

    def close(self) -> None:
        """Emit all remaining sessions (end of input), oldest first."""
        for s in sorted(self.sessions.values(), key=lambda s: s.ts_start):
            self.emit(s)
        self.sessions.clear()

"""The state trafficlens keeps per live session, and the cleaning rules of the papers.

Per packet only what the tensors and statistics need is kept: compact arrays of time, size,
direction and TCP flags for every kept packet, and the (already masked) layer-view bytes of
the first few packets. So memory is bounded by live sessions, not by capture size.
"""

from __future__ import annotations

from array import array

from trafficlens.prep.tensors.tls import mask_hello_stream

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_MOD = 1 << 32
_HALF = 1 << 31


class Session:
    """One session (or one-way flow) being assembled."""

    __slots__ = (
        "key", "proto", "version", "client", "server", "ts_start", "ts_last", "closing",
        "times", "sizes", "dirs", "flags", "stored", "stored_bytes", "stored_nonempty",
        "payload_bytes", "seq_base", "ranges", "out_of_order", "strict", "hello_end", "quic", "cids",
    )

    def __init__(self, key, packet, client_is_src: bool, strict: bool = False):
        self.key = key
        self.proto = packet.proto
        self.version = packet.version
        if client_is_src:
            self.client, self.server = (packet.src, packet.sport), (packet.dst, packet.dport)
        else:
            self.client, self.server = (packet.dst, packet.dport), (packet.src, packet.sport)
        self.ts_start = packet.ts
        self.ts_last = packet.ts
        self.closing = False
        self.times = array("d")
        self.sizes = array("l")
        self.dirs = array("B")
        self.flags = array("B")
        # (ts, direction, rel seq or None, view, offset of the payload in the view)
        self.stored: list[tuple[float, int, int | None, bytes, int]] = []
        self.stored_bytes = 0
        self.stored_nonempty = 0
        self.payload_bytes = 0
        self.seq_base = [None, None]
        self.ranges: list[list[list[int]]] = [[], []]
        self.out_of_order = False
        # strict mask state, per direction: where the TLS record opening the stream ends (-1: no
        # payload yet; segments before it are stored whole), and the QUIC short header
        # destination ID length (the peer's source ID length; -1: not seen)
        self.strict = strict
        self.hello_end = [-1, -1]
        self.quic = False
        self.cids = [-1, -1]

    def tcp_segment(self, direction: int, seq: int, length: int) -> tuple[bool, int]:
        """Record a TCP payload range; returns (is_retransmission, relative sequence number).

        A segment whose whole range was already seen is a retransmission. One that fills an
        earlier gap is out of order: the session is flagged and reordered when finished.
        """
        base = self.seq_base[direction]
        if base is None:
            self.seq_base[direction] = base = seq
        rel = (seq - base) % _MOD
        if rel >= _HALF:  # before the first segment seen (reordered across the start)
            rel -= _MOD
        end = rel + length
        ranges = self.ranges[direction]
        if not ranges:
            ranges.append([rel, end])
            return False, rel
        last = ranges[-1]
        if rel == last[1]:  # in order: the common case
            last[1] = end
            return False, rel
        for lo, hi in ranges:
            if lo <= rel and end <= hi:
                return True, rel
        if rel < last[1]:
            self.out_of_order = True
        ranges.append([rel, end])
        ranges.sort()
        merged = [ranges[0]]
        for lo, hi in ranges[1:]:
            if lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.ranges[direction] = merged
        return False, rel

    def order(self) -> list[int]:
        """Indices into `stored`, in tensor order: by time, TCP payload segments of each direction
        put in sequence order.

        Segments keep the time slots they arrived in; within one direction the slots of
        payload-carrying segments are refilled in sequence-number order (Ge 2021: reorder
        out-of-order segments), so the interleaving of the two directions is preserved.
        """
        stored = self.stored
        order = sorted(range(len(stored)), key=lambda i: stored[i][0])
        if self.out_of_order and self.proto == 6:
            for direction in (0, 1):
                slots = [k for k, i in enumerate(order) if stored[i][1] == direction and stored[i][2] is not None]
                by_seq = sorted((order[k] for k in slots), key=lambda i: stored[i][2])
                for k, i in zip(slots, by_seq):
                    order[k] = i
        return order

    def ordered_views(self) -> list[tuple[float, int, bytes]]:
        """(time slot, direction, view) of the stored packets in tensor order (`order`); with the
        strict mask, a TLS hello cut across segments is masked on each direction's stream."""
        stored = self.stored
        order = self.order()
        views = [stored[i][3] for i in order]
        if self.strict and self.proto == 6:
            for direction in (0, 1):
                idx = sorted((k for k, i in enumerate(order) if stored[i][1] == direction and stored[i][2] is not None),
                             key=lambda k: stored[order[k]][2])
                if len(idx) > 1:
                    masked = mask_hello_stream([(stored[order[k]][2], views[k], stored[order[k]][4]) for k in idx])
                    for j, view in masked.items():
                        views[idx[j]] = view
        slots = sorted(item[0] for item in stored)  # a reordered segment takes the time slot it fills
        return [(ts, stored[i][1], view) for ts, i, view in zip(slots, order, views)]

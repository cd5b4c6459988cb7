"""The state trafficlens keeps per live session, and the cleaning rules of the papers.

Per packet only what the tensors and statistics need is kept: compact arrays of time, size,
direction and TCP flags for every kept packet, and the (already masked) layer-view bytes of
the first few packets. So memory is bounded by live sessions, not by capture size.
"""

from __future__ import annotations

from array import array

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_MOD = 1 << 32
_HALF = 1 << 31


class Session:
    """One session (or one-way flow) being assembled."""

    __slots__ = (
        "key", "proto", "version", "client", "server", "ts_start", "ts_last", "closing",
        "times", "sizes", "dirs", "flags", "stored", "stored_bytes", "stored_nonempty",
        "payload_bytes", "seq_base", "ranges", "out_of_order", "retransmissions", "pure_acks",
    )

    def __init__(self, key, packet, client_is_src: bool):
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
        self.stored: list[tuple[float, int, int, bytes]] = []  # (ts, direction, rel seq, view)
        self.stored_bytes = 0
        self.stored_nonempty = 0
        self.payload_bytes = 0
        self.seq_base = [None, None]
        self.ranges: list[list[list[int]]] = [[], []]
        self.out_of_order = False
        self.retransmissions = 0
        self.pure_acks = 0

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

    def ordered_views(self) -> list[tuple[float, int, bytes]]:
        """Stored packets by time, TCP payload segments of each direction put in sequence order.

        Segments keep the time slots they arrived in; within one direction the slots of
        payload-carrying segments are refilled in sequence-number order (Ge 2021: reorder
        out-of-order segments), so the interleaving of the two directions is preserved.
        """
        stored = sorted(self.stored, key=lambda item: item[0])
        if self.out_of_order and self.proto == 6:
            for direction in (0, 1):
                slots = [i for i, item in enumerate(stored) if item[1] == direction and item[2] is not None]
                by_seq = sorted((stored[i] for i in slots), key=lambda item: item[2])
                for slot, item in zip(slots, by_seq):
                    stored[slot] = (stored[slot][0], item[1], item[2], item[3])
        return [(ts, direction, view) for ts, direction, _, view in stored]

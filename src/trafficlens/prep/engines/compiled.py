"""The compiled session engine: blocks of packets through numba kernels (`kernels.py`).

The per-packet and per-session Python work of the reference engine runs as kernels over blocks:
a classic pcap's records are scanned in the reader's windows (pcapng records come from the
Python reader, packed into blocks), every packet of a block is decoded at once, assembled into
sessions kept in arrays, and the sessions that finished during the block are turned into tensors
together. The order of everything the reference emits (sessions, counts) is kept, so datasets
are identical. Live decisions (`after=M`): the kernel records what a session had stored when its
M-th packet was kept, so it is decided on exactly those packets even when more of it came in the
same block, and again only if it never reached the trigger before it ended.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import numpy as np

from trafficlens.prep.config import LAYERS, MASKS
from trafficlens.prep.engines import kernels as kn
from trafficlens.prep.engines.base import EngineCounts, PacketBlock, SessionEngine
from trafficlens.prep.engines.blocks import packet_blocks
from trafficlens.prep.engines.kernel_statistics import flow_stats_fast
from trafficlens.prep.tensors.examples import ExampleBatch, meta_at, sequences, time_order
from trafficlens.prep.tensors.filters import REJECT_CODES, reject_codes, unlabeled_fill

_PCAPNG_BLOCK = 8192  # packets per block when records come from the Python pcapng reader
_PCAP_WINDOW = 4 << 20  # bytes per pcap window: fewer, larger blocks (damage offsets do not depend on it)
_CONSTANT_LABELS = ("dir", "file", "preset", "name")  # Labeler kinds that never read the session


class CompiledEngine(SessionEngine):
    """Session state of one source, fed block by block; finished sessions go out in batches."""

    # Small to start (most captures are small files: set-up cost counts), doubled when full.
    INITIAL_SLOTS = 512
    INITIAL_NODES = 8192
    INITIAL_ARENA = 1 << 20  # view bytes of live sessions; compacted (and doubled) when crowded
    # live engines start with room for max_sessions sessions, up to this many (83 MB resident and 57 ms
    # to build for 100 k, most of it the pools' free lists and the per-direction range lists)
    LIVE_SLOTS_CAP = 1 << 17
    # pool nodes per slot they start with: the live benchmark's sessions needed 6.6 packet nodes and 4 view nodes
    # each at their peak (40 k and 64 k sessions), and most sessions are short
    LIVE_PACKETS_PER_SLOT, LIVE_VIEWS_PER_SLOT = 4, 2
    LIVE_ARENA_PER_SLOT = 2048  # arena bytes per slot they start with (a session's views took 870 on average)

    @classmethod
    def _start_sizes(cls, after: int, max_sessions: int | None) -> tuple[int, int, int, int]:
        """(slots, packet nodes, view nodes, arena bytes) to start with.

        Live engines (`after`, `max_sessions`) get room for `max_sessions` sessions from the start:
        doubling the table at 32 k sessions stalled capture for 90-110 ms, compacting a crowded arena
        for 80-200 ms and doubling a pool for 10 ms, 45-70 ms of decision delay once the backlog
        drained (measured at 100 k packets/s). The table and arena commit pages only as sessions use
        them; the pools' free lists and the range lists commit theirs at once."""
        if not (after and max_sessions):
            return cls.INITIAL_SLOTS, cls.INITIAL_NODES, cls.INITIAL_NODES, cls.INITIAL_ARENA
        slots = max(cls.INITIAL_SLOTS, 1 << (min(max_sessions, cls.LIVE_SLOTS_CAP) - 1).bit_length())
        return (slots, max(cls.INITIAL_NODES, slots * cls.LIVE_PACKETS_PER_SLOT),
                max(cls.INITIAL_NODES, slots * cls.LIVE_VIEWS_PER_SLOT), max(cls.INITIAL_ARENA, slots * cls.LIVE_ARENA_PER_SLOT))

    def __init__(self, config, source, sink, *, label_of=None, after: int = 0, max_sessions: int | None = None):
        super().__init__(config, source, sink, label_of=label_of, after=after, max_sessions=max_sessions)
        self._counts = EngineCounts()
        view_limit = max(config.packet_bytes, config.image_bytes)
        self.settings = kn.Settings(config.unit == "session", float(config.idle_timeout),
                                    config.packets + 4,  # sessions.assembler._REORDER_MARGIN
                                    config.image_bytes, view_limit, LAYERS.index(config.layer),
                                    MASKS.index(config.mask), after)
        slots, packet_nodes, view_nodes, arena = self._start_sizes(after, max_sessions)
        packet_pool, packet_times = _pool(packet_nodes, 3, kn.P_NEXT)
        view_pool, view_times = _pool(view_nodes, kn.NE, kn.E_NEXT)
        counters = np.zeros(kn.NK, np.int64)
        counters[kn.K_NSFREE] = slots
        self.st = kn.State(
            slot_index=np.full(4 * slots, kn.HT_EMPTY, np.int64), slot_ints=np.zeros((slots, kn.NI), np.int64),
            slot_floats=np.zeros((slots, kn.NF), np.float64), free_slots=np.arange(slots - 1, -1, -1, dtype=np.int64),
            packet_pool=packet_pool, packet_times=packet_times, view_pool=view_pool, view_times=view_times,
            arena=np.zeros(max(arena, 8 * view_limit), np.uint8), seq_ranges=kn.new_ranges(slots),
            seq_range_counts=np.zeros(2 * slots, np.int64), ended_slots=np.zeros(slots, np.int64),
            triggered_slots=np.zeros(slots, np.int64), counters=counters, scratch=np.zeros(1 << 16, np.uint8))
        self.decided = np.zeros(slots, bool)  # live: sessions handed over at their trigger
        if after:  # load the kernels only live uses now, not at the first eviction or quiet spell
            kn.evict_oldest(0, self.st)
            kn.flush_idle(0.0, self.st, self.settings)

    # -- packets -------------------------------------------------------------------------------
    def blocks(self, reader) -> Iterator[PacketBlock]:
        """Classic pcap: records scanned by a kernel in the reader's windows; pcapng: from the
        Python reader (its warnings too), packed into blocks."""
        if reader.format == "pcap":
            return self._pcap_blocks(reader)
        return packet_blocks(reader, _PCAPNG_BLOCK)

    def _pcap_blocks(self, reader) -> Iterator[PacketBlock]:
        for window in reader.pcap_windows(max(reader.chunk_size, _PCAP_WINDOW) if not reader.compressed else None):
            f = window.format
            data = np.frombuffer(window.data, np.uint8)
            room = (len(data) - window.start) // f.header + 1
            offs, caps, origs = (np.empty(room, np.int64) for _ in range(3))
            times = np.empty(room, np.float64)
            n, window.stop = kn.scan_pcap(data, window.start, f.order == ">", f.scale, f.limit, f.header,
                                          offs, caps, origs, times)
            window.records = n
            if n:
                yield PacketBlock(data, offs[:n], caps[:n], origs[:n], times[:n], np.full(n, f.linktype, np.int64))

    def feed(self, block: PacketBlock) -> None:
        data, offs, caps, origs, times, linktypes = block
        n = len(offs)
        if not n:
            return
        decoded = np.empty((n, kn.ND), np.int64)
        kn.decode_block(data, offs, caps, origs, linktypes, n, decoded)
        skipped = self._counts.skipped
        counts = np.bincount(decoded[:, kn.D_CODE], minlength=len(kn.REASONS))
        for code in np.flatnonzero(counts[1:]) + 1:
            skipped[kn.REASONS[code]] = skipped.get(kn.REASONS[code], 0) + int(counts[code])
        if counts[0]:
            self._assemble(data, offs, caps, times, decoded)
        if self.max_sessions is not None and self.tracked > self.max_sessions:
            excess = self.tracked - self.max_sessions + max(1, self.max_sessions // 10)
            self._counts.evicted += int(kn.evict_oldest(excess, self.st))
        self._harvest()

    def _assemble(self, data, offs, caps, times, decoded) -> None:
        biggest = int(caps.max()) + 64
        if biggest > self.st.scratch.size:
            self.st = self.st._replace(scratch=np.zeros(max(biggest, 2 * self.st.scratch.size), np.uint8))
        i, n = 0, len(offs)
        while True:
            code, i = kn.assemble(data, offs, times, decoded, i, n, self.st, self.settings)
            if code == kn.DONE:
                return
            self._grow(code)

    def flush_idle(self, now: float) -> None:
        kn.flush_idle(now, self.st, self.settings)
        self._harvest()

    def close(self) -> None:
        kn.close_all(self.st)
        self._harvest()

    @property
    def counts(self) -> EngineCounts:
        c, counters = self._counts, self.st.counters
        c.retransmission_packets, c.pure_ack_packets = int(counters[kn.K_RETR]), int(counters[kn.K_PACK])
        c.fragments_kept, c.quic_short_unmasked = int(counters[kn.K_FRAGKEPT]), int(counters[kn.K_QUICLEFT])
        return c

    @property
    def tracked(self) -> int:
        return int(self.st.slot_ints.shape[0] - self.st.counters[kn.K_NSFREE])

    def _grow(self, code: int) -> None:
        st = self.st
        if code == kn.NEED_SLOT:
            old = st.slot_ints.shape[0]
            new = 2 * old
            st.counters[kn.K_NSFREE] = old
            kn.extend_ranges(st.seq_ranges, 2 * old)
            self.st = st = st._replace(
                slot_ints=np.concatenate([st.slot_ints, np.zeros((old, kn.NI), np.int64)]),
                slot_floats=np.concatenate([st.slot_floats, np.zeros((old, kn.NF), np.float64)]),
                free_slots=np.concatenate([np.arange(new - 1, old - 1, -1, dtype=np.int64), np.zeros(old, np.int64)]),
                seq_range_counts=np.concatenate([st.seq_range_counts, np.zeros(2 * old, np.int64)]),
                ended_slots=np.concatenate([st.ended_slots, np.zeros(old, np.int64)]),
                triggered_slots=np.concatenate([st.triggered_slots, np.zeros(old, np.int64)]),
                slot_index=np.full(4 * new, kn.HT_EMPTY, np.int64))
            self.decided = np.concatenate([self.decided, np.zeros(old, bool)])
            kn.rebuild_table(st)
        elif code == kn.NEED_PACKET:
            self.st = st._replace(**dict(zip(("packet_pool", "packet_times"),
                                             _grow_pool(st.packet_pool, st.packet_times, kn.P_NEXT))))
            self.st.counters[kn.K_PFREE] = len(self.st.packet_pool) // 2
        elif code == kn.NEED_STORED:
            self.st = st._replace(**dict(zip(("view_pool", "view_times"),
                                             _grow_pool(st.view_pool, st.view_times, kn.E_NEXT))))
            self.st.counters[kn.K_EFREE] = len(self.st.view_pool) // 2
        elif code == kn.NEED_ARENA:
            self._compact_arena()

    def _compact_arena(self) -> None:
        st, counters = self.st, self.st.counters
        fresh = np.empty_like(st.arena)
        kn.compact_arena(st, fresh)
        size = st.arena.size
        while counters[kn.K_ARENA] > size // 2 or counters[kn.K_ARENA] + counters[kn.K_ROOM] > size:  # still crowded: double it
            size *= 2
        if size > st.arena.size:
            bigger = np.zeros(size, np.uint8)
            bigger[: counters[kn.K_ARENA]] = fresh[: counters[kn.K_ARENA]]
            fresh = bigger
        self.st = st._replace(arena=fresh)

    # -- sessions ------------------------------------------------------------------------------
    def _harvest(self) -> None:
        """Hand over the sessions triggered (live) and finished since the last call, in order."""
        counters = self.st.counters
        t = int(counters[kn.K_NTRIG])
        if t:  # first: a session may have triggered and ended within one block
            slots = self.st.triggered_slots[:t].copy()
            counters[kn.K_NTRIG] = 0
            self.decided[slots] = True
            self._judge_at_trigger(slots)
        m = int(counters[kn.K_NEMIT])
        if not m:
            return
        slots = self.st.ended_slots[:m].copy()
        counters[kn.K_NEMIT] = 0
        ended = slots
        if self.after:  # live: decided at the trigger already, or nothing kept (pure ACKs only)
            ended = slots[~self.decided[slots]]
            ended = ended[self.st.slot_ints[ended, kn.C_NPK] > 0]
            self.decided[slots] = False
        if len(ended):
            self._judge_ended(ended)
        kn.free_sessions(slots, self.st)

    def _judge_ended(self, slots: np.ndarray) -> None:
        """Filters, labels and tensors of finished sessions (the reference's Featurizer)."""
        slot_ints = self.st.slot_ints
        reason = reject_codes(slot_ints[slots, kn.C_PAY], slot_ints[slots, kn.C_NPK], self.config)
        keep = np.flatnonzero(reason == 0)
        labels: list[str | None] = [None] * len(keep)
        if self.label_of is not None and len(keep):
            labels = self._labels(slots[keep])
            drop, fill = unlabeled_fill(self.config)
            if fill is not None:
                labels = [fill if label is None else label for label in labels]
            elif drop:
                unlabeled = np.array([label is None for label in labels], dtype=bool)
                reason[keep[unlabeled]] = 4
                keep = keep[~unlabeled]
                labels = [label for label in labels if label is not None]
        self._reject(slots, reason, "end")
        if len(keep):
            batch = self._batch(slots[keep], labels)
            self.sink.sessions(batch, "end", self.st.slot_floats[slots[keep], kn.F_TMAX])

    def _labels(self, slots: np.ndarray) -> list[str | None]:
        if getattr(self.label_of, "kind", None) in _CONSTANT_LABELS:
            return [self.label_of(self._meta(slots[0]))] * len(slots)
        return [self.label_of(self._meta(slot)) for slot in slots]

    def _reject(self, slots: np.ndarray, reason: np.ndarray, trigger: str, columns=None) -> None:
        dropped = self._counts.dropped
        counts = np.bincount(reason, minlength=len(REJECT_CODES))
        for code in np.flatnonzero(counts[1:]) + 1:
            dropped[REJECT_CODES[code]] = dropped.get(REJECT_CODES[code], 0) + int(counts[code])
        if self.sink.reject is not None:
            for j in np.flatnonzero(reason):
                meta = meta_at(columns, j) if columns is not None else self._meta(slots[j])
                self.sink.reject(meta, REJECT_CODES[reason[j]], trigger)

    def _judge_at_trigger(self, slots: np.ndarray) -> None:
        """Live: sessions at their after-th kept packet, filtered as they were then."""
        batch = self._batch(slots, [None] * len(slots), self.after)
        details = batch.build
        reason = reject_codes(details.slot_ints[:, kn.C_PAY], details.slot_ints[:, kn.C_NPK], self.config)
        last = details.times[details.starts + details.lengths - 1]  # the trigger packet, in arrival order
        rejected = np.flatnonzero(reason)
        if len(rejected):
            self._reject(slots[rejected], reason[rejected], "after", details._columns(rejected))
        keep = np.flatnonzero(reason == 0)
        if len(keep) == len(slots):
            self.sink.sessions(batch, "after", last)
        elif len(keep):
            part = ExampleBatch(batch.image[keep], batch.packets[keep], [None] * len(keep),
                                lambda idx, tensors=True, keep=keep: details(keep[idx], tensors))
            self.sink.sessions(part, "after", last[keep])

    def _batch(self, chosen: np.ndarray, labels: list[str | None], after: int = 0) -> ExampleBatch:
        """The tensors of sessions `chosen`; `after` > 0: of each one's first `after` kept packets, as
        it was at its live trigger (its metadata too: packets, bytes, payload, times)."""
        cfg = self.config
        n = len(chosen)
        slot_ints = self.st.slot_ints
        npk = slot_ints[chosen, kn.C_NPK]
        total = int((np.minimum(npk, after) if after > 0 else npk).sum())
        # image and packets rows side by side in one buffer: the writer hashes each session's
        # image + packets bytes, and this spares it a copy of the whole batch
        both = np.zeros((n, cfg.image_bytes + cfg.packets * cfg.packet_bytes), np.uint8)
        images = both[:, : cfg.image_bytes]
        rows = both[:, cfg.image_bytes :].reshape(n, cfg.packets, cfg.packet_bytes)
        out = kn.Tensors(images, rows, np.empty(total, np.float64), np.empty(total, np.int64),
                         np.empty(total, np.uint8), np.empty(total, np.uint8), np.empty(n, np.int64))
        kn.build_tensors(chosen, self.st, out, after, self.settings.mask)
        times, sizes, dirs, flags, lengths = out.times, out.sizes, out.dirs, out.flags, out.lengths
        si, sf = slot_ints[chosen], self.st.slot_floats[chosen]
        if after > 0 and n:
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            si[:, kn.C_NPK] = lengths
            si[:, kn.C_BYTES] = np.add.reduceat(sizes, starts)
            si[:, kn.C_FWD] = np.add.reduceat((dirs == 0).astype(np.int64), starts)
            si[:, kn.C_BYTESF] = np.add.reduceat(np.where(dirs == 0, sizes, 0), starts)
            si[:, kn.C_PAY] = si[:, kn.C_TPAY]
            sf[:, kn.F_TMIN] = np.minimum.reduceat(times, starts)
            sf[:, kn.F_TMAX] = np.maximum.reduceat(times, starts)
        details = _Details(self.source, si, sf, labels, times, sizes, dirs, flags, lengths, cfg.sequence_length)
        batch = ExampleBatch(images, rows, labels, details)
        batch.both = both
        return batch

    def _meta(self, slot: int) -> dict[str, Any]:
        """`session_meta` of one session (labels that read the 5-tuple, rejects)."""
        return meta_at(session_columns(self.source, self.st.slot_ints[[slot]], self.st.slot_floats[[slot]]), 0)


_ADDRESSES: dict[tuple, str] = {}


def _address(version: int, w0: int, w1: int, w2: int, w3: int) -> str:
    """The text of an address kept as four big-endian 32-bit words (cached: hosts repeat)."""
    key = (version, w0, w1, w2, w3)
    text = _ADDRESSES.get(key)
    if text is None:
        if version == 4:
            text = socket.inet_ntop(socket.AF_INET, w3.to_bytes(4, "big"))
        else:
            text = socket.inet_ntop(socket.AF_INET6, b"".join(w.to_bytes(4, "big") for w in (w0, w1, w2, w3)))
        if len(_ADDRESSES) > 65536:
            _ADDRESSES.clear()
        _ADDRESSES[key] = text
    return text


class _Details:
    """The metadata, sequences and statistics of a batch's sessions, built for the rows asked for
    (ExampleBatch.build). Plain arrays only: batches from worker processes are pickled."""

    def __init__(self, capture, slot_ints, slot_floats, labels, times, sizes, dirs, flags, lengths, sequence_length):
        self.capture = capture
        self.slot_ints, self.slot_floats, self.labels = slot_ints, slot_floats, labels
        self.times, self.sizes, self.dirs, self.flags = times, sizes, dirs, flags
        self.lengths = lengths
        self.starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        self.sequence_length = sequence_length

    def __call__(self, idx: np.ndarray, tensors: bool = True) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
        if not tensors:
            return self._columns(idx), None, None
        lengths = self.lengths[idx]
        # positions of the chosen sessions' packets, session by session
        firsts = np.repeat(self.starts[idx] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        pos = firsts + np.arange(int(lengths.sum()))
        times, sizes, dirs, flags = self.times[pos], self.sizes[pos], self.dirs[pos], self.flags[pos]
        # The sequences are the reference's own NumPy code, the statistics a compiled copy of it.
        order = time_order(times, lengths)
        times, sizes, dirs, flags = times[order], sizes[order], dirs[order], flags[order]
        stats = flow_stats_fast(times, sizes, dirs, flags, lengths)
        seqs = sequences(times, sizes, dirs, lengths, self.sequence_length)
        return self._columns(idx), seqs, stats

    def _columns(self, idx: np.ndarray) -> dict[str, Any]:
        columns = session_columns(self.capture, self.slot_ints[idx], self.slot_floats[idx])
        columns["label"] = [self.labels[i] for i in idx.tolist()]
        return columns


def session_columns(capture: str, slot_ints: np.ndarray, slot_floats: np.ndarray) -> dict[str, Any]:
    """`tensors.session_meta` for many sessions at once, as columns, from their slot rows."""
    versions = slot_ints[:, kn.C_VER].tolist()
    client = slot_ints[:, kn.C_CL0 : kn.C_CL0 + 4].tolist()
    server = slot_ints[:, kn.C_SV0 : kn.C_SV0 + 4].tolist()
    npk = slot_ints[:, kn.C_NPK]
    fwd = slot_ints[:, kn.C_FWD]
    return {
        "capture": [capture] * len(slot_ints),
        "src_ip": [_address(v, *w) for v, w in zip(versions, client)],
        "dst_ip": [_address(v, *w) for v, w in zip(versions, server)],
        "src_port": slot_ints[:, kn.C_CLPORT],
        "dst_port": slot_ints[:, kn.C_SVPORT],
        "protocol": ["TCP" if p == 6 else "UDP" for p in slot_ints[:, kn.C_PROTO].tolist()],
        "ts_start": np.where(npk > 0, slot_floats[:, kn.F_TMIN], slot_floats[:, kn.F_START]),
        "ts_end": np.where(npk > 0, slot_floats[:, kn.F_TMAX], slot_floats[:, kn.F_LAST]),
        "packets": npk,
        "bytes": slot_ints[:, kn.C_BYTES],
        "payload_bytes": slot_ints[:, kn.C_PAY],
        "packets_fwd": fwd,
        "packets_bwd": npk - fwd,
        "bytes_fwd": slot_ints[:, kn.C_BYTESF],
        "bytes_bwd": slot_ints[:, kn.C_BYTES] - slot_ints[:, kn.C_BYTESF],
    }


def _pool(n: int, width: int, next_col: int) -> tuple[np.ndarray, np.ndarray]:
    table = np.zeros((n, width), np.int64)
    table[:, next_col] = np.arange(1, n + 1)
    table[-1, next_col] = -1
    return table, np.zeros(n, np.float64)


def _grow_pool(table: np.ndarray, times: np.ndarray, next_col: int) -> tuple[np.ndarray, np.ndarray]:
    """Double a pool whose free list is empty; the new nodes become the free list."""
    old = len(table)
    extra, extra_times = _pool(old, table.shape[1], next_col)
    extra[:, next_col] += old
    extra[-1, next_col] = -1
    return np.concatenate([table, extra]), np.concatenate([times, extra_times])


def warm_up() -> None:
    """Load every kernel (from numba's disk cache, or compile it) by running a one-packet capture
    through the engine: done before forking worker processes, they inherit the compiled code
    instead of each loading it."""
    import tempfile
    from pathlib import Path

    from trafficlens.capture import CaptureReader, PcapWriter, build
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.engines.base import EngineSink

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm-up.pcap"
        with PcapWriter(path) as writer:
            segment = build.tcp(b"warm-up", sport=1, dport=2, flags="PA")
            writer.write(build.ethernet(build.ipv4(segment, proto=6)), 1.0)
        engine = CompiledEngine(PrepConfig(), path.name, EngineSink(lambda *batch: None))
        for block in engine.blocks(CaptureReader(path)):
            engine.feed(block)
        engine.close()

"""The compiled prep backend's driver: blocks of packets through the numba kernels.

`prepare_capture_fast` is `datasets.prep.prepare_capture` with the per-packet and per-session
Python work replaced by kernels over blocks: the capture's bytes are scanned in the reader's own
1 MiB windows (classic pcap, gzip too; pcapng records come from the Python reader, packed into
blocks), every packet of a block is decoded at once, assembled into sessions kept in arrays,
and the sessions that finished during the block are turned into tensors together. The order of
everything the reference emits (sessions, warnings, counts) is kept, so datasets are identical.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from trafficlens.capture.reader import (
    CaptureReader,
    _Buffer,
    _close,
    _Damage,
    _pcap_continue,
    _pcap_header,
)
from trafficlens.datasets.config import LAYERS, MASKS, PrepConfig
from trafficlens.errors import CaptureError
from trafficlens.fast import kernels as kn
from trafficlens.fast.blocks import packet_blocks
from trafficlens.fast.statistics import flow_stats_fast
from trafficlens.features.tensors import Example, ExampleBatch, _sequences, _time_order

_PCAPNG_BLOCK = 8192  # packets per block when records come from the Python pcapng reader
_CONSTANT_LABELS = ("dir", "file", "preset")  # Labeler kinds that never read the session


@dataclass
class Harvest:
    """What the engine counted, for the file's report."""

    skipped: dict[str, int]
    dropped: dict[str, int]


class Engine:
    """Session state of one capture, fed block by block; finished sessions go out in batches."""

    # Small to start (most captures are small files: set-up cost counts), doubled when full.
    INITIAL_SLOTS = 512
    INITIAL_NODES = 8192
    INITIAL_ARENA = 1 << 20  # view bytes of live sessions; compacted (and doubled) when crowded

    def __init__(self, config: PrepConfig, capture: str, label_of, emit: Callable[[Example], None],
                 emit_batch: Callable[[ExampleBatch], None] | None = None,
                 on_reject: Callable[[dict[str, Any], str], None] | None = None):
        self.config = config
        self.capture = capture
        self.label_of = label_of
        self.emit = emit
        self.emit_batch = emit_batch
        self.on_reject = on_reject
        self.skipped: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.bidir = config.unit == "session"
        self.store_packets = config.packets + 4  # flows.assembler._REORDER_MARGIN
        self.view_limit = max(config.packet_bytes, config.image_bytes)
        self.layer = LAYERS.index(config.layer)
        self.mask = MASKS.index(config.mask)
        slots, nodes = self.INITIAL_SLOTS, self.INITIAL_NODES
        self.R = kn.new_ranges(slots)
        self.HT = np.full(4 * slots, kn.HT_EMPTY, np.int64)  # the session table (see kernels)
        self.SI = np.zeros((slots, kn.NI), np.int64)
        self.SF = np.zeros((slots, kn.NF), np.float64)
        self.SFREE = np.arange(slots - 1, -1, -1, dtype=np.int64)
        self.RN = np.zeros(2 * slots, np.int64)
        self.EMIT = np.zeros(slots, np.int64)
        self.TRIG = np.zeros(slots, np.int64)  # live: sessions whose `after`-th packet came (LiveEngine)
        self.after = 0  # no trigger in prep
        self.K = np.zeros(kn.NK, np.int64)
        self.K[kn.K_NSFREE] = slots
        self.PK, self.PT = _pool(nodes, 3, kn.P_NEXT)
        self.ST, self.STT = _pool(nodes, kn.NE, kn.E_NEXT)
        self.K[kn.K_PFREE] = 0
        self.K[kn.K_EFREE] = 0
        self.arena = np.zeros(max(self.INITIAL_ARENA, 8 * self.view_limit), np.uint8)
        self.scratch = np.zeros(1 << 16, np.uint8)

    # -- packets -------------------------------------------------------------------------------
    def feed(self, data: np.ndarray, offs: np.ndarray, caps: np.ndarray, origs: np.ndarray, times: np.ndarray,
             linktypes: np.ndarray) -> None:
        """Decode and assemble one block of records (data[offs[i]:offs[i]+caps[i]] is record i)."""
        n = len(offs)
        if not n:
            return
        D = np.empty((n, kn.ND), np.int64)
        kn.decode_block(data, offs, caps, origs, linktypes, n, D)
        counts = np.bincount(D[:, kn.D_CODE], minlength=len(kn.REASONS))
        for code in range(1, len(kn.REASONS)):
            if counts[code]:
                name = kn.REASONS[code]
                self.skipped[name] = self.skipped.get(name, 0) + int(counts[code])
        if counts[0] == 0:
            return
        biggest = int(caps.max()) + 64
        if biggest > self.scratch.size:
            self.scratch = np.zeros(max(biggest, 2 * self.scratch.size), np.uint8)
        cfg = self.config
        i = 0
        while True:
            code, i = kn.assemble(
                data, offs, times, D, i, n, self.HT, self.SI, self.SF, self.SFREE, self.PK, self.PT,
                self.ST, self.STT, self.arena, self.R, self.RN, self.EMIT, self.K, self.scratch,
                self.bidir, float(cfg.idle_timeout), self.store_packets, cfg.image_bytes, self.view_limit,
                self.layer, self.mask, self.TRIG, self.after,
            )
            if code == kn.DONE:
                break
            self._grow(code)
        self.harvest()

    def close(self) -> None:
        """End of input: every live session, oldest first."""
        kn.close_all(self.HT, self.SI, self.SF, self.EMIT, self.K)
        self.harvest()

    @property
    def fragments_kept(self) -> int:
        return int(self.K[kn.K_FRAGKEPT])

    @property
    def retransmission_packets(self) -> int:
        return int(self.K[kn.K_RETR])

    @property
    def pure_ack_packets(self) -> int:
        return int(self.K[kn.K_PACK])

    @property
    def quic_short_unmasked(self) -> int:
        return int(self.K[kn.K_QUICLEFT])

    def _grow(self, code: int) -> None:
        K = self.K
        if code == kn.NEED_SLOT:
            old = self.SI.shape[0]
            new = 2 * old
            self.SI = np.concatenate([self.SI, np.zeros((old, kn.NI), np.int64)])
            self.SF = np.concatenate([self.SF, np.zeros((old, kn.NF), np.float64)])
            self.SFREE = np.concatenate([np.arange(new - 1, old - 1, -1, dtype=np.int64), np.zeros(old, np.int64)])
            K[kn.K_NSFREE] = old
            self.RN = np.concatenate([self.RN, np.zeros(2 * old, np.int64)])
            kn.extend_ranges(self.R, 2 * old)
            self.EMIT = np.concatenate([self.EMIT, np.zeros(old, np.int64)])
            self.TRIG = np.concatenate([self.TRIG, np.zeros(old, np.int64)])
            self.HT = np.full(4 * new, kn.HT_EMPTY, np.int64)
            kn.rebuild_table(self.HT, self.SI, K)
        elif code == kn.NEED_PACKET:
            self.PK, self.PT = _grow_pool(self.PK, self.PT, kn.P_NEXT)
            K[kn.K_PFREE] = len(self.PK) // 2
        elif code == kn.NEED_STORED:
            self.ST, self.STT = _grow_pool(self.ST, self.STT, kn.E_NEXT)
            K[kn.K_EFREE] = len(self.ST) // 2
        elif code == kn.NEED_ARENA:
            fresh = np.empty_like(self.arena)
            kn.compact_arena(self.SI, self.ST, self.arena, fresh, K)
            size = self.arena.size
            while K[kn.K_ARENA] > size // 2 or K[kn.K_ARENA] + K[kn.K_ROOM] > size:  # still crowded: double it
                size *= 2
            if size > self.arena.size:
                bigger = np.zeros(size, np.uint8)
                bigger[: K[kn.K_ARENA]] = fresh[: K[kn.K_ARENA]]
                fresh = bigger
            self.arena = fresh

    # -- sessions ------------------------------------------------------------------------------
    def harvest(self) -> None:
        """Filters, labels and tensors for the sessions finished since the last call, in order."""
        m = int(self.K[kn.K_NEMIT])
        if not m:
            return
        cfg = self.config
        slots = self.EMIT[:m].copy()
        self.K[kn.K_NEMIT] = 0
        SI = self.SI
        reason = filter_reasons(SI[slots], cfg)
        names = REJECT_NAMES
        if self.on_reject is not None:
            for j in np.flatnonzero(reason):
                self.on_reject(self._meta(slots[j]), names[reason[j]])
        keep = np.flatnonzero(reason == 0)
        labels: list[str | None] = [None] * len(keep)
        if self.label_of is not None and len(keep):
            if getattr(self.label_of, "kind", None) in _CONSTANT_LABELS:
                labels = [self.label_of(self._meta(slots[keep[0]]))] * len(keep)
            else:
                labels = [self.label_of(self._meta(slots[j])) for j in keep]
            if cfg.unlabeled != "keep":
                fill = cfg.unlabeled[3:] if cfg.unlabeled.startswith("as:") else None
                if fill is not None:
                    labels = [fill if label is None else label for label in labels]
                else:
                    unlabeled = np.array([label is None for label in labels], dtype=bool)
                    if unlabeled.any():
                        for j in keep[unlabeled]:
                            reason[j] = 4
                            if self.on_reject is not None:
                                self.on_reject(self._meta(slots[j]), "unlabeled")
                        keep = keep[~unlabeled]
                        labels = [label for label in labels if label is not None]
        counts = np.bincount(reason, minlength=5)
        for code in range(1, 5):
            if counts[code]:
                self.dropped[names[code]] = self.dropped.get(names[code], 0) + int(counts[code])
        if len(keep):
            self._tensors(slots[keep], labels)
        kn.free_sessions(slots, SI, self.PK, self.ST, self.SFREE, self.K)

    def _tensors(self, chosen: np.ndarray, labels: list[str | None]) -> None:
        batch = self._batch(chosen, labels)
        if self.emit_batch is not None:
            self.emit_batch(batch)
        else:
            for example in batch.examples():
                self.emit(example)

    def _batch(self, chosen: np.ndarray, labels: list[str | None], after: int = 0) -> ExampleBatch:
        """The tensors of sessions `chosen`; `after` > 0: of each one's first `after` kept packets, as
        it was at its live trigger (its metadata too: packets, bytes, payload, times)."""
        cfg = self.config
        n = len(chosen)
        SI = self.SI
        npk = SI[chosen, kn.C_NPK]
        total = int((np.minimum(npk, after) if after > 0 else npk).sum())
        # image and packets rows side by side in one buffer: the writer hashes each session's
        # image + packets bytes, and this spares it a copy of the whole batch
        both = np.zeros((n, cfg.image_bytes + cfg.packets * cfg.packet_bytes), np.uint8)
        images = both[:, : cfg.image_bytes]
        rows = both[:, cfg.image_bytes :].reshape(n, cfg.packets, cfg.packet_bytes)
        times = np.empty(total, np.float64)
        sizes = np.empty(total, np.int64)
        dirs = np.empty(total, np.uint8)
        flags = np.empty(total, np.uint8)
        lengths = np.empty(n, np.int64)
        kn.build_tensors(chosen, SI, self.PK, self.PT, self.ST, self.STT, self.arena, cfg.image_bytes,
                         cfg.packets, cfg.packet_bytes, images, rows, times, sizes, dirs, flags, lengths, after, self.mask)
        si, sf = SI[chosen], self.SF[chosen]
        if after > 0 and n:
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            si[:, kn.C_NPK] = lengths
            si[:, kn.C_BYTES] = np.add.reduceat(sizes, starts)
            si[:, kn.C_FWD] = np.add.reduceat((dirs == 0).astype(np.int64), starts)
            si[:, kn.C_PAY] = si[:, kn.C_TPAY]
            sf[:, kn.F_TMIN] = np.minimum.reduceat(times, starts)
            sf[:, kn.F_TMAX] = np.maximum.reduceat(times, starts)
        details = _Details(self.capture, si, sf, labels, times, sizes, dirs, flags, lengths, cfg.sequence_length)
        batch = ExampleBatch(images, rows, labels, details)
        batch.both = both
        return batch

    def _meta(self, slot: int) -> dict[str, Any]:
        """tensors.session_meta for one session (labels that read the 5-tuple, rejects)."""
        s = self.SI[slot]
        f = self.SF[slot]
        version = int(s[kn.C_VER])
        npk = int(s[kn.C_NPK])
        fwd = int(s[kn.C_FWD])
        return {
            "capture": self.capture,
            "src_ip": _address(version, *s[kn.C_CL0 : kn.C_CL0 + 4].tolist()),
            "dst_ip": _address(version, *s[kn.C_SV0 : kn.C_SV0 + 4].tolist()),
            "src_port": int(s[kn.C_CLPORT]),
            "dst_port": int(s[kn.C_SVPORT]),
            "protocol": "TCP" if s[kn.C_PROTO] == 6 else "UDP",
            "ts_start": float(f[kn.F_TMIN]) if npk else float(f[kn.F_START]),
            "ts_end": float(f[kn.F_TMAX]) if npk else float(f[kn.F_LAST]),
            "packets": npk,
            "bytes": int(s[kn.C_BYTES]),
            "payload_bytes": int(s[kn.C_PAY]),
            "packets_fwd": fwd,
            "packets_bwd": npk - fwd,
        }


REJECT_NAMES = ("", "empty_sessions", "min_packets", "min_bytes", "unlabeled")


def filter_reasons(si: np.ndarray, config: PrepConfig) -> np.ndarray:
    """Featurizer.__call__'s filters over slot rows: an index into REJECT_NAMES per session
    (0: kept), the first match winning."""
    pay, npk = si[:, kn.C_PAY], si[:, kn.C_NPK]
    reason = np.zeros(len(si), np.int8)
    reason[pay < config.min_bytes] = 3
    reason[npk < config.min_packets] = 2
    reason[pay == 0] = 1
    return reason


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

    def __init__(self, capture, SI, SF, labels, times, sizes, dirs, flags, lengths, sequence_length):
        self.capture = capture
        self.SI, self.SF, self.labels = SI, SF, labels
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
        order = _time_order(times, lengths)
        times, sizes, dirs, flags = times[order], sizes[order], dirs[order], flags[order]
        stats = flow_stats_fast(times, sizes, dirs, flags, lengths)
        sequences = _sequences(times, sizes, dirs, lengths, self.sequence_length)
        return self._columns(idx), sequences, stats

    def _columns(self, idx: np.ndarray) -> dict[str, Any]:
        """tensors.session_meta for many sessions at once, as columns."""
        SI = self.SI[idx]
        SF = self.SF[idx]
        versions = SI[:, kn.C_VER].tolist()
        client = SI[:, kn.C_CL0 : kn.C_CL0 + 4].tolist()
        server = SI[:, kn.C_SV0 : kn.C_SV0 + 4].tolist()
        npk = SI[:, kn.C_NPK]
        fwd = SI[:, kn.C_FWD]
        return {
            "capture": [self.capture] * len(idx),
            "src_ip": [_address(v, *w) for v, w in zip(versions, client)],
            "dst_ip": [_address(v, *w) for v, w in zip(versions, server)],
            "src_port": SI[:, kn.C_CLPORT],
            "dst_port": SI[:, kn.C_SVPORT],
            "protocol": ["TCP" if p == 6 else "UDP" for p in SI[:, kn.C_PROTO].tolist()],
            "ts_start": SF[:, kn.F_TMIN],
            "ts_end": SF[:, kn.F_TMAX],
            "packets": npk,
            "bytes": SI[:, kn.C_BYTES],
            "payload_bytes": SI[:, kn.C_PAY],
            "packets_fwd": fwd,
            "packets_bwd": npk - fwd,
            "label": [self.labels[i] for i in idx.tolist()],
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
    """Load every kernel (from numba's disk cache, or compile it) by running a one-packet capture:
    done before forking worker processes, they inherit the compiled code instead of each loading it."""
    import tempfile

    from trafficlens.capture import PcapWriter, build

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm-up.pcap"
        with PcapWriter(path) as writer:
            segment = build.tcp(b"warm-up", sport=1, dport=2, flags="PA")
            writer.write(build.ethernet(build.ipv4(segment, proto=6)), 1.0)
        prepare_capture_fast(path, path.name, PrepConfig(), None, lambda example: None)


# -- one capture file ------------------------------------------------------------------------------
def prepare_capture_fast(path: Path, relative: str, config: PrepConfig, labeler, emit: Callable[[Example], None],
                         on_reject=None, emit_batch: Callable[[ExampleBatch], None] | None = None):
    """`datasets.prep.prepare_capture` on the compiled backend; the same report, the same examples."""
    from trafficlens.datasets.prep import FileReport, file_digest, file_warnings

    report = FileReport(str(path), relative, path.stat().st_size)
    label_of = labeler.bind(path, relative) if labeler is not None else None
    engine = Engine(config, relative, label_of, emit, emit_batch, on_reject)
    reader = None
    digest = None
    try:
        reader = CaptureReader(path)  # an unreadable file is this file's error, not the run's
        if reader.format == "pcapng":
            _read_pcapng(reader, engine)
        else:
            digest = _read_pcap(reader, engine)
    except CaptureError as exc:
        report.error = str(exc)
    except OSError as exc:
        report.error = f"{path}: {exc.strerror or exc}"
    skipped = report.skipped_packets
    skipped.update(engine.skipped)
    if engine.fragments_kept:
        skipped["ip_fragment_first_kept"] = engine.fragments_kept
    if reader is not None:
        report.format = reader.format
        report.packets = reader.packets
    report.warnings = file_warnings(path, reader.warnings if reader is not None else [], skipped)
    engine.close()
    report.dropped = dict(engine.dropped)
    report.dropped["retransmission_packets"] = engine.retransmission_packets
    report.dropped["pure_ack_packets"] = engine.pure_ack_packets
    if config.mask == "strict":
        report.unmasked["quic_short_dcid"] = engine.quic_short_unmasked
    report.sha256 = digest or file_digest(path)
    return report


def _read_pcapng(reader: CaptureReader, engine: Engine) -> None:
    """pcapng records from the reference reader (its warnings too), decoded in blocks."""
    for block in packet_blocks(reader, _PCAPNG_BLOCK):
        engine.feed(*block)


class _HashingFile:
    """A plain file that feeds the SHA-256 of the manifest with what it reads: no second pass."""

    def __init__(self, fh, head: bytes):
        self.fh = fh
        self.digest = hashlib.sha256(head)

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.digest.update(data)
        return data

    def finish(self) -> str:
        """The file's hex SHA-256 (reading whatever the capture loop left, e.g. after damage)."""
        for block in iter(lambda: self.fh.read(1 << 20), b""):
            self.digest.update(block)
        return self.digest.hexdigest()

    def close(self) -> None:
        self.fh.close()


def _read_pcap(reader: CaptureReader, engine: Engine) -> str | None:
    """CaptureReader.__iter__ + reader._read_pcap, with the record loop in a kernel; the file's
    SHA-256 when it was computed on the way (uncompressed files)."""
    reader.packets = 0
    reader.warnings = []
    fh, head = reader._open()
    hashing = None
    if not reader.compressed:
        fh = hashing = _HashingFile(fh, head)
    digest = None
    # Bigger windows than the reader's mean fewer, larger blocks (damage offsets do not depend on them).
    buf = _Buffer(fh, head, reader.chunk_size if reader.compressed else max(reader.chunk_size, 4 << 20))
    failure: Exception | None = None
    try:
        if len(head) < 4:
            raise _Damage(0, "empty file" if not head else "file header cut short", cut=True)
        _pcap_records(buf, reader, engine)
        if not reader.packets:
            raise _Damage(buf.offset, "no packets after the headers", cut=True)
    except (_Damage, OSError) as exc:
        failure = exc
    finally:
        try:
            digest = hashing.finish() if hashing is not None else None
        except OSError:
            digest = None
        _close(fh)
    reader._settle(fh, failure, buf.offset)
    return digest


def _pcap_records(buf: _Buffer, reader: CaptureReader, engine: Engine) -> None:
    f = _pcap_header(buf)
    big = f.order == ">"
    while True:
        data = np.frombuffer(buf.data, np.uint8)
        room = (len(data) - buf.pos) // f.header + 1
        offs = np.empty(room, np.int64)
        caps = np.empty(room, np.int64)
        origs = np.empty(room, np.int64)
        times = np.empty(room, np.float64)
        n, pos = kn.scan_pcap(data, buf.pos, big, f.scale, f.limit, f.header, offs, caps, origs, times)
        if n:
            engine.feed(data, offs[:n], caps[:n], origs[:n], times[:n], np.full(n, f.linktype, np.int64))
            reader.packets += n
        buf.pos = pos
        if not _pcap_continue(buf, f):
            return

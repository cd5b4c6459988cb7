"""Stream the packets of a pcap or pcapng file (optionally gzip-compressed).

This is the hot path of every command, so it is our own struct-based loop over large buffered
chunks rather than dpkt or scapy: 4-5x faster here, and a damaged record must stop the file with
a warning instead of yielding garbage. The format is taken from the first bytes, never the name
(the data has `.pcap` files that are pcapng and the reverse). Classic pcap includes the
"modified" pcap of Kuznetzov's patched libpcap (magic a1b2cd34, 24-byte record headers).

A damaged file yields every packet before the damage and one warning naming the file and the
byte offset (in the uncompressed stream). A damaged gzip stream (cut short, corrupt deflate
data, a bad CRC or length, bytes after it that are not gzip) yields every packet whole in what
decompressed before the damage. Only a file that is not a capture at all, or whose gzip stream
breaks before its first four bytes, raises `CaptureError`, and it does so before the first packet.

    >>> reader = CaptureReader("x.pcap")
    >>> for raw in reader: ...
    >>> reader.warnings
    ['x.pcap: record length 70000 beyond the snap length 65535 at offset 1234; kept 12 packets before it']

The path "-" is standard input (`tcpdump -w - | trafficlens live -r -`): read as a stream, in
chunks like a file, and only once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import sys
import zlib
from typing import BinaryIO, Callable, Iterator, NamedTuple

from trafficlens.capture.formats import GZIP_MAGIC, PCAP_MAGICS, PCAPNG_MAGIC, STDIN
from trafficlens.errors import CaptureError

MAX_RECORD = 262144  # largest snap length libpcap writes; a record beyond max(snaplen, this) is damage
MAX_BLOCK = 16 << 20  # a pcapng block (or pcap record, whatever the snap length) beyond this is damage

_SHB = 0x0A0D0D0A  # reads the same in both byte orders
_BYTE_ORDER = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_new = tuple.__new__  # builds a RawPacket without the NamedTuple's Python-level __new__


class RawPacket(NamedTuple):
    """One captured frame as read from a file: time, bytes, length on the wire, link type."""

    ts: float  # seconds since the epoch
    data: bytes  # captured bytes
    orig_len: int  # length on the wire
    linktype: int  # LINKTYPE_* of the packet's interface


class _Damage(Exception):
    """Raised inside the format loops; `CaptureReader` turns it into one warning. `cut`: the
    data ran out (a damaged gzip stream, when there is one, is then the cause to report)."""

    def __init__(self, offset: int, problem: str, cut: bool = False):
        super().__init__(problem)
        self.offset = offset
        self.problem = problem
        self.cut = cut


class CaptureReader:
    """Iterate the packets of one capture file, streaming with bounded memory.

    The format is checked when the reader is made (`CaptureError` if the file is not a
    capture); the file is opened again for each iteration, and `packets` and `warnings`
    describe the latest one. `chunk_size` bytes are read at a time (1 MiB measured a little
    faster than 4 MiB or more: the buffer stays in cache). Standard input ("-") allows one
    iteration: the stream the format check opened is the one it reads on.
    """

    def __init__(self, path: str | os.PathLike, chunk_size: int = 1 << 20, digest: bool = False):
        self.path = os.fspath(path)
        self.chunk_size = chunk_size
        self.format = ""  # "pcap" or "pcapng"; "" for an empty file
        self.compressed = False
        self.packets = 0
        self.warnings: list[str] = []
        # digest: the file's SHA-256 (of its bytes as stored) computed from the reads of a pass,
        # so that prep's manifest costs no second read of the file
        self.digest = digest
        self.sha256: str | None = None
        self.stored_bytes: int | None = None  # with digest: the bytes hashed (standard input's size)
        self._stdin_read = False
        first = self._open()  # fail now, before the caller plans around this file
        self._kept: tuple[BinaryIO, bytes] | None = first if self.path == STDIN else None
        if self._kept is None:
            _close(first[0])

    def __repr__(self) -> str:
        kind = f"{self.format or 'empty'}{', gzip' if self.compressed else ''}"
        return f"CaptureReader({self.path!r}, {kind}, packets read={self.packets})"

    def _open(self) -> tuple[BinaryIO, bytes]:
        """The open stream (decompressing) and its first four bytes; sets format and compressed."""
        if self.path == STDIN:
            if self._stdin_read:
                raise CaptureError("-: standard input can be read only once")
            self._stdin_read = True
            fh: BinaryIO = _Stdin(sys.stdin.buffer)
        else:
            try:
                fh = open(self.path, "rb")
            except OSError as exc:
                raise CaptureError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
        if self.digest:
            fh = _Hashing(fh)
        try:
            head = fh.read(4)
            if head[:2] == GZIP_MAGIC:
                fh.seek(0)
                fh = _Gunzip(fh)
                self.compressed = True
                head = fh.read(4)
                if len(head) < 4 and fh.damage is not None:  # not even the format can be told
                    _close(fh)
                    raise CaptureError(f"{self.path}: cannot read ({fh.damage.problem})")
        except OSError as exc:
            _close(fh)
            raise CaptureError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if head in PCAP_MAGICS:
            self.format = "pcap"
        elif head == PCAPNG_MAGIC:
            self.format = "pcapng"
        elif not any(m.startswith(head) for m in (PCAPNG_MAGIC, *PCAP_MAGICS)):  # b"" included
            _close(fh)
            raise CaptureError(f"{self.path}: not a pcap or pcapng file (first bytes {head.hex(' ')})")
        return fh, head

    def __iter__(self) -> Iterator[RawPacket]:
        def packets(buf):
            for packet in (_read_pcap if self.format == "pcap" else _read_pcapng)(buf):
                self.packets += 1
                yield packet

        return self._pass(self.chunk_size, packets)

    def pcap_windows(self, window_bytes: int | None = None) -> Iterator["PcapWindow"]:
        """A classic pcap's records for a scanner of one's own (the compiled prep engine's), in
        windows of the stream: the same records, checks, counts and warnings as iterating.

        Each `PcapWindow` holds buffered bytes and where its first record starts; the scanner
        reads whole records from there and sets `stop` (where the last whole record it read
        ends) and `records` (how many). The reader then refills the window and checks the record
        the scanner stopped at: a damaged one ends the pass with the usual warning.
        """
        if self.format != "pcap":
            raise CaptureError(f"{self.path}: {'a ' + self.format if self.format else 'an empty'} file, not classic pcap")

        def windows(buf):
            f = _pcap_header(buf)
            while True:
                window = PcapWindow(buf.data, buf.pos, f)
                yield window
                self.packets += window.records
                buf.pos = window.stop
                if not _pcap_continue(buf, f):
                    break

        yield from self._pass(window_bytes or self.chunk_size, windows)

    def _pass(self, chunk_size: int, items) -> Iterator:
        """One pass over the file: `items(buffer)` yields what the caller wants and counts
        `self.packets`; damage ends the pass with a warning (or an error before any packet)."""
        self.packets = 0
        self.warnings = []
        fh, head = self._kept or self._open()
        self._kept = None
        buf = _Buffer(fh, head, chunk_size)
        failure: Exception | None = None
        try:
            if len(head) < 4:  # empty, or a magic cut short
                raise _Damage(0, "empty file" if not head else "file header cut short", cut=True)
            yield from items(buf)
            if not self.packets:
                raise _Damage(buf.offset, "no packets after the headers", cut=True)
        except (_Damage, OSError) as exc:
            failure = exc
        finally:
            self._finish(fh)
        self._settle(fh, failure, buf.offset)

    def _finish(self, fh) -> None:
        """Close the pass; with `digest`, hash what the pass left unread first (after damage)."""
        hashing = fh if isinstance(fh, _Hashing) else getattr(fh, "fileobj", None)
        if isinstance(hashing, _Hashing):
            try:
                self.sha256 = hashing.finish()
                self.stored_bytes = hashing._at
            except OSError:
                self.sha256 = None
        _close(fh)

    def _settle(self, fh, failure: Exception | None, offset: int) -> None:
        """The pass's one warning, if any: what stopped the records, or, when they merely ran
        out where a damaged gzip stream ended (or ended cleanly before it), the gzip damage."""
        if isinstance(failure, OSError):  # an I/O error
            failure = _Damage(offset, f"read error ({failure.strerror or failure})")
        broken = getattr(fh, "damage", None)
        if broken is not None and (failure is None or failure.cut):
            failure = broken
        if failure is not None:
            self._warn(failure.problem, failure.offset)

    def _warn(self, problem: str, offset: int) -> None:
        self.warnings.append(f"{self.path}: {problem} at offset {offset}; kept {self.packets} packets before it")


def read_packets(path: str | os.PathLike) -> Iterator[RawPacket]:
    """The packets of one capture (warnings are dropped; use `CaptureReader` to see them)."""
    return iter(CaptureReader(path))


def _close(fh: BinaryIO) -> None:
    inner = getattr(fh, "fileobj", None)  # the file a _Gunzip reads from
    fh.close()
    if inner is not None:
        inner.close()


_ZLIB_WORDS = {"incorrect data check": "CRC-32 mismatch", "incorrect length check": "length mismatch"}


class _Gunzip:
    """A gzip file decompressed incrementally, read like a file (`read(n)`).

    Concatenated members are read in turn and zero padding after a member is skipped, as gzip
    does. Damage (a cut, a bad header, deflate data, CRC or length, or bytes after the stream
    that are not gzip) ends the stream after the last byte that decompressed, and is kept in
    `damage` (offset: uncompressed bytes before it) for the reader's one warning. `gzip.GzipFile`
    raises instead, losing the whole read that hit the damage.
    """

    SLICE = 1 << 15  # compressed bytes per inflate call; a call that fails is redone byte by byte
    LIMIT = 1 << 20  # uncompressed bytes per inflate call at most (a small input may inflate 1000x)

    def __init__(self, fileobj: BinaryIO):
        self.fileobj = fileobj
        self.damage: _Damage | None = None
        self._member = None  # the current member's decompressor; None between members
        self._input = b""  # compressed bytes read and not yet inflated
        self._at = 0  # compressed offset of _input[0]
        self._pending = b""  # inflated bytes not yet returned
        self._inflated = 0  # uncompressed bytes inflated so far
        self._ended = False

    def read(self, n: int = -1) -> bytes:
        parts, size = [self._pending], len(self._pending)
        while (n < 0 or size < n) and not self._ended:
            piece = self._inflate()
            parts.append(piece)
            size += len(piece)
        data = b"".join(parts)
        self._pending = b""
        if 0 <= n < len(data):
            data, self._pending = data[:n], data[n:]
        return data

    def close(self) -> None:
        self._ended = True

    def _fill(self, n: int) -> bool:
        """At least n compressed bytes in `_input`; False when the file ends first."""
        while len(self._input) < n:
            more = self.fileobj.read(self.SLICE)
            if not more:
                return False
            self._input += more
        return True

    def _inflate(self) -> bytes:
        """Inflate the next slice of input: some bytes, maybe none; at the end, sets `_ended`."""
        if self._member is None:  # between members: zero padding, then a member or the end
            while True:
                if not self._fill(1):
                    self._ended = True
                    return b""
                stripped = self._input.lstrip(b"\0")
                self._at += len(self._input) - len(stripped)
                self._input = stripped
                if stripped:
                    break
            if not self._fill(2) or self._input[:2] != GZIP_MAGIC:
                return self._stop(f"data after the end of the gzip stream is not gzip (compressed byte {self._at})")
            self._member = zlib.decompressobj(31)  # 16 + 15: a gzip header and trailer, checked
        member = self._member
        if not self._fill(1):
            tail = member.flush()  # output that a size limit held back
            if member.eof:
                self._member = None
                self._inflated += len(tail)
                return tail
            return self._stop(f"gzip stream cut short (compressed byte {self._at})", tail)
        piece = self._input[: self.SLICE]
        before = member.copy()
        try:
            out = member.decompress(piece, self.LIMIT)
        except zlib.error:
            out, at, why = _salvage(before, piece)
            return self._stop(f"damaged gzip stream ({why}, compressed byte {self._at + at})", out)
        left = member.unused_data if member.eof else member.unconsumed_tail
        self._at += len(piece) - len(left)
        self._input = left + self._input[len(piece) :]
        if member.eof:
            self._member = None
        self._inflated += len(out)
        return out

    def _stop(self, problem: str, out: bytes = b"") -> bytes:
        self._inflated += len(out)
        self.damage = _Damage(self._inflated, problem)
        self._ended = True
        self._member = None
        return out


def _salvage(member, piece: bytes) -> tuple[bytes, int, str]:
    """A failed inflate call redone byte by byte from the decompressor's state before it: what
    inflated before the bad byte, the bad byte's index in `piece`, and zlib's words for it."""
    out = []
    for i in range(len(piece)):
        try:
            out.append(member.decompress(piece[i : i + 1]))
        except zlib.error as exc:
            why = str(exc).rpartition(": ")[2]
            return b"".join(out), i, _ZLIB_WORDS.get(why, why)
    return b"".join(out), len(piece), "inflate failed"  # the same bytes fail the same way: not reached


class PcapWindow:
    """Buffered bytes of a classic pcap from `start`, a record header there; see
    `CaptureReader.pcap_windows`. `format` says how to read the records."""

    __slots__ = ("data", "start", "format", "stop", "records")

    def __init__(self, data: bytes, start: int, format: "PcapFormat"):
        self.data, self.start, self.format = data, start, format
        self.stop, self.records = start, 0


class _Stdin:
    """Standard input read like a file: in chunks, never whole, and back to the start only while
    its first bytes are still held (the gzip check reads four bytes and goes back; a pipe cannot
    seek). Closing it leaves the process's standard input open."""

    KEEP = 64  # bytes held for going back

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self._start: bytes | None = b""  # every byte read so far, until more than KEEP were
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        ahead = self._start[self._pos :] if self._start is not None else b""
        data = ahead if n < 0 else ahead[:n]
        if n < 0 or len(data) < n:
            # A large read returns what the pipe holds now (at least a byte; b"" at the end): the
            # reader's buffer asks again, and packets of `tcpdump -w - |` are not held back until
            # a whole chunk arrived. A small read (a format check) waits for all its bytes.
            read1 = getattr(self.stream, "read1", None)
            if n > self.KEEP and read1 is not None:
                more = read1(n - len(data))
            else:
                more = self.stream.read(-1 if n < 0 else n - len(data))
            data += more
            if self._start is not None:
                self._start += more
                if len(self._start) > self.KEEP:
                    self._start = None
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0 or self._start is None:
            raise OSError(errno.ESPIPE, "standard input cannot go back")
        self._pos = 0
        return 0

    def close(self) -> None:
        pass


class _Hashing:
    """A raw file that feeds a SHA-256 with every byte read from it, in order.

    Reads of a megabyte or more are hashed by a thread of their own (hashlib lets go of the GIL
    over large buffers), off the path of the reading: a 400 MB prep spent 0.3 s of 3.3 s here.
    At most `_QUEUED` reads wait, so memory stays bounded; small files never start the thread."""

    _THREAD_FROM = 1 << 20  # bytes of one read that start the thread
    _QUEUED = 4

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self._sha = hashlib.sha256()
        self._at = 0
        self._queue = None  # reads waiting for the thread, once it runs
        self._thread = None

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self._feed(data)
        return data

    def _feed(self, data: bytes) -> None:
        self._at += len(data)
        if self._thread is None and len(data) >= self._THREAD_FROM:
            import queue
            import threading

            self._queue = queue.Queue(self._QUEUED)
            self._thread = threading.Thread(target=self._hash_queued, args=(self._queue, self._sha),
                                            name="trafficlens-sha256", daemon=True)
            self._thread.start()
        if self._thread is not None:
            self._queue.put(data)
        elif data:
            self._sha.update(data)

    @staticmethod
    def _hash_queued(waiting, sha) -> None:
        for data in iter(waiting.get, None):
            sha.update(data)

    def _drain(self) -> None:
        """Wait until every read so far is hashed; the thread ends."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None

    def seek(self, offset: int, whence: int = 0) -> int:
        # Only ever back to the start, before decompressing: what was hashed is read again.
        if offset != 0 or whence != 0:
            raise OSError("hashing file: seek to 0 only")
        self._drain()
        self._sha, self._at = hashlib.sha256(), 0
        return self.fh.seek(0)

    def finish(self) -> str:
        for block in iter(lambda: self.fh.read(1 << 20), b""):
            self._feed(block)
        self._drain()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._drain()
        self.fh.close()


class _Buffer:
    """A sliding window over the stream: `need(n)` makes data[pos:pos+n] available."""

    __slots__ = ("fh", "chunk", "data", "pos", "base")

    def __init__(self, fh: BinaryIO, head: bytes, chunk: int):
        self.fh = fh
        self.chunk = chunk
        self.data = head
        self.pos = 0
        self.base = 0  # stream offset of data[0]

    def need(self, n: int) -> bool:
        """True when n bytes from pos are buffered; False when the stream ends first."""
        while len(self.data) - self.pos < n:
            more = self.fh.read(max(self.chunk, n - (len(self.data) - self.pos)))
            if not more:
                return False
            self.base += self.pos
            self.data = self.data[self.pos :] + more
            self.pos = 0
        return True

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def left(self) -> int:
        return len(self.data) - self.pos


class PcapFormat(NamedTuple):
    """What a classic pcap's file header says, for the record loops."""

    order: str  # "<" or ">"
    scale: float  # seconds per tick of a record's fraction field
    snaplen: int
    linktype: int
    limit: int  # largest plausible captured length
    header: int  # record header bytes: 16, or 24 in the "modified" format
    record: Callable  # unpacks (seconds, fraction, captured length, length) at an offset


def _pcap_header(buf: _Buffer) -> PcapFormat:
    """A classic pcap's file header; leaves `buf` at the first record."""
    order, scale, header = PCAP_MAGICS[buf.data[:4]]
    if not buf.need(24):
        raise _Damage(0, "file header cut short", cut=True)
    snaplen, linktype = struct.unpack_from(order + "II", buf.data, 16)
    linktype &= 0xFFFF  # the upper bits carry FCS information
    limit = min(max(snaplen, MAX_RECORD), MAX_BLOCK)  # a garbage snap length must not let a record eat memory
    buf.pos = 24
    return PcapFormat(order, scale, snaplen, linktype, limit, header, struct.Struct(order + "IIII").unpack_from)


def _pcap_continue(buf: _Buffer, f: PcapFormat) -> bool:
    """Where a fast loop over whole records stopped: False at a clean end of file, True when the
    next record is whole in the buffer now (loop again); a damaged record raises `_Damage`."""
    if not buf.need(f.header):
        if buf.left():
            raise _Damage(buf.offset, "record header cut short by the end of file", cut=True)
        return False
    caplen, orig = f.record(buf.data, buf.pos)[2:]
    if caplen > f.limit:
        raise _Damage(buf.offset, f"record length {caplen} beyond the snap length {f.snaplen}")
    if caplen > orig != 0:
        raise _Damage(buf.offset, f"record length {caplen} beyond its length on the wire {orig}")
    if not buf.need(f.header + caplen):
        raise _Damage(buf.offset, f"record of {caplen} bytes cut short by the end of file", cut=True)
    return True


def _read_pcap(buf: _Buffer) -> Iterator[RawPacket]:
    f = _pcap_header(buf)
    scale, linktype, limit, header, record = f.scale, f.linktype, f.limit, f.header, f.record
    while True:
        data, pos = buf.data, buf.pos
        end = len(data)
        # Tight loop over the records already in the buffer; the checks are redone below.
        while pos + header <= end:
            sec, frac, caplen, orig = record(data, pos)
            start = pos + header
            stop = start + caplen
            # caplen > orig: out of sync, unless orig is 0 (never filled in by some writers)
            if caplen > limit or caplen > orig != 0 or stop > end:
                break
            yield _new(RawPacket, (sec + frac * scale, data[start:stop], orig, linktype))
            pos = stop
        buf.pos = pos
        if not _pcap_continue(buf, f):
            return


class _Interface(NamedTuple):
    linktype: int
    snaplen: int
    limit: int  # largest plausible captured length
    ticks: int  # timestamp ticks per second
    offset: int  # if_tsoffset: seconds added to every timestamp


def _interface(body: bytes, order: str) -> _Interface:
    """The fields of an Interface Description Block body that timestamps and lengths need."""
    linktype, _, snaplen = struct.unpack_from(order + "HHI", body, 0)
    ticks, offset = 1_000_000, 0
    p = 8
    while p + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, p)
        value = body[p + 4 : p + 4 + length]
        if code == 0 or len(value) < length:  # end of options, or an option cut short
            break
        if code == 9 and length >= 1:  # if_tsresol: a power of 10, or of 2 with the top bit
            ticks = 1 << (value[0] & 0x7F) if value[0] & 0x80 else 10 ** value[0]
        elif code == 14 and length == 8:
            offset = struct.unpack(order + "q", value)[0]
        p += 4 + length + (-length % 4)
    return _Interface(linktype, snaplen, min(max(snaplen, MAX_RECORD), MAX_BLOCK), ticks, offset)


def _read_pcapng(buf: _Buffer) -> Iterator[RawPacket]:
    interfaces: list[_Interface] = []
    last_ts = 0.0  # a simple packet block has no time of its own: it keeps the previous one
    order = "<"
    head = struct.Struct("<II").unpack_from
    u32 = struct.Struct("<I").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    while True:
        data, pos = buf.data, buf.pos
        end = len(data)
        while pos + 12 <= end:
            kind, length = head(data, pos)
            if kind == _SHB:  # a section header: its magic sets the byte order of the section
                if data[pos + 8 : pos + 12] not in _BYTE_ORDER:
                    raise _Damage(buf.base + pos, "section header with an unknown byte-order magic")
                order = _BYTE_ORDER[data[pos + 8 : pos + 12]]
                head = struct.Struct(order + "II").unpack_from
                u32 = struct.Struct(order + "I").unpack_from
                epb = struct.Struct(order + "IIIII").unpack_from
                kind, length = head(data, pos)
                if length < 28:
                    raise _Damage(buf.base + pos, f"section header length {length} too short")
                interfaces = []
            if length < 12 or length & 3 or length > MAX_BLOCK:
                raise _Damage(buf.base + pos, f"block length {length} invalid")
            stop = pos + length
            if stop > end:
                break  # refill, then come back to this block
            if u32(data, stop - 4)[0] != length:
                raise _Damage(buf.base + pos, f"block trailing length differs from its length {length}")
            if kind == 6 or kind == 2:  # enhanced packet block / obsolete packet block
                if length < 32:
                    raise _Damage(buf.base + pos, "packet block too short")
                iface, high, low, caplen, orig = epb(data, pos + 8)
                if kind == 2:  # a u16 interface id, then a u16 drop count
                    iface = iface & 0xFFFF if order == "<" else iface >> 16
                if iface >= len(interfaces):
                    raise _Damage(buf.base + pos, f"packet of undeclared interface {iface}")
                linktype, snaplen, limit, ticks, offset = interfaces[iface]
                if caplen > length - 32:
                    raise _Damage(buf.base + pos, f"captured length {caplen} beyond its block")
                if caplen > limit or caplen > orig != 0:
                    raise _Damage(buf.base + pos, f"captured length {caplen} beyond the snap length "
                                                   f"{snaplen} or the length on the wire {orig}")
                # int / int is correctly rounded: the nearest float to the exact time, even in ns
                last_ts = ((high << 32) | low) / ticks + offset
                yield _new(RawPacket, (last_ts, data[pos + 28 : pos + 28 + caplen], orig, linktype))
            elif kind == 3:  # simple packet block: interface 0, captured length implied
                if length < 16:
                    raise _Damage(buf.base + pos, "simple packet block too short")
                if not interfaces:
                    raise _Damage(buf.base + pos, "simple packet block before any interface")
                linktype, snaplen = interfaces[0][:2]
                orig = u32(data, pos + 8)[0]
                caplen = min(orig, snaplen or orig, length - 16)
                yield _new(RawPacket, (last_ts, data[pos + 12 : pos + 12 + caplen], orig, linktype))
            elif kind == 1:
                if length < 20:
                    raise _Damage(buf.base + pos, "interface description block too short")
                interfaces.append(_interface(data[pos + 8 : stop - 4], order))
            pos = stop  # every other block is skipped by its length
        buf.pos = pos
        if not buf.need(12):
            if buf.left():
                raise _Damage(buf.offset, "block header cut short by the end of file", cut=True)
            return
        data, pos = buf.data, buf.pos
        if data[pos : pos + 4] == PCAPNG_MAGIC:  # a new section may change the byte order
            if data[pos + 8 : pos + 12] not in _BYTE_ORDER:
                raise _Damage(buf.offset, "section header with an unknown byte-order magic")
            length = struct.unpack_from(_BYTE_ORDER[data[pos + 8 : pos + 12]] + "I", data, pos + 4)[0]
        else:
            length = head(data, pos)[1]
        if length < 12 or length & 3 or length > MAX_BLOCK:
            raise _Damage(buf.offset, f"block length {length} invalid")
        if not buf.need(length):
            raise _Damage(buf.offset, f"block of {length} bytes cut short by the end of file", cut=True)

"""What one upload may cost: its size once decompressed and its packet count, checked before any work.

A gzip body of a few megabytes can inflate to gigabytes of small packets; `check_upload` streams it
once (decompressing into a file beside it), counts the bytes and walks the record headers, and
stops at the first limit passed. Nothing is parsed beyond the record lengths, so a damaged file is
counted up to the damage at most: the reader that classifies it stops there too.

    >>> check_upload("upload", "upload.raw", max_bytes=512 << 20, max_packets=2_000_000)
    UploadSize(path='upload.raw', bytes=1048576, packets=8863)
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import BinaryIO, NamedTuple

from trafficlens.capture.formats import GZIP_MAGIC, PCAP_MAGICS, PCAPNG_MAGIC
from trafficlens.errors import TrafficlensError

_CHUNK = 1 << 20
_PACKET_BLOCKS = (2, 3, 6)  # pcapng: obsolete, simple and enhanced packet blocks
_SHB = 0x0A0D0D0A
_BYTE_ORDER = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}


class UploadTooLarge(TrafficlensError):
    """An upload over one of the serve limits (answered with 413)."""


class UploadSize(NamedTuple):
    path: str  # the file to classify: the upload itself, or its decompressed copy
    bytes: int  # after decompression
    packets: int  # records counted (an upper bound on what the reader yields)


def check_upload(path: str | os.PathLike, raw_path: str | os.PathLike, *, max_bytes: int,
                 max_packets: int) -> UploadSize:
    """Count the upload's bytes (decompressed) and packets; `UploadTooLarge` past either limit.

    A gzip upload is decompressed into `raw_path` on the way (deleting it is the caller's), so
    the classifier then reads plain records instead of inflating the stream a second time."""
    path, raw_path = os.fspath(path), os.fspath(raw_path)
    with open(path, "rb") as fh:
        compressed = fh.read(2) == GZIP_MAGIC
    counter = _RecordCounter(max_packets)
    size = 0
    src: BinaryIO = gzip.open(path, "rb") if compressed else open(path, "rb")
    out = open(raw_path, "wb") if compressed else None
    try:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"the upload inflates past {max_bytes >> 20} MiB, the limit "
                                     f"(--max-capture-mb)")
            if out is not None:
                out.write(chunk)
            counter.feed(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # damaged compression: the reader keeps what came before it, and so does the count
    finally:
        src.close()
        if out is not None:
            out.close()
    return UploadSize(raw_path if compressed else path, size, counter.packets)


class _RecordCounter:
    """Counts pcap records or pcapng packet blocks over a stream fed in chunks, by their lengths only."""

    def __init__(self, max_packets: int):
        self.max_packets = max_packets
        self.packets = 0
        self.format: str | None = None  # "pcap", "pcapng", or "" for neither (the reader says why)
        self.order = "<"
        self.record = 16  # bytes of a pcap record header
        self.tail = b""  # bytes of a record header split between chunks
        self.skip = 0  # bytes of the current record still to come

    def feed(self, chunk: bytes) -> None:
        if self.format == "":
            return
        if self.skip >= len(chunk):
            self.skip -= len(chunk)
            return
        data = self.tail + chunk[self.skip :] if self.tail else chunk[self.skip :]
        self.tail, self.skip = b"", 0
        if self.format is None:
            if len(data) < 24:
                self.tail = data
                return
            self.format = self._start(data)
            if not self.format:
                return
            data = data[24:] if self.format == "pcap" else data
        count = self._pcap if self.format == "pcap" else self._pcapng
        pos = count(data)
        if self.packets > self.max_packets:
            raise UploadTooLarge(f"the upload holds more than {self.max_packets} packets, the limit (--max-packets)")
        if pos > len(data):
            self.skip = pos - len(data)
        else:
            self.tail = data[pos:]

    def _start(self, head: bytes) -> str:
        if head[:4] in PCAP_MAGICS:
            self.order, _, self.record = PCAP_MAGICS[head[:4]]  # record header: 16, or 24 in modified pcap
            return "pcap"
        return "pcapng" if head[:4] == PCAPNG_MAGIC else ""

    def _pcap(self, data: bytes) -> int:
        """Counts whole-or-started records from 0; returns where the next record header starts."""
        caplen = struct.Struct(self.order + "I").unpack_from
        pos, end, n = 0, len(data), 0
        while pos + self.record <= end:
            pos += self.record + caplen(data, pos + 8)[0]
            n += 1
            if self.packets + n > self.max_packets:
                break
        self.packets += n
        return pos

    def _pcapng(self, data: bytes) -> int:
        pos, end, n = 0, len(data), 0
        head = struct.Struct(self.order + "II").unpack_from
        while pos + 12 <= end:
            kind, length = head(data, pos)
            if kind == _SHB:  # a section sets its byte order
                self.order = _BYTE_ORDER.get(data[pos + 8 : pos + 12], self.order)
                head = struct.Struct(self.order + "II").unpack_from
                length = head(data, pos)[1]
            if length < 12:  # the reader stops here as damage; so does the count
                self.format = ""
                break
            n += kind in _PACKET_BLOCKS
            pos += length
            if self.packets + n > self.max_packets:
                break
        self.packets += n
        return pos

"""Write classic pcap and pcapng files: for tests, samples and traffic generation."""

from __future__ import annotations

import gzip as _gzip
import os
import struct
from typing import BinaryIO


def _open(target: str | os.PathLike | BinaryIO, compress: bool) -> tuple[BinaryIO, bool]:
    if hasattr(target, "write"):
        return (_gzip.GzipFile(fileobj=target, mode="wb") if compress else target), compress
    raw = open(target, "wb")
    return (_gzip.GzipFile(fileobj=raw, mode="wb") if compress else raw), True


class _Writer:
    _fh: BinaryIO
    _owns: bool

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns:
            inner = getattr(self._fh, "fileobj", None)
            self._fh.close()
            if inner is not None and hasattr(self, "_raw_owned"):
                inner.close()
        else:
            self._fh.flush()


class PcapWriter(_Writer):
    """Classic pcap. `nanosecond` selects the a1b23c4d magic; `big_endian` the byte order."""

    def __init__(self, target, linktype: int = 1, snaplen: int = 262144, nanosecond: bool = False,
                 big_endian: bool = False, gzip: bool = False):
        self._fh, self._owns = _open(target, gzip)
        if gzip and not hasattr(target, "write"):
            self._raw_owned = True
        self._order = ">" if big_endian else "<"
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self.snaplen = snaplen
        self._fh.write(struct.pack(self._order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, data: bytes, ts: float, orig_len: int | None = None) -> None:
        ticks = round(ts * self._scale)
        seconds, fraction = divmod(ticks, self._scale)
        data = data[: self.snaplen]
        self._fh.write(struct.pack(self._order + "IIII", seconds, fraction, len(data),
                                   len(data) if orig_len is None else orig_len) + data)


class PcapngWriter(_Writer):
    """pcapng: one section, interfaces added with `add_interface`, packets as EPB (or SPB)."""

    def __init__(self, target, big_endian: bool = False, gzip: bool = False):
        self._fh, self._owns = _open(target, gzip)
        if gzip and not hasattr(target, "write"):
            self._raw_owned = True
        self._order = ">" if big_endian else "<"
        self._interfaces: list[tuple[int, int, int]] = []  # (linktype, snaplen, ticks per second)
        self._block(0x0A0D0D0A, struct.pack(self._order + "IHHq", 0x1A2B3C4D, 1, 0, -1))

    def _block(self, kind: int, body: bytes) -> None:
        body += b"\x00" * (-len(body) % 4)
        length = 12 + len(body)
        self._fh.write(struct.pack(self._order + "II", kind, length) + body + struct.pack(self._order + "I", length))

    def add_interface(self, linktype: int, snaplen: int = 262144, tsresol_exp10: int = 6) -> int:
        """Add an Interface Description Block; returns the interface id."""
        options = b""
        if tsresol_exp10 != 6:
            options = struct.pack(self._order + "HHB", 9, 1, tsresol_exp10) + b"\x00" * 3
            options += struct.pack(self._order + "HH", 0, 0)
        self._block(1, struct.pack(self._order + "HHI", linktype, 0, snaplen) + options)
        self._interfaces.append((linktype, snaplen, 10**tsresol_exp10))
        return len(self._interfaces) - 1

    def write(self, data: bytes, ts: float, interface: int = 0, orig_len: int | None = None, simple: bool = False) -> None:
        if not self._interfaces:
            self.add_interface(1)
        _, snaplen, scale = self._interfaces[interface]
        data = data[:snaplen]
        orig = len(data) if orig_len is None else orig_len
        if simple:
            if interface != 0:
                raise ValueError("a Simple Packet Block always belongs to interface 0")
            self._block(3, struct.pack(self._order + "I", orig) + data)
            return
        ticks = round(ts * scale)
        self._block(6, struct.pack(self._order + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig) + data)

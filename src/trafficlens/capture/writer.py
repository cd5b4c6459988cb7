"""Write classic pcap and pcapng files: for tests, samples and traffic generation.

    with PcapWriter("x.pcap", linktype=1) as w:
        w.write(frame, ts=1_600_000_000.5)
"""

from __future__ import annotations

import gzip as _gzip
import math
import os
import struct
from typing import BinaryIO


def _ticks(ts: float, per_second: int) -> tuple[int, int]:
    """(whole seconds, fraction in ticks) of a time, split before scaling so ns survive."""
    if not ts >= 0:
        raise ValueError(f"ts must be a time in seconds since the epoch (>= 0), got {ts}")
    seconds = math.floor(ts)
    fraction = round((ts - seconds) * per_second)
    if fraction == per_second:  # 0.9999999999 rounds up to the next second
        return seconds + 1, 0
    return seconds, fraction


class _Writer:
    """A file or file object, optionally gzip-compressed; closing flushes a caller's file object."""

    def __init__(self, path_or_fileobj: str | os.PathLike | BinaryIO, compress: bool):
        self._owned = not hasattr(path_or_fileobj, "write")
        self._raw: BinaryIO = open(path_or_fileobj, "wb") if self._owned else path_or_fileobj  # type: ignore[arg-type]
        self._fh: BinaryIO = _gzip.GzipFile(fileobj=self._raw, mode="wb") if compress else self._raw
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._fh is not self._raw:
            self._fh.close()  # writes the gzip trailer; leaves the file open
        if self._owned:
            self._raw.close()
        else:
            self._raw.flush()

    @staticmethod
    def _snap(data: bytes, snaplen: int, orig_len: int | None) -> tuple[bytes, int]:
        orig = len(data) if orig_len is None else orig_len
        if snaplen:
            data = data[:snaplen]
        if orig < len(data):
            raise ValueError(f"orig_len {orig} is shorter than the {len(data)} bytes captured")
        return data, orig


class PcapWriter(_Writer):
    """Classic pcap. `nanosecond` selects the a1b23c4d magic; `big_endian` the byte order;
    `modified` the "modified" pcap of Kuznetzov's patched libpcap (magic a1b2cd34, microseconds),
    whose 24-byte record headers add an interface index, a protocol and a packet type (written
    as 0 unless `write` is given them) and a pad byte."""

    def __init__(self, path_or_fileobj: str | os.PathLike | BinaryIO, linktype: int = 1, snaplen: int = 262144,
                 nanosecond: bool = False, big_endian: bool = False, gzip: bool = False, modified: bool = False):
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype must be a LINKTYPE_* value in 0..65535, got {linktype}")
        if not 0 < snaplen < 2**32:
            raise ValueError(f"snaplen must be a positive byte count, got {snaplen}")
        if modified and nanosecond:
            raise ValueError("the modified pcap format has microsecond timestamps only: pass nanosecond=False")
        super().__init__(path_or_fileobj, gzip)
        self.linktype = linktype
        self.snaplen = snaplen
        self.modified = modified
        self._order = ">" if big_endian else "<"
        self._per_second = 1_000_000_000 if nanosecond else 1_000_000
        magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self._fh.write(struct.pack(self._order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, data: bytes, ts: float, orig_len: int | None = None, ifindex: int = 0, protocol: int = 0,
              pkt_type: int = 0) -> None:
        """One record; `data` is cut to the snap length, `orig_len` defaults to its full length.
        `ifindex`, `protocol` and `pkt_type` go into a modified pcap's record header only."""
        data, orig = self._snap(data, self.snaplen, orig_len)
        seconds, fraction = _ticks(ts, self._per_second)
        header = struct.pack(self._order + "IIII", seconds, fraction, len(data), orig)
        if self.modified:
            header += struct.pack(self._order + "iHBx", ifindex, protocol, pkt_type)
        self._fh.write(header + data)


class PcapngWriter(_Writer):
    """pcapng: one section; interfaces added with `add_interface`, packets as EPBs (or SPBs).

    Several writers may write into one file object in turn: each starts a new section.
    """

    def __init__(self, path_or_fileobj: str | os.PathLike | BinaryIO, big_endian: bool = False, gzip: bool = False):
        super().__init__(path_or_fileobj, gzip)
        self._order = ">" if big_endian else "<"
        self._interfaces: list[tuple[int, int]] = []  # (snaplen, ticks per second)
        # byte-order magic, version 1.0, section length unknown (-1)
        self._block(0x0A0D0D0A, struct.pack(self._order + "IHHq", 0x1A2B3C4D, 1, 0, -1))

    def _block(self, kind: int, body: bytes) -> None:
        body += b"\x00" * (-len(body) % 4)
        length = 12 + len(body)
        self._fh.write(struct.pack(self._order + "II", kind, length) + body + struct.pack(self._order + "I", length))

    def add_interface(self, linktype: int, snaplen: int = 262144, tsresol_exp10: int = 6) -> int:
        """Add an Interface Description Block (timestamps in 10**-tsresol_exp10 s); its id."""
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype must be a LINKTYPE_* value in 0..65535, got {linktype}")
        if not 0 <= snaplen < 2**32:
            raise ValueError(f"snaplen must be a byte count (0: no limit), got {snaplen}")
        if not 0 <= tsresol_exp10 <= 9:  # 10**10 ticks per second overflow 64 bits before 2030
            raise ValueError(f"tsresol_exp10 must be 0..9 (6: microseconds, 9: nanoseconds), got {tsresol_exp10}")
        options = b""
        if tsresol_exp10 != 6:  # if_tsresol, padded to 4 bytes, then opt_endofopt
            options = struct.pack(self._order + "HHB3xHH", 9, 1, tsresol_exp10, 0, 0)
        self._block(1, struct.pack(self._order + "HHI", linktype, 0, snaplen) + options)
        self._interfaces.append((snaplen, 10**tsresol_exp10))
        return len(self._interfaces) - 1

    def write(self, data: bytes, ts: float, interface: int = 0, orig_len: int | None = None,
              simple: bool = False) -> None:
        """One packet as an Enhanced Packet Block, or with `simple` a Simple Packet Block
        (no time of its own; interface 0 only)."""
        if not 0 <= interface < len(self._interfaces):
            raise ValueError(f"interface {interface} was never added; add_interface() returned "
                             f"0..{len(self._interfaces) - 1}")
        snaplen, per_second = self._interfaces[interface]
        data, orig = self._snap(data, snaplen, orig_len)
        if simple:
            if interface != 0:
                raise ValueError("a Simple Packet Block always belongs to interface 0")
            self._block(3, struct.pack(self._order + "I", orig) + data)
            return
        seconds, fraction = _ticks(ts, per_second)
        ticks = seconds * per_second + fraction
        self._block(6, struct.pack(self._order + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF,
                                   len(data), orig) + data)

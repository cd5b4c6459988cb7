"""Build packets byte by byte, with correct lengths and checksums: tiny captures for tests.

    frame = ethernet(ipv4(tcp(b"hi", sport=1234, dport=80, flags="PA", src=a, dst=b), src=a, dst=b))
"""

from __future__ import annotations

import ipaddress
import struct

_TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}


def _addr(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else ipaddress.ip_address(value).packed


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp_flags(flags: str | int) -> int:
    return flags if isinstance(flags, int) else sum(_TCP_FLAGS[c] for c in flags)


def tcp_timestamp_option(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, timestamps: the 12-byte option block most stacks send."""
    return b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, tsecr)


def tcp(payload: bytes = b"", sport: int = 1234, dport: int = 80, seq: int = 0, ack: int = 0,
        flags: str | int = "A", window: int = 65535, options: bytes = b"",
        src: str | bytes = "10.0.0.1", dst: str | bytes = "10.0.0.2") -> bytes:
    """A TCP segment; `src`/`dst` only feed the checksum's pseudo-header."""
    options += b"\x00" * (-len(options) % 4)
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq % 2**32, ack % 2**32, offset << 4,
                         tcp_flags(flags), window, 0, 0) + options
    s, d = _addr(src), _addr(dst)
    csum = checksum(_pseudo(s, d, 6, len(header) + len(payload)) + header + payload)
    return header[:16] + struct.pack("!H", csum) + header[18:] + payload


def udp(payload: bytes = b"", sport: int = 1234, dport: int = 53,
        src: str | bytes = "10.0.0.1", dst: str | bytes = "10.0.0.2") -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(_pseudo(_addr(src), _addr(dst), 17, length) + header + payload) or 0xFFFF
    return header[:6] + struct.pack("!H", csum) + payload


def ipv4(payload: bytes, src: str | bytes = "10.0.0.1", dst: str | bytes = "10.0.0.2", proto: int = 6,
         ident: int = 0, ttl: int = 64, flags: int = 0, frag_offset: int = 0, options: bytes = b"",
         total_length: int | None = None) -> bytes:
    """An IPv4 datagram; `flags` 0x2 = DF, 0x1 = MF; `frag_offset` in 8-byte units."""
    options += b"\x00" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    length = total_length if total_length is not None else ihl * 4 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident & 0xFFFF,
                         (flags << 13) | frag_offset, ttl, proto, 0, _addr(src), _addr(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(payload: bytes, src: str | bytes = "fd00::1", dst: str | bytes = "fd00::2", next_header: int = 6,
         flow_label: int = 0, hop_limit: int = 64, ext_headers: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """An IPv6 packet; `ext_headers` are (type, body) pairs in order, `next_header` the upper layer.

    Bodies of hop-by-hop (0), routing (43) and destination options (60) are padded to 8-byte
    units; a fragment header (44) body is 6 bytes (offset/flags, identification).
    """
    chain = b""
    types = [t for t, _ in ext_headers] + [next_header]
    for i, (kind, body) in enumerate(ext_headers):
        if kind == 44:
            chain += struct.pack("!BB", types[i + 1], 0) + body[:6].ljust(6, b"\x00")
        elif kind == 51:  # AH: length in 4-byte units minus 2
            body += b"\x00" * (-(len(body) + 2) % 4)
            chain += struct.pack("!BB", types[i + 1], (len(body) + 2) // 4 - 2) + body
        else:
            body += b"\x00" * (-(len(body) + 2) % 8)
            chain += struct.pack("!BB", types[i + 1], (len(body) + 2) // 8 - 1) + body
    first = types[0]
    return struct.pack("!IHBB16s16s", (6 << 28) | (flow_label & 0xFFFFF), len(chain) + len(payload), first,
                       hop_limit, _addr(src), _addr(dst)) + chain + payload


def fragment_header(offset: int = 0, more: bool = False, ident: int = 1) -> tuple[int, bytes]:
    """An IPv6 fragment extension header as a (type, body) pair for `ipv6(ext_headers=...)`;
    `offset` in 8-byte units."""
    return 44, struct.pack("!HI", (offset << 3) | int(more), ident)


def hop_by_hop(options: bytes = b"") -> tuple[int, bytes]:
    """A hop-by-hop options header (padded with PadN by `ipv6`)."""
    return 0, options


def routing_header(segments_left: int = 0, routing_type: int = 0, data: bytes = bytes(4)) -> tuple[int, bytes]:
    return 43, bytes([routing_type, segments_left]) + data


def destination_options(options: bytes = b"") -> tuple[int, bytes]:
    return 60, options


def authentication_header(spi: int = 1, seq: int = 1, icv: bytes = bytes(12)) -> tuple[int, bytes]:
    """An IPsec AH (the ICV is not computed: decoders only walk past it)."""
    return 51, struct.pack("!HII", 0, spi, seq) + icv


def ethernet(payload: bytes, src_mac: bytes = b"\x02\x00\x00\x00\x00\x01", dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02",
             ethertype: int | None = None, vlans: tuple[int, ...] = (), qinq: bool = False) -> bytes:
    """An Ethernet II frame; `vlans` adds 802.1Q tags (outermost first, 0x88a8 for the outer one with qinq)."""
    if ethertype is None:
        ethertype = 0x86DD if payload[:1] and payload[0] >> 4 == 6 else 0x0800
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if qinq and i == 0 and len(vlans) > 1 else 0x8100
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    return dst_mac + src_mac + tags + struct.pack("!H", ethertype) + payload


def sll(payload: bytes, proto: int = 0x0800, packet_type: int = 0) -> bytes:
    """Linux cooked capture v1 header (16 bytes)."""
    return struct.pack("!HHH8sH", packet_type, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", proto) + payload


def sll2(payload: bytes, proto: int = 0x0800, ifindex: int = 2) -> bytes:
    """Linux cooked capture v2 header (20 bytes)."""
    return struct.pack("!HHIHBB8s", proto, 0, ifindex, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + payload


def null_loopback(payload: bytes, family: int = 2, big_endian: bool = False) -> bytes:
    """BSD NULL/LOOP header: the address family (2 IPv4; 24, 28 or 30 IPv6) in 4 bytes."""
    return struct.pack(">I" if big_endian else "<I", family) + payload


def ppp(payload: bytes, proto: int = 0x0021, hdlc: bool = True) -> bytes:
    """PPP with (or without) the ff 03 address/control bytes; 0x0021 IPv4, 0x0057 IPv6."""
    return (b"\xff\x03" if hdlc else b"") + struct.pack("!H", proto) + payload


def tcp_packet(payload: bytes = b"", src: str = "10.0.0.1", dst: str = "10.0.0.2", **tcp_fields) -> bytes:
    """IPv4 or IPv6 (by address) + TCP, no link header."""
    segment = tcp(payload, src=src, dst=dst, **tcp_fields)
    if ":" in src:
        return ipv6(segment, src=src, dst=dst, next_header=6)
    return ipv4(segment, src=src, dst=dst, proto=6)


def udp_packet(payload: bytes = b"", src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 1234,
               dport: int = 53) -> bytes:
    """IPv4 or IPv6 (by address) + UDP, no link header."""
    datagram = udp(payload, sport=sport, dport=dport, src=src, dst=dst)
    if ":" in src:
        return ipv6(datagram, src=src, dst=dst, next_header=17)
    return ipv4(datagram, src=src, dst=dst, proto=17)

"""Layer views of a packet, with masking applied before any byte reaches a tensor.

Views (Ge 2021, Chen 2023): `all` (a rebuilt Ethernet header with no MACs, then IP onward, so
captures of every link type line up), `network` (from the IP header), `transport` (from the
TCP/UDP header) and `payload` (application bytes). UDP headers are zero-padded from 8 to 20
bytes so that TCP and UDP payloads start at the same offset (Chen 2023).

Masks: `none`; `paper` zeroes IP addresses (MACs are never kept); `strict` also zeroes ports,
IPv4 id, IP/TCP/UDP checksums, TCP sequence and acknowledgement numbers, TCP timestamp option
values, the IPv6 flow label and the TLS ClientHello server name: fields that identify a
capture or a host rather than an application.
"""

from __future__ import annotations

from trafficlens.features.tls import mask_sni

UDP_PAD = bytes(12)
_NO_MACS = bytes(12)
_ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}


def _zero(buf: bytearray, start: int, stop: int) -> None:
    stop = min(stop, len(buf))
    if start < stop:
        buf[start:stop] = bytes(stop - start)


def _mask_ip(buf: bytearray, version: int, strict: bool) -> None:
    if version == 4:
        _zero(buf, 12, 20)  # addresses
        if strict:
            _zero(buf, 4, 6)  # identification
            _zero(buf, 10, 12)  # header checksum
    else:
        _zero(buf, 8, 40)  # addresses
        if strict and len(buf) >= 4:
            buf[1] &= 0xF0  # flow label: low 20 bits of the first word
            _zero(buf, 2, 4)


def _mask_transport(buf: bytearray, l4: int, l7: int, proto: int) -> None:
    _zero(buf, l4, l4 + 4)  # ports
    if proto == 17:
        _zero(buf, l4 + 6, l4 + 8)  # checksum
        return
    _zero(buf, l4 + 4, l4 + 12)  # sequence and acknowledgement numbers
    _zero(buf, l4 + 16, l4 + 18)  # checksum
    # Options: zero TCP timestamp values (kind 8, length 10), which count per host.
    p, end = l4 + 20, min(l7, len(buf))
    while p < end:
        kind = buf[p]
        if kind == 0:
            break
        if kind == 1:
            p += 1
            continue
        if p + 1 >= end or buf[p + 1] < 2:
            break
        length = buf[p + 1]
        if kind == 8 and length == 10:
            _zero(buf, p + 2, p + 10)
        p += length


def packet_view(packet, layer: str, mask: str) -> bytes:
    """The bytes of `packet` (a decoded `Packet`) that the given layer view shows, masked."""
    frame = packet.frame
    strict = mask == "strict"
    if layer == "payload":
        buf = bytearray(frame[packet.l7 : packet.end])
        if strict:
            mask_sni(buf)
        return bytes(buf)
    buf = bytearray(frame[packet.l3 : packet.end])
    l4 = packet.l4 - packet.l3
    l7 = packet.l7 - packet.l3
    if mask != "none":
        _mask_ip(buf, packet.version, strict)
        if strict:
            _mask_transport(buf, l4, l7, packet.proto)
            if l7 < len(buf):
                mask_sni(buf, l7)
    if packet.proto == 17:
        buf[l4 + 8 : l4 + 8] = UDP_PAD
    if layer == "transport":
        return bytes(buf[l4:])
    if layer == "all":
        return _NO_MACS + _ETHERTYPE[packet.version] + bytes(buf)
    return bytes(buf)


def view_offsets(packet, layer: str) -> tuple[int, int]:
    """(transport, payload) offsets within the view, or -1 where the view starts later.

    Used to map tensor positions back to protocol fields in explanations.
    """
    pad = 12 if packet.proto == 17 else 0
    l4 = packet.l4 - packet.l3
    l7 = packet.l7 - packet.l3 + pad
    if layer == "payload":
        return -1, 0
    if layer == "transport":
        return 0, l7 - l4
    base = 14 if layer == "all" else 0
    return base + l4, base + l7

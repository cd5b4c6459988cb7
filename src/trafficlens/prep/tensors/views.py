"""Layer views of a packet, with masking applied before any byte reaches a tensor.

Views (Ge 2021, Chen 2023): `all` (a rebuilt Ethernet header with no MACs, then IP onward, so
captures of every link type line up), `network` (from the IP header), `transport` (from the
TCP/UDP header) and `payload` (application bytes). UDP headers are zero-padded from 8 to 20
bytes so that TCP and UDP payloads start at the same offset (Chen 2023).

Masks: `none`; `paper` zeroes IP addresses (MACs are never kept); `strict` also zeroes ports,
IPv4 id, IP/TCP/UDP checksums, TCP sequence and acknowledgement numbers, TCP timestamp option
values, the IPv6 flow label, the TLS ClientHello server name, the TLS hellos' random, session
id and key_share values, TLS session tickets and pre-shared-key values, and QUIC connection IDs
and Initial tokens: fields that identify a capture or a host rather than an application, or
random values that make twin sessions look different (`mask_version` 3, see
docs/dataset-format.md). A packet is masked here on its own; what
needs the session (a hello cut across TCP segments, the length of a QUIC short header's
connection ID) is done by the session (`Session.ordered_views`, `SessionAssembler`).
"""

from __future__ import annotations

from trafficlens.prep.tensors.quic import mask_quic
from trafficlens.prep.tensors.tls import HANDSHAKE, mask_hello

UDP_PAD = bytes(12)
_NO_MACS = bytes(12)
_ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}


_Z2, _Z8, _Z10, _Z12, _Z32 = bytes(2), bytes(8), bytes(10), bytes(12), bytes(32)


def _mask_tcp_timestamps(buf: bytearray, p: int, end: int) -> None:
    """Zero TCP timestamp option values (kind 8, length 10), which count per host."""
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
        if kind == 8 and length == 10 and p + 10 <= end:
            buf[p + 2 : p + 10] = _Z8
        p += length


def _mask_payload(buf: bytearray, l7: int, proto: int, quic_dcid: int) -> None:
    """The strict mask of an application payload at `buf[l7:]`: TLS hellos, QUIC headers."""
    if buf[l7] == HANDSHAKE:
        mask_hello(buf, l7)
    elif proto == 17:
        mask_quic(buf, l7, len(buf), quic_dcid)


def packet_view(packet, layer: str, mask: str, quic_dcid: int = -1) -> bytes:
    """The bytes of `packet` (a decoded `Packet`) that the given layer view shows, masked.

    `quic_dcid`: the length of a QUIC short header's destination connection ID in this
    direction when the session has learnt it (-1: unknown, left). Runs for the first packets of
    every session, so it assigns whole header slices at once; `decode` guarantees the IP and
    TCP/UDP headers are captured in full.
    """
    frame = packet.frame
    strict = mask == "strict"
    if layer == "payload":
        if strict and packet.l7 < packet.end and (packet.proto == 17 or frame[packet.l7] == HANDSHAKE):
            buf = bytearray(frame[packet.l7 : packet.end])
            _mask_payload(buf, 0, packet.proto, quic_dcid)
            return bytes(buf)
        return frame[packet.l7 : packet.end]
    buf = bytearray(frame[packet.l3 : packet.end])
    l4 = packet.l4 - packet.l3
    l7 = packet.l7 - packet.l3
    if mask != "none":
        if packet.version == 4:
            if strict:
                buf[4:6] = _Z2  # identification
                buf[10:20] = _Z10  # header checksum and addresses
            else:
                buf[12:20] = _Z8
        else:
            buf[8:40] = _Z32  # addresses
            if strict:
                buf[1] &= 0xF0  # flow label: low 20 bits of the first word
                buf[2:4] = _Z2
        if strict:
            if packet.proto == 6:
                buf[l4 : l4 + 12] = _Z12  # ports, sequence and acknowledgement numbers
                buf[l4 + 16 : l4 + 18] = _Z2  # checksum
                if l7 > l4 + 20:
                    _mask_tcp_timestamps(buf, l4 + 20, l7)
            else:
                buf[l4 : l4 + 4] = bytes(4)  # ports
                buf[l4 + 6 : l4 + 8] = _Z2  # checksum
            if l7 < len(buf):
                _mask_payload(buf, l7, packet.proto, quic_dcid)
    if packet.proto == 17:
        buf[l4 + 8 : l4 + 8] = UDP_PAD
    if layer == "transport":
        return bytes(buf[l4:])
    if layer == "all":
        return _NO_MACS + _ETHERTYPE[packet.version] + buf
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

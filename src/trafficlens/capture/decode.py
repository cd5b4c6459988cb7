"""Decode a captured frame down to TCP/UDP: offsets and the few fields sessions need.

This runs once per packet, so it returns offsets into the frame instead of objects, and a
short reason string for packets that are counted and skipped:
`non_ip`, `other_protocol`, `ip_fragment` (not the first fragment), `malformed`,
`truncated` (captured too short for the headers) and `unsupported_link`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from trafficlens.capture import linktypes as lt
from trafficlens.capture.reader import RawPacket

_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_MAX_VLAN_DEPTH = 4
_MAX_IPV6_EXTENSIONS = 8
_PORTS_SEQ_ACK = struct.Struct("!HHII").unpack_from
_PORTS = struct.Struct("!HH").unpack_from
_BSD_INET6 = (24, 28, 30)  # AF_INET6 on NetBSD/OpenBSD, FreeBSD, macOS


class Packet(NamedTuple):
    ts: float
    frame: bytes  # the captured frame as read
    linktype: int
    l3: int  # offset of the IP header
    l4: int  # offset of the TCP/UDP header
    l7: int  # offset of the application payload
    end: int  # one past the datagram's last captured byte (link padding excluded)
    version: int  # 4 or 6
    proto: int  # 6 TCP or 17 UDP
    src: bytes  # 4 or 16 address bytes
    dst: bytes
    sport: int
    dport: int
    flags: int  # TCP flags byte (0 for UDP)
    seq: int  # TCP sequence number (0 for UDP)
    ack: int  # TCP acknowledgement number (0 for UDP)
    payload_len: int  # application payload length per the headers (true length even when snapped)
    ip_len: int  # datagram length on the wire per its header
    fragmented: bool  # first fragment of a fragmented datagram


def _link(data: bytes, linktype: int) -> tuple[int, int] | str:
    """(offset of the IP header, IP version or 0 for 'read the nibble') or a skip reason."""
    n = len(data)
    if linktype == lt.ETHERNET:
        if n < 14:
            return "truncated"
        ethertype = (data[12] << 8) | data[13]
        off = 14
        depth = 0
        while ethertype in _VLAN_TPIDS:
            if depth == _MAX_VLAN_DEPTH or n < off + 4:
                return "truncated" if n < off + 4 else "malformed"
            ethertype = (data[off + 2] << 8) | data[off + 3]
            off += 4
            depth += 1
        if ethertype == 0x0800:
            return off, 4
        if ethertype == 0x86DD:
            return off, 6
        return "non_ip"
    if linktype in lt.RAW_IP:
        return 0, 4 if linktype == lt.IPV4 else (6 if linktype == lt.IPV6 else 0)
    if linktype == lt.LINUX_SLL:
        if n < 16:
            return "truncated"
        proto = (data[14] << 8) | data[15]
        return (16, 4) if proto == 0x0800 else ((16, 6) if proto == 0x86DD else "non_ip")
    if linktype == lt.LINUX_SLL2:
        if n < 20:
            return "truncated"
        proto = (data[0] << 8) | data[1]
        return (20, 4) if proto == 0x0800 else ((20, 6) if proto == 0x86DD else "non_ip")
    if linktype in (lt.NULL, lt.LOOP):
        if n < 4:
            return "truncated"
        little = int.from_bytes(data[:4], "little")
        family = little if little < 256 else int.from_bytes(data[:4], "big")
        if family == 2:
            return 4, 4
        if family in _BSD_INET6:
            return 4, 6
        return "non_ip"
    if linktype in (lt.PPP, lt.PPP_HDLC):
        off = 2 if data[:2] == b"\xff\x03" else 0
        if n < off + 2:
            return "truncated"
        proto = (data[off] << 8) | data[off + 1]
        return (off + 2, 4) if proto == 0x0021 else ((off + 2, 6) if proto == 0x0057 else "non_ip")
    return "unsupported_link"


def decode(raw: RawPacket) -> Packet | str:
    """A `Packet` for a TCP or UDP packet, else the reason it is skipped."""
    data = raw.data
    link = _link(data, raw.linktype)
    if type(link) is str:
        return link
    off, version = link
    n = len(data)
    if n <= off:
        return "truncated"
    nibble = data[off] >> 4
    if version == 0:
        version = nibble
    if nibble != version:
        return "malformed" if nibble else "truncated"
    wire = max(raw.orig_len, n)  # bytes the frame had on the wire
    fragmented = False
    if version == 4:
        if n < off + 20:
            return "truncated"
        ihl = (data[off] & 0x0F) * 4
        if ihl < 20:
            return "malformed"
        total = (data[off + 2] << 8) | data[off + 3]
        if total == 0:  # segmentation offload: the length was never filled in
            total = wire - off
        if total < ihl or total > wire - off:
            return "malformed"
        frag = (data[off + 6] << 8) | data[off + 7]
        if frag & 0x1FFF:
            return "ip_fragment"
        fragmented = bool(frag & 0x2000)
        proto = data[off + 9]
        src = data[off + 12 : off + 16]
        dst = data[off + 16 : off + 20]
        l4 = off + ihl
    elif version == 6:
        if n < off + 40:
            return "truncated"
        total = 40 + ((data[off + 4] << 8) | data[off + 5])
        if total == 40 and wire - off > 40:  # jumbogram or offload: trust the frame
            total = wire - off
        if total > wire - off:
            return "malformed"
        proto = data[off + 6]
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        l4 = off + 40
        for _ in range(_MAX_IPV6_EXTENSIONS):
            if proto in (0, 43, 60):  # hop-by-hop, routing, destination options
                if n < l4 + 2:
                    return "truncated"
                proto, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
            elif proto == 44:  # fragment
                if n < l4 + 8:
                    return "truncated"
                if ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8:
                    return "ip_fragment"
                fragmented = bool(data[l4 + 3] & 1)
                proto, l4 = data[l4], l4 + 8
            elif proto == 51:  # authentication header
                if n < l4 + 2:
                    return "truncated"
                proto, l4 = data[l4], l4 + (data[l4 + 1] + 2) * 4
            else:
                break
        if l4 > off + total:
            return "malformed"
    else:
        return "malformed"

    end = min(n, off + total)
    if proto == 6:
        if end < l4 + 20:
            return "truncated"
        doff = (data[l4 + 12] >> 4) * 4
        if doff < 20:
            return "malformed"
        l7 = l4 + doff
        if l7 > off + total:
            return "malformed"
        if l7 > end:
            return "truncated"
        sport, dport, seq, ack = _PORTS_SEQ_ACK(data, l4)
        flags = data[l4 + 13]
    elif proto == 17:
        l7 = l4 + 8
        if l7 > off + total:
            return "malformed"
        if l7 > end:
            return "truncated"
        sport, dport = _PORTS(data, l4)
        flags = seq = ack = 0
    else:
        return "other_protocol"
    return Packet(raw.ts, data, raw.linktype, off, l4, l7, end, version, proto, src, dst, sport, dport,
                  flags, seq, ack, off + total - l7, total, fragmented)

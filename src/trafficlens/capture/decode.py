"""Decode a captured frame down to TCP/UDP: offsets and the few fields sessions need.

This runs once per packet, so it returns offsets into the frame instead of objects, and a
short reason string for packets that are counted and skipped:

- `non_ip`: ARP, LLC, VLAN-tagged non-IP, ...
- `other_protocol`: IP but not TCP/UDP (ICMP, ESP, tunnels such as IP-in-IP and GRE)
- `ip_fragment`: a fragment other than the first
- `malformed`: the headers contradict themselves (version, header length, lengths)
- `truncated`: captured too short to hold the IP and TCP/UDP headers
- `unsupported_link`: a link type trafficlens does not decode

    >>> p = decode(raw)
    >>> if type(p) is not str: payload = p.frame[p.l7 : p.end]
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from trafficlens.capture import linktypes as lt
from trafficlens.capture.reader import RawPacket

_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_MAX_VLAN_DEPTH = 4
_MAX_IPV6_EXTENSIONS = 8
_IPV6_OPTIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_INET6_FAMILIES = (10, 23, 24, 28, 30)  # AF_INET6 on Linux, Windows, NetBSD/OpenBSD, FreeBSD, macOS
# One unpack per header is cheaper than indexing bytes field by field.
_IPV4 = struct.Struct("!BxHxxHxB2x4s4s").unpack_from  # ver/ihl, total, frag, proto, src, dst
_IPV6 = struct.Struct("!4xHB1x16s16s").unpack_from  # payload length, next header, src, dst
_TCP = struct.Struct("!HHIIBB").unpack_from  # ports, seq, ack, data offset, flags
_UDP = struct.Struct("!HHH").unpack_from  # ports, length
_ETH_IPV4_TCP = struct.Struct("!2xH2xH2x2x4s4sHHIIBB").unpack_from  # from the IPv4 header on
_new = tuple.__new__  # builds a Packet without the NamedTuple's Python-level __new__


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
    payload_len: int  # application payload length per the headers (true length even when snapped;
    #                   for a first UDP fragment, the whole datagram's per the UDP length)
    ip_len: int  # datagram length on the wire per its header
    fragmented: bool  # first fragment of a fragmented datagram


def _ethertype(kind: int, off: int) -> tuple[int, int] | str:
    return (off, 4) if kind == 0x0800 else ((off, 6) if kind == 0x86DD else "non_ip")


def _ethernet(data: bytes) -> tuple[int, int] | str:
    n = len(data)
    if n < 14:
        return "truncated"
    kind = (data[12] << 8) | data[13]
    off = 14
    depth = 0
    while kind in _VLAN_TPIDS:
        if depth == _MAX_VLAN_DEPTH:
            return "malformed"
        if n < off + 4:
            return "truncated"
        kind = (data[off + 2] << 8) | data[off + 3]
        off += 4
        depth += 1
    if kind == 0x8864:  # PPPoE session: 6-byte header, then a PPP protocol number
        if n < off + 8:
            return "truncated"
        return _ppp_protocol((data[off + 6] << 8) | data[off + 7], off + 8)
    return _ethertype(kind, off)


def _ppp_protocol(proto: int, off: int) -> tuple[int, int] | str:
    return (off, 4) if proto == 0x0021 else ((off, 6) if proto == 0x0057 else "non_ip")


def _ppp(data: bytes) -> tuple[int, int] | str:
    if len(data) < 4:
        return "truncated"
    if data[0] in (0x0F, 0x8F) and data[1] == 0:  # Cisco HDLC in a PPP capture (seen in the wild)
        return _ethertype((data[2] << 8) | data[3], 4)
    off = 2 if data[0] == 0xFF and data[1] == 0x03 else 0  # address/control bytes are optional
    if data[off] & 1:  # protocol-field compression: one byte
        return _ppp_protocol(data[off], off + 1)
    return _ppp_protocol((data[off] << 8) | data[off + 1], off + 2)


def _link(data: bytes, linktype: int) -> tuple[int, int] | str:
    """(offset of the IP header, IP version, or 0 to read it from the header) or a skip reason."""
    if linktype == lt.ETHERNET:
        return _ethernet(data)
    if linktype in lt.RAW_IP:
        return 0, 4 if linktype == lt.IPV4 else (6 if linktype == lt.IPV6 else 0)
    if linktype == lt.LINUX_SLL:
        if len(data) < 16:
            return "truncated"
        return _ethertype((data[14] << 8) | data[15], 16)
    if linktype == lt.LINUX_SLL2:
        if len(data) < 20:
            return "truncated"
        return _ethertype((data[0] << 8) | data[1], 20)
    if linktype == lt.NULL or linktype == lt.LOOP:
        if len(data) < 4:
            return "truncated"
        # The family is in the writing host's byte order: a small number read one way or the other.
        family = int.from_bytes(data[:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(data[:4], "big")
        return (4, 4) if family == 2 else ((4, 6) if family in _INET6_FAMILIES else "non_ip")
    if linktype == lt.PPP or linktype == lt.PPP_HDLC:
        return _ppp(data)
    if linktype == lt.C_HDLC:
        if len(data) < 4:
            return "truncated"
        return _ethertype((data[2] << 8) | data[3], 4)
    return "unsupported_link"


def decode(raw: RawPacket) -> Packet | str:
    """A `Packet` for a TCP or UDP packet, else the reason it is skipped. Never raises."""
    data = raw[1]
    linktype = raw[3]
    n = len(data)
    if linktype == 1 and n >= 34 and data[12] == 8 and data[13] == 0:  # Ethernet + IPv4: most traffic
        if n >= 54 and data[14] == 0x45 and data[23] == 6:
            # No IP options, TCP: one unpack for both headers (10% faster). Anything unusual falls
            # through to the general path, which gives the same answer or the reason to skip.
            total, frag, src, dst, sport, dport, seq, ack, doff, flags = _ETH_IPV4_TCP(data, 14)
            wire = raw[2]
            wire = (wire if wire > n else n) - 14
            if total == 0:
                total = wire
            doff = (doff >> 4) << 2
            ip_end = 14 + total
            if not frag & 0x1FFF and 40 <= total <= wire and 20 <= doff <= total - 20 and 34 + doff <= n:
                return _new(Packet, (raw[0], data, 1, 14, 34, 34 + doff, ip_end if ip_end < n else n, 4, 6, src,
                                     dst, sport, dport, flags, seq, ack, total - 20 - doff, total, frag & 0x2000 != 0))
        off, version = 14, 4
    else:
        link = _link(data, linktype)
        if type(link) is str:
            return link
        off, version = link
        if n <= off:
            return "truncated"
        if version == 0:
            version = data[off] >> 4
    wire = raw[2]  # bytes from the IP header on, on the wire (never fewer than were captured)
    wire = (wire if wire > n else n) - off
    ip = _ipv4(data, off, wire) if version == 4 else (_ipv6(data, off, wire) if version == 6 else "malformed")
    if type(ip) is str:
        return ip
    l4, total, proto, src, dst, fragmented = ip
    ip_end = off + total
    l7 = _transport(data, l4, ip_end, proto, fragmented)
    if type(l7) is str:
        return l7
    l7, sport, dport, flags, seq, ack, payload_len = l7
    return _new(Packet, (raw[0], data, linktype, off, l4, l7, ip_end if ip_end < n else n, version, proto, src, dst,
                         sport, dport, flags, seq, ack, payload_len, total, fragmented))


def _ipv4(data: bytes, off: int, wire: int):
    """(l4, total, proto, src, dst, first fragment) of an IPv4 header at `off`, or why to skip it."""
    if len(data) < off + 20:
        return "truncated"
    vihl, total, frag, proto, src, dst = _IPV4(data, off)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20:
        return "malformed"
    if total == 0:  # segmentation offload: the length was never filled in
        total = wire
    if total < ihl or total > wire:
        return "malformed"
    if frag & 0x1FFF:
        return "ip_fragment"
    return off + ihl, total, proto, src, dst, frag & 0x2000 != 0


def _ipv6(data: bytes, off: int, wire: int):
    """`_ipv4` for IPv6, through its extension headers."""
    n = len(data)
    if n < off + 40:
        return "truncated"
    plen, proto, src, dst = _IPV6(data, off)
    if data[off] >> 4 != 6:
        return "malformed"
    total = 40 + plen
    if plen == 0 and wire > 40:  # jumbogram or offload: trust the frame
        total = wire
    if total > wire:
        return "malformed"
    l4 = off + 40
    fragmented = False
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if proto in _IPV6_OPTIONS:
            if n < l4 + 2:
                return "truncated"
            proto, l4 = data[l4], l4 + ((data[l4 + 1] + 1) << 3)
        elif proto == 44:  # fragment: offset in the upper 13 bits, M flag in the lowest
            if n < l4 + 8:
                return "truncated"
            if ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8:
                return "ip_fragment"
            fragmented = data[l4 + 3] & 1 == 1
            proto, l4 = data[l4], l4 + 8
        elif proto == 51:  # authentication header: length in 4-byte units, minus 2
            if n < l4 + 2:
                return "truncated"
            proto, l4 = data[l4], l4 + ((data[l4 + 1] + 2) << 2)
        else:
            break
    if l4 > off + total:
        return "malformed"
    return l4, total, proto, src, dst, fragmented


def _transport(data: bytes, l4: int, ip_end: int, proto: int, fragmented: bool):
    """(l7, sport, dport, flags, seq, ack, payload length) of a TCP or UDP header, or why to skip it."""
    n = len(data)
    if proto == 6:
        if ip_end < l4 + 20:
            return "malformed"
        if n < l4 + 20:
            return "truncated"
        sport, dport, seq, ack, doff, flags = _TCP(data, l4)
        l7 = l4 + ((doff >> 4) << 2)
        if l7 < l4 + 20 or l7 > ip_end:
            return "malformed"
        if l7 > n:
            return "truncated"
        return l7, sport, dport, flags, seq, ack, ip_end - l7
    if proto == 17:
        if ip_end < l4 + 8:
            return "malformed"
        if n < l4 + 8:
            return "truncated"
        sport, dport, length = _UDP(data, l4)
        l7 = l4 + 8
        payload_len = ip_end - l7
        if length:  # 0: jumbogram or offload, the IP length stands
            # A first fragment's UDP length covers the whole datagram, beyond this fragment.
            if length < 8 or (length - 8 > payload_len and not fragmented):
                return "malformed"
            payload_len = length - 8
        return l7, sport, dport, 0, 0, 0, payload_len
    return "other_protocol"

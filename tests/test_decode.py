"""decode(): link types, VLANs, IPv4 options and fragments, IPv6 extension headers, lengths."""

from __future__ import annotations

import struct

import pytest

from trafficlens.capture import CaptureReader, PcapngWriter, PcapWriter, RawPacket, build, decode
from trafficlens.capture import linktypes as lt

A, B = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8::beef"
PAYLOAD = b"hello, world"


def tcp4(payload=PAYLOAD, **ip) -> bytes:
    segment = build.tcp(payload, sport=1111, dport=443, seq=7, ack=9, flags="PA", src=A, dst=B)
    return build.ipv4(segment, src=A, dst=B, proto=6, **ip)


def tcp6(payload=PAYLOAD, ext_headers=()) -> bytes:
    segment = build.tcp(payload, sport=1111, dport=443, seq=7, ack=9, flags="PA", src=A6, dst=B6)
    return build.ipv6(segment, src=A6, dst=B6, next_header=6, ext_headers=ext_headers)


def raw(frame: bytes, linktype: int = lt.RAW, orig_len: int | None = None) -> RawPacket:
    return RawPacket(1.5, frame, len(frame) if orig_len is None else orig_len, linktype)


def framed(linktype: int, ip: bytes, big_endian: bool = False) -> bytes:
    """`ip` under the link header of `linktype`."""
    v6 = ip[0] >> 4 == 6
    proto = 0x86DD if v6 else 0x0800
    return {
        lt.ETHERNET: lambda: build.ethernet(ip),
        lt.LINUX_SLL: lambda: build.sll(ip, proto=proto),
        lt.LINUX_SLL2: lambda: build.sll2(ip, proto=proto),
        lt.NULL: lambda: build.null_loopback(ip, family=30 if v6 else 2, big_endian=big_endian),
        lt.LOOP: lambda: build.null_loopback(ip, family=24 if v6 else 2, big_endian=True),
        lt.PPP: lambda: build.ppp(ip, proto=0x0057 if v6 else 0x0021),
        lt.PPP_HDLC: lambda: build.ppp(ip, proto=0x0057 if v6 else 0x0021, hdlc=False),
        lt.C_HDLC: lambda: b"\x0f\x00" + struct.pack("!H", proto) + ip,
    }.get(linktype, lambda: ip)()


def check(p, ip: bytes, payload: bytes = PAYLOAD) -> None:
    assert not isinstance(p, str), p
    assert p.frame[p.l3 : p.end] == ip
    assert p.frame[p.l7 : p.end] == payload and p.payload_len == len(payload) and p.ip_len == len(ip)
    assert (p.proto, p.sport, p.dport, p.seq, p.ack, p.flags, p.fragmented) == (6, 1111, 443, 7, 9, 0x18, False)
    assert p.l4 == p.l7 - 20


LINKS = [lt.ETHERNET, lt.LINUX_SLL, lt.LINUX_SLL2, lt.RAW, lt.RAW_LEGACY_12, lt.RAW_LEGACY_14, lt.IPV4, lt.IPV6,
         lt.NULL, lt.LOOP, lt.PPP, lt.PPP_HDLC, lt.C_HDLC]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("linktype", LINKS)
def test_every_link_type_in_both_formats_and_byte_orders(tmp_path, fmt, big_endian, linktype):
    ips = [tcp6()] if linktype == lt.IPV6 else ([tcp4()] if linktype == lt.IPV4 else [tcp4(), tcp6()])
    path = tmp_path / "x.cap"
    with (PcapWriter(path, linktype=linktype, big_endian=big_endian) if fmt == "pcap"
          else PcapngWriter(path, big_endian=big_endian)) as w:
        if fmt == "pcapng":
            w.add_interface(linktype)
        for ip in ips:
            w.write(framed(linktype, ip, big_endian), 1.5)
    packets = [decode(r) for r in CaptureReader(path)]
    for p, ip in zip(packets, ips, strict=True):
        check(p, ip)
        assert p.linktype == linktype and p.ts == 1.5
        assert p.version == ip[0] >> 4 and len(p.src) == len(p.dst) == (4 if p.version == 4 else 16)
    assert packets[0].src == bytes([192, 0, 2, 1]) or packets[0].src == bytes.fromhex("20010db8" + "00" * 11 + "01")


@pytest.mark.parametrize("family", [2, 10, 23, 24, 28, 30])
@pytest.mark.parametrize("big_endian", [False, True])
def test_loopback_families_in_either_byte_order(family, big_endian):
    ip = tcp4() if family == 2 else tcp6()
    for linktype in (lt.NULL, lt.LOOP):
        check(decode(raw(build.null_loopback(ip, family, big_endian), linktype)), ip)
    assert decode(raw(build.null_loopback(ip, 7, big_endian), lt.NULL)) == "non_ip"


def test_ppp_variants():
    ip = tcp4()
    check(decode(raw(b"\x21" + ip, lt.PPP)), ip)  # protocol-field compression
    check(decode(raw(b"\xff\x03\x57" + tcp6(), lt.PPP)), tcp6())
    check(decode(raw(b"\x8f\x00\x08\x00" + ip, lt.PPP)), ip)  # Cisco HDLC framing in a PPP capture
    assert decode(raw(build.ppp(bytes(30), proto=0xC021), lt.PPP)) == "non_ip"  # LCP
    assert decode(raw(b"\xff\x03", lt.PPP)) == "truncated"
    assert decode(raw(b"\x0f\x00\x80\x35" + bytes(28), lt.C_HDLC)) == "non_ip"


def test_vlan_qinq_and_their_depth_limit():
    ip = tcp4()
    for frame in (build.ethernet(ip, vlans=(10,)), build.ethernet(ip, vlans=(100, 200), qinq=True),
                  build.ethernet(ip, vlans=(1, 2, 3, 4))):
        p = decode(raw(frame, lt.ETHERNET))
        check(p, ip)
        assert p.l3 == len(frame) - len(ip)
    check(decode(raw(bytes(12) + b"\x91\x00\x00\x05\x08\x00" + ip, lt.ETHERNET)), ip)  # old QinQ TPID
    assert decode(raw(build.ethernet(ip, vlans=(1, 2, 3, 4, 5)), lt.ETHERNET)) == "malformed"
    assert decode(raw(build.ethernet(ip, vlans=(7,))[:16], lt.ETHERNET)) == "truncated"
    assert decode(raw(build.ethernet(bytes(28), ethertype=0x0806, vlans=(7,)), lt.ETHERNET)) == "non_ip"


def test_ethernet_ipv6_pppoe_and_non_ip():
    check(decode(raw(build.ethernet(tcp6()), lt.ETHERNET)), tcp6())
    pppoe = build.ethernet(b"\x11\x00\x00\x01" + struct.pack("!H", len(tcp4()) + 2) + b"\x00\x21" + tcp4(),
                           ethertype=0x8864)
    check(decode(raw(pppoe, lt.ETHERNET)), tcp4())
    assert decode(raw(build.ethernet(bytes(28), ethertype=0x0806), lt.ETHERNET)) == "non_ip"  # ARP
    assert decode(raw(build.ethernet(b"\xaa\xaa\x03" + bytes(40), ethertype=43), lt.ETHERNET)) == "non_ip"  # 802.3
    assert decode(raw(build.sll(bytes(28), proto=0x0806), lt.LINUX_SLL)) == "non_ip"
    assert decode(raw(build.sll2(bytes(28), proto=0x0806), lt.LINUX_SLL2)) == "non_ip"
    assert decode(raw(bytes(40), 147)) == "unsupported_link"


def test_ipv4_options_move_the_transport_header():
    ip = tcp4(options=b"\x01\x01\x01\x00" + b"\x07\x07\x04" + bytes(5))  # NOPs, EOL, a record route
    p = decode(raw(ip))
    check(p, ip)
    assert p.l4 == 32


def test_ipv4_fragments():
    segment = build.tcp(b"x" * 40, src=A, dst=B)
    first = build.ipv4(segment[:32], src=A, dst=B, flags=1, total_length=20 + 32)
    p = decode(raw(first))
    assert p.fragmented is True and p.payload_len == 12
    assert decode(raw(build.ipv4(segment[32:], src=A, dst=B, frag_offset=4))) == "ip_fragment"  # last
    assert decode(raw(build.ipv4(b"y" * 16, src=A, dst=B, flags=1, frag_offset=4))) == "ip_fragment"  # middle
    assert decode(raw(tcp4(flags=2))).fragmented is False  # don't fragment
    # The first fragment of a UDP datagram: the UDP length gives the whole datagram's payload
    datagram = build.udp(b"z" * 3000, sport=53, dport=5353, src=A, dst=B)
    p = decode(raw(build.ipv4(datagram[:1480], src=A, dst=B, proto=17, flags=1)))
    assert p.fragmented is True and p.payload_len == 3000 and p.end - p.l7 == 1472


@pytest.mark.parametrize("ext", [build.hop_by_hop(), build.hop_by_hop(bytes(14)), build.routing_header(),
                                 build.destination_options(bytes(30)), build.authentication_header(),
                                 build.fragment_header(offset=0, more=True)], ids=lambda e: str(e[0]))
def test_ipv6_extension_headers(ext):
    ip = tcp6(ext_headers=(ext,))
    p = decode(raw(ip))
    assert not isinstance(p, str), p
    assert p.frame[p.l7 : p.end] == PAYLOAD and p.payload_len == len(PAYLOAD)
    assert p.l4 == 40 + len(ip) - len(tcp6())
    assert p.fragmented is (ext[0] == 44)


def test_ipv6_extension_chains_and_what_ends_them():
    chain = (build.hop_by_hop(), build.destination_options(), build.routing_header(), build.fragment_header(),
             build.authentication_header(), build.destination_options())
    ip = tcp6(ext_headers=chain)
    p = decode(raw(ip))
    assert p.frame[p.l7 : p.end] == PAYLOAD and p.fragmented is False  # an atomic fragment
    assert decode(raw(tcp6(ext_headers=(build.fragment_header(offset=8),)))) == "ip_fragment"
    assert decode(raw(tcp6(ext_headers=(build.destination_options(),) * 9))) == "other_protocol"  # too deep
    for next_header in (50, 59, 58, 4, 41, 47, 132):  # ESP, no next header, ICMPv6, tunnels, SCTP
        assert decode(raw(build.ipv6(bytes(40), src=A6, dst=B6, next_header=next_header))) == "other_protocol"
    hop = bytearray(tcp6(ext_headers=(build.hop_by_hop(),)))
    hop[41] = 200  # a hop-by-hop header longer than the datagram
    assert decode(raw(bytes(hop))) == "malformed"


def test_other_ipv4_protocols():
    for proto in (1, 4, 41, 47, 50, 132):  # ICMP, IP-in-IP, IPv6-in-IP, GRE, ESP, SCTP
        assert decode(raw(build.ipv4(bytes(40), src=A, dst=B, proto=proto))) == "other_protocol"


def test_ethernet_padding_is_not_payload():
    ip = build.tcp_packet(b"", src=A, dst=B, flags="A")  # 40 bytes: padded to a 60-byte frame
    frame = build.ethernet(ip) + bytes(6)
    p = decode(raw(frame, lt.ETHERNET))
    assert (p.end, p.payload_len, p.ip_len) == (54, 0, 40)
    udp = build.udp_packet(b"hi", src=A, dst=B)
    p = decode(raw(build.ethernet(udp) + b"\xee" * 16, lt.ETHERNET))
    assert p.frame[p.l7 : p.end] == b"hi" and p.payload_len == 2


def test_snapped_and_truncated_frames():
    frame = build.ethernet(tcp4(bytes(1000)))
    p = decode(raw(frame[:100], lt.ETHERNET, orig_len=len(frame)))
    assert (p.end, p.payload_len, p.ip_len) == (100, 1000, 1040)
    for cut in (0, 10, 13, 14, 20, 33, 34, 40, 53):
        assert decode(raw(frame[:cut], lt.ETHERNET, orig_len=len(frame))) == "truncated", cut
    segment = build.tcp(b"", options=build.tcp_timestamp_option(1, 2), src=A, dst=B)
    with_options = build.ethernet(build.ipv4(segment, src=A, dst=B))
    assert decode(raw(with_options[:60], lt.ETHERNET, orig_len=len(with_options))) == "truncated"  # options cut
    v6 = tcp6(ext_headers=(build.hop_by_hop(),))
    assert decode(raw(v6[:30], orig_len=len(v6))) == "truncated"
    assert decode(raw(v6[:41], orig_len=len(v6))) == "truncated"


def test_lengths_that_contradict_each_other_are_malformed():
    liar = tcp4(total_length=5000)
    assert decode(raw(liar)) == "malformed"  # longer than on the wire
    assert decode(raw(tcp4(total_length=30))) == "malformed"  # too short for its TCP header
    bad = bytearray(tcp4())
    bad[0] = 0x44  # header length 16
    assert decode(raw(bytes(bad))) == "malformed"
    bad[0] = 0x55  # version 5
    assert decode(raw(bytes(bad))) == "malformed"
    assert decode(raw(build.ethernet(tcp6(), ethertype=0x0800), lt.ETHERNET)) == "malformed"  # says IPv4, is v6
    assert decode(raw(build.ethernet(tcp4(), ethertype=0x86DD), lt.ETHERNET)) == "malformed"
    for offset in (0x20, 0x40, 0xF0):  # TCP data offset 2 words; 4 words; past the datagram
        bad = bytearray(tcp4())
        bad[32] = offset
        assert decode(raw(bytes(bad))) == "malformed"
    six = bytearray(tcp6())
    six[4:6] = (2000).to_bytes(2, "big")
    assert decode(raw(bytes(six))) == "malformed"


def test_offloaded_lengths_of_zero_trust_the_frame():
    tso = bytearray(tcp4(bytes(3000)))
    tso[2:4] = b"\x00\x00"  # segmentation offload: the stack never filled in the length
    p = decode(raw(bytes(tso)))
    assert p.payload_len == 3000 and p.ip_len == len(tso)
    jumbo = bytearray(tcp6(bytes(3000)))
    jumbo[4:6] = b"\x00\x00"
    assert decode(raw(bytes(jumbo))).payload_len == 3000


def test_udp():
    ip = build.udp_packet(b"dns?", src=A, dst=B, sport=53000, dport=53)
    p = decode(raw(ip))
    assert (p.proto, p.sport, p.dport, p.flags, p.seq, p.ack, p.payload_len) == (17, 53000, 53, 0, 0, 0, 4)
    assert p.l7 - p.l4 == 8
    p6 = decode(raw(build.udp_packet(b"v6", src=A6, dst=B6, sport=1, dport=2)))
    assert p6.version == 6 and p6.frame[p6.l7 : p6.end] == b"v6"
    for length in (7, 13):  # shorter than its header; longer than the datagram
        bad = bytearray(ip)
        bad[24:26] = length.to_bytes(2, "big")
        assert decode(raw(bytes(bad))) == "malformed"
    short = bytearray(ip)
    short[24:26] = (10).to_bytes(2, "big")  # bytes inside the IP datagram past the UDP length
    assert decode(raw(bytes(short))).payload_len == 2
    zero = bytearray(ip)
    zero[24:26] = b"\x00\x00"
    assert decode(raw(bytes(zero))).payload_len == 4
    assert decode(raw(ip[:27], orig_len=len(ip))) == "truncated"


# -- the builders the tests rely on ------------------------------------------------------------


def test_builder_checksums_verify():
    ip = tcp4(options=b"\x01" * 4)
    assert build.checksum(ip[:24]) == 0  # an IPv4 header with its checksum sums to zero
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(ip) - 24)
    assert build.checksum(pseudo + ip[24:]) == 0
    v6 = build.udp_packet(b"abc", src=A6, dst=B6)
    pseudo6 = v6[8:40] + struct.pack("!IxxxB", len(v6) - 40, 17)
    assert build.checksum(pseudo6 + v6[40:]) == 0
    assert build.tcp_timestamp_option(1, 2) == b"\x01\x01\x08\x0a" + bytes([0, 0, 0, 1, 0, 0, 0, 2])
    assert build.tcp_flags("SA") == 0x12 and build.tcp_flags("FPA") == 0x19


def test_tcp_packet_composes_ipv4_and_ipv6():
    p4 = decode(raw(build.tcp_packet(b"abc", src=A, dst=B, sport=5, dport=6, flags="S", seq=2**32 + 5)))
    assert (p4.version, p4.sport, p4.dport, p4.flags, p4.seq) == (4, 5, 6, 0x02, 5)
    p6 = decode(raw(build.tcp_packet(b"abc", src=A6, dst=B6, options=build.tcp_timestamp_option(3, 4))))
    assert p6.version == 6 and p6.l7 - p6.l4 == 32 and p6.frame[p6.l7 :] == b"abc"


def test_pcap_bytes_in_a_literal_decode(tmp_path):
    """A whole one-packet pcap fits in a literal: Ethernet, IPv4, UDP 53 -> 5353, payload "hi"."""
    path = tmp_path / "one.pcap"
    path.write_bytes(bytes.fromhex(
        "d4c3b2a1 02000400 00000000 00000000 ffff0000 01000000"  # little-endian, usec, Ethernet
        "01000000 02000000 2c000000 2c000000"  # ts 1.000002, 44 bytes
        "020000000002 020000000001 0800"
        "4500 001e 0000 0000 4011 0000 0a000001 0a000002"
        "0035 14e9 000a 0000 6869"
    ))
    (packet,) = [decode(r) for r in CaptureReader(path)]
    assert packet.ts == pytest.approx(1.000002)
    assert (packet.sport, packet.dport, packet.frame[packet.l7 : packet.end]) == (53, 5353, b"hi")

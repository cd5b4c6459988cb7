"""Reading and decoding captures: formats, byte orders, link types, damage (property-based
tests of random and damaged bytes: test_capture_fuzz.py)."""

from __future__ import annotations

import io
import struct

import pytest

from trafficlens.capture import CaptureReader, PcapngWriter, PcapWriter, RawPacket, build, decode
from trafficlens.capture import linktypes as lt
from trafficlens.errors import CaptureError

A, B = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8::beef"


def _tcp4(payload=b"hello", **kw):
    return build.tcp_packet(payload, src=A, dst=B, sport=1111, dport=443, seq=7, ack=9, flags="PA", **kw)


def _frames(linktype, ip):
    """The frame of `ip` (an IP datagram) under each link type."""
    v6 = ip[0] >> 4 == 6
    return {
        lt.ETHERNET: build.ethernet(ip),
        lt.LINUX_SLL: build.sll(ip, proto=0x86DD if v6 else 0x0800),
        lt.LINUX_SLL2: build.sll2(ip, proto=0x86DD if v6 else 0x0800),
        lt.RAW: ip, lt.RAW_LEGACY_12: ip, lt.RAW_LEGACY_14: ip,
        lt.IPV4: ip, lt.IPV6: ip,
        lt.NULL: build.null_loopback(ip, family=30 if v6 else 2),
        lt.LOOP: build.null_loopback(ip, family=24 if v6 else 2, big_endian=True),
        lt.PPP: build.ppp(ip, proto=0x0057 if v6 else 0x0021),
        lt.PPP_HDLC: build.ppp(ip, proto=0x0057 if v6 else 0x0021, hdlc=False),
    }[linktype]


def _write(tmp_path, frames, fmt="pcap", linktype=1, **kw):
    path = tmp_path / f"x.{fmt}"
    if fmt == "pcap":
        with PcapWriter(path, linktype=linktype, **kw) as w:
            for i, frame in enumerate(frames):
                w.write(frame, 1_600_000_000.25 + i)
    else:
        with PcapngWriter(path, **kw) as w:
            w.add_interface(linktype)
            for i, frame in enumerate(frames):
                w.write(frame, 1_600_000_000.25 + i)
    return path


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("linktype", [lt.ETHERNET, lt.LINUX_SLL, lt.LINUX_SLL2, lt.RAW, lt.RAW_LEGACY_12,
                                      lt.RAW_LEGACY_14, lt.IPV4, lt.NULL, lt.LOOP, lt.PPP, lt.PPP_HDLC])
def test_every_link_type_and_byte_order(tmp_path, fmt, big_endian, linktype):
    ip = _tcp4()
    path = _write(tmp_path, [_frames(linktype, ip)] * 3, fmt, linktype, big_endian=big_endian)
    reader = CaptureReader(path)
    packets = [decode(raw) for raw in reader]
    assert reader.format == fmt and not reader.warnings and len(packets) == 3
    p = packets[0]
    assert p.ts == pytest.approx(1_600_000_000.25)
    assert (p.version, p.proto, p.sport, p.dport, p.seq, p.ack, p.flags) == (4, 6, 1111, 443, 7, 9, 0x18)
    assert p.frame[p.l7 : p.end] == b"hello" and p.payload_len == 5
    assert p.frame[p.l3 : p.end] == ip


@pytest.mark.parametrize("linktype", [lt.ETHERNET, lt.RAW, lt.IPV6, lt.NULL, lt.LINUX_SLL2, lt.PPP])
def test_ipv6_on_links(tmp_path, linktype):
    ip = build.tcp_packet(b"v6data", src=A6, dst=B6, sport=2, dport=3, flags="PA")
    p = decode(next(iter(CaptureReader(_write(tmp_path, [_frames(linktype, ip)], linktype=linktype)))))
    assert p.version == 6 and p.src == bytes.fromhex("20010db8000000000000000000000001")
    assert p.frame[p.l7 : p.end] == b"v6data"


def test_nanosecond_pcap_and_gzip(tmp_path):
    path = tmp_path / "ns.pcap.gz"
    with PcapWriter(path, nanosecond=True, gzip=True) as w:
        w.write(build.ethernet(_tcp4()), 1_600_000_000.123456789)
    reader = CaptureReader(path)
    (raw,) = list(reader)
    assert reader.compressed and reader.format == "pcap"
    assert raw.ts == pytest.approx(1_600_000_000.123456789, abs=1e-6)


def test_format_is_taken_from_bytes_not_name(tmp_path):
    path = _write(tmp_path, [build.ethernet(_tcp4())], "pcapng")
    renamed = path.rename(tmp_path / "really.pcap")
    reader = CaptureReader(renamed)
    assert len(list(reader)) == 1 and reader.format == "pcapng"


def test_pcapng_interfaces_spb_tsresol_and_sections(tmp_path):
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    eth = w.add_interface(lt.ETHERNET)
    raw = w.add_interface(lt.RAW, tsresol_exp10=9)
    w.write(build.ethernet(_tcp4(b"one")), 10.5, interface=eth)
    w.write(_tcp4(b"two"), 11.000000001, interface=raw)
    w.write(build.ethernet(_tcp4(b"three")), 0, simple=True)
    # a second section, big-endian, restarts the interface list
    w2 = PcapngWriter(buf, big_endian=True)
    w2.add_interface(lt.LINUX_SLL)
    w2.write(build.sll(_tcp4(b"four")), 12.0)
    path = tmp_path / "multi.pcapng"
    path.write_bytes(buf.getvalue())
    reader = CaptureReader(path)
    packets = [decode(r) for r in reader]
    assert not reader.warnings
    assert [p.frame[p.l7 : p.end] for p in packets] == [b"one", b"two", b"three", b"four"]
    assert [p.linktype for p in packets] == [lt.ETHERNET, lt.RAW, lt.ETHERNET, lt.LINUX_SLL]
    assert packets[1].ts == pytest.approx(11.000000001, abs=1e-9)
    assert packets[2].ts == packets[1].ts  # an SPB has no time of its own


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("cut", [1, 5, 17, 40])
def test_truncated_file_keeps_packets_before_the_damage(tmp_path, fmt, cut):
    path = _write(tmp_path, [build.ethernet(_tcp4(bytes(100)))] * 4, fmt)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    reader = CaptureReader(path)
    packets = list(reader)
    assert len(packets) == 3
    assert len(reader.warnings) == 1 and str(path) in reader.warnings[0] and "offset" in reader.warnings[0]


def test_absurd_record_length_stops_with_warning(tmp_path):
    path = _write(tmp_path, [build.ethernet(_tcp4())] * 3)
    data = bytearray(path.read_bytes())
    second = 24 + 16 + len(build.ethernet(_tcp4()))
    struct.pack_into("<I", data, second + 8, 10_000_000)
    path.write_bytes(bytes(data))
    reader = CaptureReader(path)
    assert len(list(reader)) == 1
    assert f"offset {second}" in reader.warnings[0]


def test_pcapng_bad_trailing_length(tmp_path):
    path = _write(tmp_path, [build.ethernet(_tcp4())] * 2, "pcapng")
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x00\x00"
    path.write_bytes(bytes(data))
    reader = CaptureReader(path)
    assert len(list(reader)) == 1 and "trailing length" in reader.warnings[0]


def test_not_a_capture_and_empty_file(tmp_path):
    html = tmp_path / "page.pcap"
    html.write_bytes(b"<html></html>")
    with pytest.raises(CaptureError, match="page.pcap: not a pcap or pcapng file"):
        CaptureReader(html)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    reader = CaptureReader(empty)  # nothing to read is a warning, not an error
    assert list(reader) == [] and len(reader.warnings) == 1 and "empty.pcap" in reader.warnings[0]
    header_only = tmp_path / "header.pcap"
    header_only.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(4))
    reader = CaptureReader(header_only)
    assert list(reader) == [] and "file header cut short" in reader.warnings[0]


def test_vlan_and_qinq(tmp_path):
    ip = _tcp4(b"tagged")
    for frame in (build.ethernet(ip, vlans=(10,)), build.ethernet(ip, vlans=(100, 200), qinq=True)):
        p = decode(RawPacket(0.0, frame, len(frame), lt.ETHERNET))
        assert p.frame[p.l7 : p.end] == b"tagged" and p.l3 == len(frame) - len(ip)


@pytest.mark.parametrize("ext", [(0, b"\x01\x04\x00\x00\x00\x00"), (43, bytes(6)), (60, bytes(14)), (51, bytes(12)),
                                 build.fragment_header(offset=0, more=True)])
def test_ipv6_extension_headers(ext):
    segment = build.tcp(b"after-ext", src=A6, dst=B6, sport=5, dport=6, flags="PA")
    ip = build.ipv6(segment, src=A6, dst=B6, next_header=6, ext_headers=(ext,))
    p = decode(RawPacket(0.0, ip, len(ip), lt.RAW))
    assert not isinstance(p, str), p
    assert p.frame[p.l7 : p.end] == b"after-ext"
    assert p.fragmented is (ext[0] == 44)


def test_fragments_esp_and_other_protocols():
    seg = build.tcp(b"x" * 40, src=A, dst=B)
    first = build.ipv4(seg, src=A, dst=B, flags=1)
    later = build.ipv4(b"y" * 40, src=A, dst=B, flags=0, frag_offset=5)
    assert decode(RawPacket(0, first, len(first), lt.RAW)).fragmented is True
    assert decode(RawPacket(0, later, len(later), lt.RAW)) == "ip_fragment"
    later6 = build.ipv6(bytes(16), src=A6, dst=B6, next_header=6, ext_headers=(build.fragment_header(offset=3),))
    assert decode(RawPacket(0, later6, len(later6), lt.RAW)) == "ip_fragment"
    icmp = build.ipv4(b"\x08\x00" + bytes(6), src=A, dst=B, proto=1)
    esp = build.ipv6(bytes(16), src=A6, dst=B6, next_header=50)
    assert decode(RawPacket(0, icmp, len(icmp), lt.RAW)) == "other_protocol"
    assert decode(RawPacket(0, esp, len(esp), lt.RAW)) == "other_protocol"
    arp = build.ethernet(bytes(28), ethertype=0x0806)
    assert decode(RawPacket(0, arp, len(arp), lt.ETHERNET)) == "non_ip"
    assert decode(RawPacket(0, b"\x00" * 30, 30, 999)) == "unsupported_link"


def test_ethernet_padding_and_snapped_frames():
    ip = build.tcp_packet(b"", src=A, dst=B, flags="A")  # 40 bytes: padded to 60 on the wire
    frame = build.ethernet(ip) + bytes(6)
    p = decode(RawPacket(0, frame, len(frame), lt.ETHERNET))
    assert p.end == 14 + 40 and p.payload_len == 0
    big = build.ethernet(_tcp4(bytes(1000)))
    snapped = decode(RawPacket(0, big[:100], len(big), lt.ETHERNET))
    assert snapped.end == 100 and snapped.payload_len == 1000 and snapped.ip_len == 1040
    assert decode(RawPacket(0, big[:40], len(big), lt.ETHERNET)) == "truncated"


def test_udp_and_lengths_that_lie():
    ip = build.udp_packet(b"dns?", src=A, dst=B, sport=53000, dport=53)
    p = decode(RawPacket(0, ip, len(ip), lt.RAW))
    assert (p.proto, p.sport, p.dport, p.flags, p.payload_len) == (17, 53000, 53, 0, 4)
    liar = build.ipv4(build.tcp(b"z", src=A, dst=B), src=A, dst=B, total_length=5000)
    assert decode(RawPacket(0, liar, len(liar), lt.RAW)) == "malformed"
    bad_offset = bytearray(_tcp4())
    bad_offset[20 + 12] = 0x20  # TCP data offset 2 words
    assert decode(RawPacket(0, bytes(bad_offset), len(bad_offset), lt.RAW)) == "malformed"

"""PcapWriter and PcapngWriter round-trip through CaptureReader in every combination."""

from __future__ import annotations

import io
import struct

import pytest

from trafficlens.capture import CaptureReader, PcapngWriter, PcapWriter, RawPacket

T0 = 1_700_000_000.0
PACKETS = [(bytes([i]) * (1 + 37 * i), T0 + i * 0.001001) for i in range(8)]


def read_back(path) -> tuple[list[RawPacket], CaptureReader]:
    reader = CaptureReader(path)
    return list(reader), reader


@pytest.mark.parametrize("gzip", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("to_fileobj", [False, True])
def test_pcap_round_trip(tmp_path, gzip, big_endian, nanosecond, to_fileobj):
    path = tmp_path / "x.pcap"
    target = io.BytesIO() if to_fileobj else path
    with PcapWriter(target, linktype=101, snaplen=200, nanosecond=nanosecond, big_endian=big_endian, gzip=gzip) as w:
        for data, ts in PACKETS:
            w.write(data, ts)
        w.write(b"abc", T0 + 9, orig_len=1500)
    if to_fileobj:
        assert not target.closed  # the caller's file object stays open
        path.write_bytes(target.getvalue())
    packets, reader = read_back(path)
    assert reader.format == "pcap" and reader.compressed is gzip and not reader.warnings
    assert [p.data for p in packets] == [d[:200] for d, _ in PACKETS] + [b"abc"]
    assert [p.orig_len for p in packets] == [len(d) for d, _ in PACKETS] + [1500]
    assert {p.linktype for p in packets} == {101}
    resolution = 1e-9 if nanosecond else 1e-6
    for p, (_, ts) in zip(packets, PACKETS):
        assert p.ts == pytest.approx(ts, abs=resolution)


@pytest.mark.parametrize("gzip", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_modified_pcap_round_trip(tmp_path, gzip, big_endian):
    """The "modified" form: magic a1b2cd34 and 24-byte record headers; the same packets read back."""
    classic, modified = tmp_path / "classic.pcap", tmp_path / "modified.pcap"
    for path, is_modified in ((classic, False), (modified, True)):
        with PcapWriter(path, linktype=101, snaplen=200, big_endian=big_endian, gzip=gzip, modified=is_modified) as w:
            for data, ts in PACKETS:
                w.write(data, ts, ifindex=7, protocol=0x86DD, pkt_type=4)
    packets, reader = read_back(modified)
    assert reader.format == "pcap" and reader.compressed is gzip and not reader.warnings
    assert packets == read_back(classic)[0]
    if not gzip:
        order = ">" if big_endian else "<"
        raw = modified.read_bytes()
        assert struct.unpack_from(order + "I", raw)[0] == 0xA1B2CD34
        # first record: seconds, microseconds, lengths, then ifindex, protocol, packet type, pad
        assert struct.unpack_from(order + "IIIIiHBB", raw, 24)[2:] == (1, 1, 7, 0x86DD, 4, 0)
        assert raw[48:49] == PACKETS[0][0]
        assert len(raw) == len(classic.read_bytes()) + 8 * len(PACKETS)


@pytest.mark.parametrize("gzip", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("tsresol_exp10", [0, 3, 6, 9])
@pytest.mark.parametrize("simple", [False, True])
def test_pcapng_round_trip(tmp_path, gzip, big_endian, tsresol_exp10, simple):
    path = tmp_path / "x.pcapng"
    with PcapngWriter(path, big_endian=big_endian, gzip=gzip) as w:
        eth = w.add_interface(1, snaplen=100, tsresol_exp10=tsresol_exp10)
        raw = w.add_interface(228, snaplen=0)
        for data, ts in PACKETS:
            w.write(data, ts, interface=eth, simple=simple)
            w.write(data[::-1], ts + 0.5, interface=raw, orig_len=len(data) + 4)
    packets, reader = read_back(path)
    assert reader.format == "pcapng" and reader.compressed is gzip and not reader.warnings
    assert [p.linktype for p in packets] == [1, 228] * len(PACKETS)
    assert [p.data for p in packets[::2]] == [d[:100] for d, _ in PACKETS]
    assert [p.data for p in packets[1::2]] == [d[::-1] for d, _ in PACKETS]  # snaplen 0: no limit
    assert [p.orig_len for p in packets] == [n for d, _ in PACKETS for n in (len(d), len(d) + 4)]
    for i, (_, ts) in enumerate(PACKETS):
        assert packets[2 * i + 1].ts == pytest.approx(ts + 0.5, abs=1e-6)
        if simple:  # an SPB takes the time of the packet before it
            assert packets[2 * i].ts == (packets[2 * i - 1].ts if i else 0.0)
        else:
            assert packets[2 * i].ts == pytest.approx(ts, abs=10.0**-tsresol_exp10)


def test_timestamps_round_to_the_nearest_tick(tmp_path):
    path = tmp_path / "x.pcap"
    ts = 1_600_000_000.123456789  # the nearest float is ...0.1234567165
    with PcapWriter(path, nanosecond=True) as w:
        w.write(b"a", ts)
        w.write(b"b", 1_600_000_000.9999999999)  # rounds up into the next second
    raw = path.read_bytes()
    # seconds and fraction are split before scaling, so the fraction keeps every bit the float has
    assert raw[24:32] == (1_600_000_000).to_bytes(4, "little") + (123_456_717).to_bytes(4, "little")
    assert raw[41:49] == (1_600_000_001).to_bytes(4, "little") + bytes(4)
    assert next(iter(CaptureReader(path))).ts == ts


def test_pcapng_writers_in_turn_make_sections(tmp_path):
    buf = io.BytesIO()
    for big_endian, linktype in ((False, 1), (True, 113), (False, 229)):
        with PcapngWriter(buf, big_endian=big_endian) as w:
            w.add_interface(linktype)
            w.write(b"x" * linktype, T0)
    path = tmp_path / "sections.pcapng"
    path.write_bytes(buf.getvalue())
    packets, reader = read_back(path)
    assert [p.linktype for p in packets] == [1, 113, 229] and not reader.warnings


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: PcapWriter(f, linktype=-1), "linktype must be"),
    (lambda f: PcapWriter(f, snaplen=0), "snaplen must be"),
    (lambda f: PcapWriter(f, modified=True, nanosecond=True), "microsecond timestamps only"),
    (lambda f: PcapWriter(f).write(b"ab", T0, orig_len=1), "orig_len 1 is shorter"),
    (lambda f: PcapWriter(f).write(b"ab", -1.0), "ts must be"),
    (lambda f: PcapngWriter(f).write(b"ab", T0), "interface 0 was never added"),
    (lambda f: PcapngWriter(f).add_interface(1, tsresol_exp10=12), "tsresol_exp10 must be 0..9"),
])
def test_bad_arguments_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make(io.BytesIO())


def test_simple_packet_blocks_belong_to_interface_0():
    w = PcapngWriter(io.BytesIO())
    w.add_interface(1)
    w.add_interface(1)
    with pytest.raises(ValueError, match="interface 0"):
        w.write(b"x", T0, interface=1, simple=True)


def test_close_is_idempotent_and_closes_only_its_own_file(tmp_path):
    w = PcapWriter(tmp_path / "x.pcap", gzip=True)
    w.close()
    w.close()
    assert w._raw.closed
    buf = io.BytesIO()
    with PcapngWriter(buf, gzip=True) as w:
        w.add_interface(1)
    assert not buf.closed and buf.getvalue()[:2] == b"\x1f\x8b"

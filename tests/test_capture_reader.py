"""CaptureReader: every pcap/pcapng variant, gzip, streaming, and damage that stops a file."""

from __future__ import annotations

import gzip
import io
import re
import struct
import zlib
from pathlib import Path

import pytest

from trafficlens.capture import CaptureReader, PcapWriter, RawPacket, build, read_packets
from trafficlens.capture.reader import MAX_RECORD
from trafficlens.errors import CaptureError

T0 = 1_600_000_000.25
FRAMES = [build.ethernet(build.tcp_packet(bytes([i]) * (10 + i), flags="PA")) for i in range(5)]
WARNING = re.compile(r"^.+: .+ at offset \d+; kept \d+ packets before it$")


def pcap(frames=FRAMES, **kw) -> bytes:
    """A classic pcap of `frames`, one second apart."""
    buf = io.BytesIO()
    with PcapWriter(buf, **kw) as w:
        for i, frame in enumerate(frames):
            w.write(frame, T0 + i)
    return buf.getvalue()


def block(kind: int, body: bytes, order: str = "<") -> bytes:
    """One pcapng block, body padded to 4 bytes."""
    body += b"\x00" * (-len(body) % 4)
    return struct.pack(order + "II", kind, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


def shb(order: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def idb(linktype: int = 1, snaplen: int = 0, options: bytes = b"", order: str = "<") -> bytes:
    return block(1, struct.pack(order + "HHI", linktype, 0, snaplen) + options, order)


def epb(data: bytes, ticks: int = 0, iface: int = 0, orig: int | None = None, order: str = "<", caplen=None) -> bytes:
    head = struct.Struct(order + "IIIII").pack(iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                               len(data) if caplen is None else caplen,
                                               len(data) if orig is None else orig)
    return block(6, head + data, order)


def read(tmp_path, data: bytes, name: str = "x.pcap", **kw) -> tuple[list[RawPacket], CaptureReader]:
    path = tmp_path / name
    path.write_bytes(data)
    reader = CaptureReader(path, **kw)
    return list(reader), reader


def assert_one_warning(reader: CaptureReader, offset: int | None = None, text: str = "") -> str:
    assert len(reader.warnings) == 1, reader.warnings
    warning = reader.warnings[0]
    assert WARNING.match(warning) and warning.startswith(reader.path), warning
    assert f"kept {reader.packets} packets before it" in warning
    if offset is not None:
        assert f"at offset {offset};" in warning, warning
    assert text in warning
    return warning


# -- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_classic_pcap_byte_orders_and_resolutions(tmp_path, big_endian, nanosecond):
    packets, reader = read(tmp_path, pcap(linktype=113, big_endian=big_endian, nanosecond=nanosecond))
    assert reader.format == "pcap" and not reader.compressed and not reader.warnings
    assert [p.data for p in packets] == FRAMES
    assert [p.orig_len for p in packets] == [len(f) for f in FRAMES]
    assert {p.linktype for p in packets} == {113}
    assert packets[3].ts == pytest.approx(T0 + 3, abs=1e-9)
    assert reader.packets == 5


def test_nanosecond_timestamps_keep_what_a_float_can(tmp_path):
    data = bytes.fromhex("4d3cb2a1 02000400 00000000 00000000 00000400 01000000") + struct.pack(
        "<IIII", 1_600_000_000, 123_456_789, 0, 0)
    (packet,), _ = read(tmp_path, data)
    assert packet.ts == 1_600_000_000 + 0.123456789  # the nearest float, not a microsecond value


def test_pcap_linktype_upper_bits_are_fcs_information(tmp_path):
    data = bytearray(pcap(FRAMES[:1]))
    struct.pack_into("<I", data, 20, 0x14000001)  # FCS present, 4 bytes; LINKTYPE_ETHERNET
    (packet,), _ = read(tmp_path, bytes(data))
    assert packet.linktype == 1


def modified_pcap(frames=FRAMES, order: str = "<") -> bytes:
    """A "modified" pcap (Kuznetzov's patched libpcap) by hand, as libpcap's sf-pcap.c lays it out:
    the classic record header, then ifindex (i32), protocol (u16), pkt_type (u8) and a pad byte."""
    out = struct.pack(order + "IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    for i, frame in enumerate(frames):
        out += struct.pack(order + "IIIIiHBx", 1_600_000_000 + i, 250_000, len(frame), len(frame) + 4, 2, 0x0800, 4)
        out += frame
    return out


@pytest.mark.parametrize("order", ["<", ">"])
def test_modified_pcap_reads_like_classic_pcap(tmp_path, order):
    data = modified_pcap(order=order)
    packets, reader = read(tmp_path, data)
    assert reader.format == "pcap" and not reader.warnings
    assert [p.data for p in packets] == FRAMES
    assert [p.ts for p in packets] == [T0 + i for i in range(5)]  # microseconds
    assert [p.orig_len for p in packets] == [len(f) + 4 for f in FRAMES] and {p.linktype for p in packets} == {1}
    packets, reader = read(tmp_path, data[:-3])
    assert [p.data for p in packets] == FRAMES[:4]
    assert_one_warning(reader, len(data) - 24 - len(FRAMES[4]), "cut short by the end of file")


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_enhanced_packets_both_byte_orders(tmp_path, order):
    data = shb(order) + idb(228, order=order) + b"".join(
        epb(f, ticks=1_600_000_000_250_000 + i, orig=len(f) + 7, order=order) for i, f in enumerate(FRAMES))
    packets, reader = read(tmp_path, data, "x.pcapng")
    assert reader.format == "pcapng" and not reader.warnings
    assert [p.data for p in packets] == FRAMES
    assert packets[0] == RawPacket(T0, FRAMES[0], len(FRAMES[0]) + 7, 228)
    assert packets[4].ts == 1_600_000_000_250_004 / 1_000_000  # the nearest float to the exact time


@pytest.mark.parametrize(("option", "ts"), [
    (bytes([9]), 1.6e9 + 0.123456789),  # 10**-9 s
    (bytes([3]), 1.6e9 + 0.123),  # milliseconds
    (bytes([0x80 | 20]), 1.6e9 + 0.5),  # 2**-20 s
])
def test_pcapng_if_tsresol(tmp_path, option, ts):
    per_second = 2 ** (option[0] & 0x7F) if option[0] & 0x80 else 10 ** option[0]
    ticks = round(1_600_000_000 * per_second + (ts - 1_600_000_000) * per_second)
    options = struct.pack("<HH", 9, 1) + option + bytes(3) + struct.pack("<HH", 0, 0)
    (packet,), _ = read(tmp_path, shb() + idb(options=options) + epb(FRAMES[0], ticks))
    assert packet.ts == pytest.approx(ts, abs=1e-9)


def test_pcapng_if_tsoffset_and_unknown_options(tmp_path):
    options = (struct.pack("<HH", 2, 3) + b"eth" + b"\x00"  # if_name, padded
               + struct.pack("<HHq", 14, 8, 1_000_000_000) + struct.pack("<HH", 0, 0))
    (packet,), _ = read(tmp_path, shb() + idb(options=options) + epb(FRAMES[0], 600_000_000_250_000))
    assert packet.ts == T0


def test_pcapng_sections_reset_interfaces_and_byte_order(tmp_path):
    first = shb("<") + idb(1) + idb(101) + epb(FRAMES[0], iface=1)
    second = shb(">") + idb(113, order=">") + epb(FRAMES[1], order=">")
    packets, reader = read(tmp_path, first + second + first)
    assert [(p.linktype, p.data) for p in packets] == [(101, FRAMES[0]), (113, FRAMES[1]), (101, FRAMES[0])]
    assert not reader.warnings
    # interface 1 of the first section does not exist in the second
    _, reader = read(tmp_path, first + shb(">") + idb(113, order=">") + epb(FRAMES[1], iface=1, order=">"))
    assert_one_warning(reader, len(first) + 28 + 20, "undeclared interface 1")


@pytest.mark.parametrize("order", ["<", ">"])
def test_simple_and_obsolete_packet_blocks(tmp_path, order):
    frame = FRAMES[4]
    spb_snapped = block(3, struct.pack(order + "I", len(frame)) + frame[:40], order)  # snaplen 40
    spb_padded = block(3, struct.pack(order + "I", 21) + frame[:21], order)  # padding is not data
    old = block(2, struct.pack(order + "HHIIII", 0, 3, 0, 2_000_000, len(frame), len(frame)) + frame, order)
    data = (shb(order) + idb(1, snaplen=40, order=order) + epb(frame, 1_000_000, order=order)
            + spb_snapped + spb_padded + old)
    packets, reader = read(tmp_path, data)
    assert not reader.warnings
    assert [(len(p.data), p.orig_len) for p in packets] == [(len(frame), len(frame)), (40, len(frame)), (21, 21),
                                                          (len(frame), len(frame))]
    assert [p.ts for p in packets] == [1.0, 1.0, 1.0, 2.0]  # an SPB keeps the previous time


def test_pcapng_other_blocks_are_skipped(tmp_path):
    nrb = block(4, struct.pack("<HH", 1, 8) + bytes(8) + struct.pack("<HH", 0, 0))
    isb = block(5, bytes(12))
    custom = block(0x00000BAD, b"anything at all")
    packets, reader = read(tmp_path, shb() + nrb + idb() + isb + epb(FRAMES[0]) + custom + epb(FRAMES[1]))
    assert [p.data for p in packets] == FRAMES[:2] and not reader.warnings


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_gzip_is_read_transparently(tmp_path, fmt):
    data = pcap() if fmt == "pcap" else shb() + idb() + b"".join(epb(f) for f in FRAMES)
    packets, reader = read(tmp_path, gzip.compress(data), "x.pcap.gz")
    assert reader.compressed and reader.format == fmt and [p.data for p in packets] == FRAMES


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    _, reader = read(tmp_path, shb() + idb() + epb(FRAMES[0]), "really.pcap")
    assert reader.format == "pcapng"
    _, reader = read(tmp_path, pcap(), "really.pcapng")
    assert reader.format == "pcap"


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 22])
def test_records_across_chunk_boundaries(tmp_path, fmt, chunk_size):
    frames = [bytes(range(n % 256)) * 3 for n in range(0, 300, 17)]
    data = pcap(frames) if fmt == "pcap" else shb() + idb() + b"".join(epb(f) for f in frames) + shb(">") + idb(
        order=">") + b"".join(epb(f, order=">") for f in frames)
    packets, reader = read(tmp_path, data, chunk_size=chunk_size)
    assert [p.data for p in packets] == (frames if fmt == "pcap" else frames * 2) and not reader.warnings


def test_iterating_again_rereads_and_read_packets(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap())
    reader = CaptureReader(path)
    assert list(reader) == list(reader) == list(read_packets(path))
    assert reader.packets == 5 and reader.path == str(path)
    for _ in reader:  # stopping early is fine; the count is what was yielded
        break
    assert reader.packets == 1


# -- not a capture, empty ----------------------------------------------------------------------


def test_not_a_capture_raises_before_any_packet(tmp_path):
    path = tmp_path / "page.pcap"
    path.write_bytes(b"<html></html>")
    with pytest.raises(CaptureError, match=re.escape(f"{path}: not a pcap or pcapng file (first bytes 3c 68 74 6d)")):
        CaptureReader(path)
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureReader(tmp_path / "missing.pcap")
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureReader(tmp_path)
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(CaptureError, match="page.pcap"):
        CaptureReader(path)
    path.write_bytes(gzip.compress(b"<html>"))
    with pytest.raises(CaptureError, match="not a pcap or pcapng file"):
        CaptureReader(path)


@pytest.mark.parametrize(("data", "problem"), [
    (b"", "empty file at offset 0"),
    (b"\xd4\xc3", "file header cut short at offset 0"),
    (pcap([])[:20], "file header cut short at offset 0"),
    (pcap([]), "no packets after the headers at offset 24"),
    (shb(), "no packets after the headers at offset 28"),
    (shb() + idb(), "no packets after the headers at offset 48"),
    (gzip.compress(b"", mtime=0), "empty file at offset 0"),
], ids=["empty", "magic-cut", "pcap-header-cut", "pcap-header-only", "pcapng-section-only",
        "pcapng-interface-only", "gzip-of-nothing"])  # named: byte ids are unstable test names
def test_empty_and_header_only_files_warn(tmp_path, data, problem):
    packets, reader = read(tmp_path, data)
    assert packets == []
    assert_one_warning(reader, text=problem)


# -- damage ----------------------------------------------------------------------------------


def record_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 24
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return offsets


@pytest.mark.parametrize("cut", [1, 5, 16, 17, len(FRAMES[4]) + 15])
def test_pcap_cut_short_keeps_the_packets_before(tmp_path, cut):
    data = pcap()
    packets, reader = read(tmp_path, data[:-cut])
    assert [p.data for p in packets] == FRAMES[:4]
    assert_one_warning(reader, record_offsets(data)[4], "cut short by the end of file")


@pytest.mark.parametrize(("caplen", "orig", "problem"), [
    (MAX_RECORD + 1, MAX_RECORD + 1, "record length 262145 beyond the snap length 262144"),
    (0xFFFFFFFF, 60, "record length 4294967295 beyond the snap length"),
    (50, 49, "record length 50 beyond its length on the wire 49"),
    (50, 1, "record length 50 beyond its length on the wire 1"),  # 1 is a length, not "never filled in" (0)
])
def test_pcap_impossible_record_lengths_stop_the_file(tmp_path, caplen, orig, problem):
    data = bytearray(pcap())
    third = record_offsets(bytes(data))[2]
    struct.pack_into("<II", data, third + 8, caplen, orig)
    packets, reader = read(tmp_path, bytes(data))
    assert [p.data for p in packets] == FRAMES[:2]
    assert_one_warning(reader, third, problem)


def test_pcap_lengths_that_real_files_have_are_kept(tmp_path):
    # orig_len 0 (never filled in) and a snap length above 262144 are not damage
    big = bytes(300_000)
    data = bytearray(pcap([FRAMES[0], big], snaplen=400_000))
    struct.pack_into("<I", data, 24 + 12, 0)
    packets, reader = read(tmp_path, bytes(data))
    assert [len(p.data) for p in packets] == [len(FRAMES[0]), len(big)] and not reader.warnings
    assert packets[0].orig_len == 0


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda b: b[:4] + struct.pack("<I", 8) + b[8:], "block length 8 invalid"),
    (lambda b: b[:4] + struct.pack("<I", len(b) + 2) + b[8:], f"block length {len(epb(FRAMES[2])) + 2} invalid"),
    (lambda b: b[:4] + struct.pack("<I", 1 << 30) + b[8:], "block length 1073741824 invalid"),
    (lambda b: b[:-4] + struct.pack("<I", len(b) + 4), "trailing length differs"),
    (lambda b: b[:20] + struct.pack("<I", len(b)) + b[24:], "beyond its block"),
    (lambda b: b[:20] + struct.pack("<II", 10, 9) + b[28:], "beyond the snap length"),
    (lambda b: b[:8] + struct.pack("<I", 3) + b[12:], "undeclared interface 3"),
])
def test_pcapng_damage_stops_the_file(tmp_path, damage, problem):
    head = shb() + idb() + epb(FRAMES[0]) + epb(FRAMES[1])
    packets, reader = read(tmp_path, head + damage(epb(FRAMES[2])) + epb(FRAMES[3]))
    assert [p.data for p in packets] == FRAMES[:2]
    assert_one_warning(reader, len(head), problem)


@pytest.mark.parametrize("cut", [1, 4, 30, 40])
def test_pcapng_cut_short_keeps_the_packets_before(tmp_path, cut):
    head = shb() + idb() + epb(FRAMES[0]) + epb(FRAMES[1])
    packets, reader = read(tmp_path, head + epb(FRAMES[2])[:-cut])
    assert [p.data for p in packets] == FRAMES[:2]
    assert_one_warning(reader, len(head), "cut short by the end of file")


def test_pcapng_section_with_an_unknown_byte_order(tmp_path):
    head = shb() + idb() + epb(FRAMES[0])
    bad = bytearray(shb())
    bad[8:12] = b"\x00\x11\x22\x33"
    packets, reader = read(tmp_path, head + bytes(bad) + epb(FRAMES[1]))
    assert len(packets) == 1
    assert_one_warning(reader, len(head), "unknown byte-order magic")


def test_damaged_gzip_stream_warns(tmp_path):
    frames = [bytes([i]) * 200 for i in range(50)]
    data = gzip.compress(pcap(frames))
    before = zlib.decompressobj(31).decompress(data[: len(data) // 2])  # what inflates before the damage
    packets, reader = read(tmp_path, data[: len(data) // 2] + bytes(64))
    whole = whole_records(before)
    assert whole >= 1 and [p.data for p in packets[:whole]] == frames[:whole]
    assert_one_warning(reader)


# -- gzip: everything that decompressed is kept -----------------------------------------------------
LAB = Path(__file__).resolve().parents[1] / "examples" / "lab" / "capture-002.pcap.gz"  # 4,729 packets


def whole_records(data: bytes) -> int:
    """How many records of a little-endian classic pcap lie whole in `data`."""
    count, pos = 0, 24
    while pos + 16 <= len(data) and pos + 16 + struct.unpack_from("<I", data, pos + 8)[0] <= len(data):
        count, pos = count + 1, pos + 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return count


@pytest.fixture(scope="module")
def lab():
    """(uncompressed bytes, gzip of them, packets) of a real capture."""
    raw = gzip.decompress(LAB.read_bytes())
    return raw, gzip.compress(raw), [p.data for p in CaptureReader(LAB)]


def test_gzip_with_trailing_junk_keeps_every_packet(tmp_path, lab):
    raw, data, frames = lab
    packets, reader = read(tmp_path, data + b"junk", "x.pcap.gz")
    assert len(frames) == 4729 and [p.data for p in packets] == frames
    assert_one_warning(reader, len(raw), f"data after the end of the gzip stream is not gzip (compressed byte {len(data)})")
    packets, reader = read(tmp_path, data + bytes(100), "x.pcap.gz")  # zero padding, as gzip allows
    assert len(packets) == 4729 and not reader.warnings


@pytest.mark.parametrize("cut", [200, 1000, 100_000, 200_001, -9, -1])
def test_cut_gzip_keeps_every_record_that_decompressed(tmp_path, lab, cut):
    raw, data, frames = lab
    cut = cut % len(data)
    inflated = zlib.decompressobj(31).decompress(data[:cut])
    packets, reader = read(tmp_path, data[:cut], "x.pcap.gz")
    whole = whole_records(inflated)
    assert [p.data for p in packets] == frames[:whole]
    assert whole > 0 and (whole == 4729 or cut < len(data) - 8)  # a cut in the trailer loses no data
    assert_one_warning(reader, len(inflated), f"gzip stream cut short (compressed byte {cut})")


@pytest.mark.parametrize(("field", "problem"), [(-8, "CRC-32 mismatch"), (-4, "length mismatch")])
def test_gzip_with_a_bad_trailer_keeps_every_packet(tmp_path, lab, field, problem):
    raw, data, frames = lab
    bad = bytearray(data)
    bad[field] ^= 0x55
    packets, reader = read(tmp_path, bytes(bad), "x.pcap.gz")
    assert [p.data for p in packets] == frames
    assert_one_warning(reader, len(raw), f"damaged gzip stream ({problem}, compressed byte")


def test_concatenated_gzip_members_read_as_one_stream(tmp_path, lab):
    raw, _, frames = lab
    members = [gzip.compress(raw[i : i + 100_000]) for i in range(0, len(raw), 100_000)]
    packets, reader = read(tmp_path, b"".join(members), "x.pcap.gz")
    assert [p.data for p in packets] == frames and not reader.warnings
    # damage in the third member keeps the first two members' records, and what inflated of the third
    third = bytearray(members[2])
    third[len(third) // 2 :] = bytes(len(third) - len(third) // 2)
    packets, reader = read(tmp_path, b"".join(members[:2]) + bytes(third) + b"".join(members[3:]), "x.pcap.gz")
    whole = whole_records(raw[:200_000])
    assert len(packets) >= whole and [p.data for p in packets[:whole]] == frames[:whole]
    assert_one_warning(reader)  # the records' own damage, or the gzip stream's: whichever shows first


def test_a_gzip_broken_before_the_format_shows_is_unreadable(tmp_path):
    for data in (b"\x1f\x8b", gzip.compress(pcap())[:12]):
        (tmp_path / "x.pcap.gz").write_bytes(data)
        with pytest.raises(CaptureError, match=r"x\.pcap\.gz: cannot read \(gzip stream cut short \(compressed byte"):
            CaptureReader(tmp_path / "x.pcap.gz")


def test_a_garbage_snap_length_does_not_let_a_record_eat_memory(tmp_path):
    data = bytearray(pcap(snaplen=0xFFFFFFFF))
    third = record_offsets(bytes(data))[2]
    struct.pack_into("<II", data, third + 8, 3_000_000_000, 3_000_000_000)
    packets, reader = read(tmp_path, bytes(data))
    assert len(packets) == 2
    assert_one_warning(reader, third, "record length 3000000000 beyond the snap length 4294967295")


# -- the file's digest, read from the same pass ------------------------------------------------
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("cut", [0, 7], ids=["whole", "cut"])
@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "thread"])
def test_digest_is_the_stored_file_s_sha256_from_one_pass(tmp_path, monkeypatch, compress, cut, threaded):
    """digest=True: the SHA-256 of the file as stored (gzip bytes, not what they inflate to),
    computed from the pass's own reads; the rest a damaged pass left unread is hashed too.
    `threaded`: every read hashed by the hashing thread (large reads are), in order."""
    import hashlib
    import threading

    from trafficlens.capture.reader import _Hashing

    if threaded:
        monkeypatch.setattr(_Hashing, "_THREAD_FROM", 1)
        monkeypatch.setattr(_Hashing, "_QUEUED", 2)  # the reader waits on the thread at times

    data = pcap(FRAMES * 40)
    data = data[: len(data) - cut] if cut else data
    stored = gzip.compress(data, mtime=0) if compress else data
    path = tmp_path / ("x.pcap.gz" if compress else "x.pcap")
    path.write_bytes(stored)
    reader = CaptureReader(path, digest=True, chunk_size=512)
    assert reader.sha256 is None
    packets = list(reader)
    assert len(packets) == (200 if not cut else 199) and len(reader.warnings) == (1 if cut else 0)
    assert reader.sha256 == hashlib.sha256(stored).hexdigest() and reader.stored_bytes == len(stored)
    assert CaptureReader(path).sha256 is None  # only when asked for
    list(reader)  # a second pass hashes from the start again, not on from the first
    assert reader.sha256 == hashlib.sha256(stored).hexdigest() and reader.stored_bytes == len(stored)
    assert not [t for t in threading.enumerate() if t.name == "trafficlens-sha256"]  # every pass ends its thread


# -- classic pcap in windows, for a scanner of one's own (the compiled engine's) ------------------
def _scan(window) -> list[bytes]:
    """A scanner as the compiled engine is one: whole records from window.start, then stop."""
    f, data, pos, out = window.format, window.data, window.start, []
    while pos + f.header <= len(data):
        caplen = f.record(data, pos)[2]
        if caplen > f.limit or pos + f.header + caplen > len(data):
            break
        out.append(bytes(data[pos + f.header : pos + f.header + caplen]))
        pos += f.header + caplen
    window.stop, window.records = pos, len(out)
    return out


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("tail", [b"", b"\x01\x02\x03", None], ids=["clean", "header-cut", "record-cut"])
def test_pcap_windows_give_the_records_counts_and_warnings_of_iterating(tmp_path, compress, tail):
    data = pcap(FRAMES * 30)
    data = data[:-5] if tail is None else data + tail
    path = tmp_path / ("x.pcap.gz" if compress else "x.pcap")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    iterated = CaptureReader(path, chunk_size=300)
    want = [p.data for p in iterated]
    windowed = CaptureReader(path, chunk_size=300)
    got = [record for window in windowed.pcap_windows(200) for record in _scan(window)]
    assert got == want and windowed.packets == iterated.packets == len(want) == (149 if tail is None else 150)
    assert windowed.warnings == iterated.warnings and len(windowed.warnings) == (0 if tail == b"" else 1)
    assert repr(windowed) == f"CaptureReader({str(path)!r}, pcap{', gzip' if compress else ''}, packets read={len(want)})"


def test_pcap_windows_refuse_pcapng(tmp_path):
    path = tmp_path / "x.pcapng"
    path.write_bytes(shb() + idb() + epb(FRAMES[0]))
    with pytest.raises(CaptureError, match="a pcapng file, not classic pcap"):
        list(CaptureReader(path).pcap_windows())
    assert repr(CaptureReader(path)) == f"CaptureReader({str(path)!r}, pcapng, packets read=0)"


# -- pcapng damage, block by block, whatever the chunk boundaries ------------------------------
def _spb(data: bytes, orig: int | None = None) -> bytes:
    return block(3, struct.pack("<I", len(data) if orig is None else orig) + data)


def _with_length(raw: bytes, length: int) -> bytes:
    """A block with both its length fields set to `length` (the body kept as it is)."""
    return raw[:4] + struct.pack("<I", length) + raw[8:-4] + struct.pack("<I", length)


EPB2 = epb(FRAMES[2])
PCAPNG_DAMAGE = {
    "length under 12": (lambda: EPB2[:4] + struct.pack("<I", 8) + EPB2[8:], "block length 8 invalid"),
    "length not in words": (lambda: EPB2[:4] + struct.pack("<I", len(EPB2) + 2) + EPB2[8:],
                            f"block length {len(EPB2) + 2} invalid"),
    "length past the limit": (lambda: EPB2[:4] + struct.pack("<I", 1 << 30) + EPB2[8:], "block length 1073741824 invalid"),
    # not in words and past the end of the file: invalid, not a block cut short
    "length not in words past the end": (lambda: EPB2[:4] + struct.pack("<I", 1_000_002) + EPB2[8:],
                                         "block length 1000002 invalid"),
    "trailing length": (lambda: EPB2[:-4] + struct.pack("<I", len(EPB2) + 4),
                        f"block trailing length differs from its length {len(EPB2)}"),
    "captured past the block": (lambda: EPB2[:20] + struct.pack("<I", len(EPB2)) + EPB2[24:],
                                f"captured length {len(EPB2)} beyond its block"),
    "captured past the wire": (lambda: EPB2[:20] + struct.pack("<II", 10, 9) + EPB2[28:],
                               "captured length 10 beyond the snap length 0 or the length on the wire 9"),
    "undeclared interface": (lambda: EPB2[:8] + struct.pack("<I", 3) + EPB2[12:], "packet of undeclared interface 3"),
    "packet block of 28": (lambda: _with_length(block(6, bytes(16)), 28), "packet block too short"),
    "simple block of 12": (lambda: block(3, b""), "simple packet block too short"),
    "interface block of 16": (lambda: block(1, bytes(4)), "interface description block too short"),
    "section header of 24": (lambda: _with_length(shb()[:20] + shb()[-4:], 24), "section header length 24 too short"),
    "unknown byte order": (lambda: shb()[:8] + b"\x00\x11\x22\x33" + shb()[12:],
                           "section header with an unknown byte-order magic"),
}


@pytest.mark.parametrize("chunk", [16, 64, 1 << 20])
@pytest.mark.parametrize("case", list(PCAPNG_DAMAGE))
def test_pcapng_damage_gives_one_exact_warning_at_any_chunk_size(tmp_path, case, chunk):
    """Each check names its problem and the damaged block's offset, and keeps the packets before
    it, whether the block is whole in the buffer or straddles a refill (small chunks)."""
    damaged, problem = PCAPNG_DAMAGE[case]
    head = shb() + idb() + epb(FRAMES[0]) + epb(FRAMES[1])
    packets, reader = read(tmp_path, head + damaged() + epb(FRAMES[3]), chunk_size=chunk)
    assert [p.data for p in packets] == FRAMES[:2]
    assert reader.warnings == [f"{tmp_path / 'x.pcap'}: {problem} at offset {len(head)}; kept 2 packets before it"]


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_pcapng_smallest_valid_blocks_are_read(tmp_path, chunk):
    """The shortest blocks each kind allows: a 28-byte section header, a 20-byte interface block,
    a 32-byte packet block of 0 bytes, a 16-byte simple packet block of 0 bytes."""
    data = shb() + idb() + epb(b"") + _spb(b"", orig=60) + epb(FRAMES[0])
    assert [len(shb()), len(idb()), len(epb(b"")), len(_spb(b""))] == [28, 20, 32, 16]
    packets, reader = read(tmp_path, data, chunk_size=chunk)
    assert [(p.data, p.orig_len) for p in packets] == [(b"", 0), (b"", 60), (FRAMES[0], len(FRAMES[0]))]
    assert not reader.warnings


def test_a_simple_packet_block_needs_an_interface(tmp_path):
    packets, reader = read(tmp_path, shb() + _spb(FRAMES[0]) + idb() + epb(FRAMES[1]))
    assert packets == [] and reader.warnings == [
        f"{tmp_path / 'x.pcap'}: simple packet block before any interface at offset 28; kept 0 packets before it"]


# -- standard input as the reader sees it -------------------------------------------------------
class _Pipe:
    """A pipe's file object: read(n) blocks for n bytes (or the end), read1(n) returns what one
    write put there (at most 100 bytes here); every call is recorded."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.calls = data, 0, []

    def _take(self, n: int) -> bytes:
        out = self.data[self.pos :] if n < 0 else self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def read(self, n: int = -1) -> bytes:
        self.calls.append(("read", n))
        return self._take(n)

    def read1(self, n: int) -> bytes:
        self.calls.append(("read1", n))
        return self._take(min(n, 100))


def test_stdin_holds_its_first_bytes_to_go_back_and_then_streams():
    import errno

    from trafficlens.capture.reader import _Stdin

    data = bytes(range(256)) * 4
    pipe = _Pipe(data)
    stdin = _Stdin(pipe)
    assert stdin.read(4) == data[:4] and pipe.calls == [("read", 4)]  # a format check waits for its bytes
    assert stdin.seek(0) == 0 and stdin.read(4) == data[:4] and len(pipe.calls) == 1  # from what is held
    assert stdin.read(10) == data[4:14] and pipe.calls[-1] == ("read", 10 - 0)  # held bytes, then the pipe
    assert stdin.seek(0) == 0 and stdin.read(20) == data[:20] and pipe.calls[-1] == ("read", 6)
    # a large read takes what one write holds (read1), past the held bytes
    assert stdin.read(1000) == data[20:120] and pipe.calls[-1] == ("read1", 1000)
    for args in ((0,), (0, 1), (5,)):  # more than KEEP bytes read: going back is refused
        with pytest.raises(OSError) as caught:
            stdin.seek(*args)
        assert (caught.value.errno, caught.value.strerror) == (errno.ESPIPE, "standard input cannot go back")
    assert stdin.read(-1) == data[120:] and pipe.calls[-1] == ("read", -1)  # the rest, whole
    assert stdin.read(10) == b""
    fresh = _Stdin(_Pipe(data))
    with pytest.raises(OSError):
        fresh.seek(4)  # only back to the start
    assert fresh.read(-1) == data and fresh.read(1) == b""
    short = _Stdin(_Pipe(data[:50]))  # no more than KEEP bytes in all: the start stays held
    assert short.read(-1) == data[:50] and short.seek(0) == 0 and short.read(8) == data[:8]
    stdin.close()
    assert pipe.calls[-1] == ("read", 10)  # closing does not touch the process's stdin


# -- pcapng boundaries ---------------------------------------------------------------------------
def _option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


@pytest.mark.parametrize(("options", "ts"), [
    (_option(0, b"") + _option(9, b"\x09"), 1.0),  # end of options: a tsresol after it is not read
    (_option(1, b"a comment") + _option(9, b"\x03"), 1000.0),  # a comment, then milliseconds
    (_option(4, bytes([10, 0, 0, 1, 255, 255, 255, 0])) + _option(9, b"\x06"), 1.0),  # an 8-byte IPv4 address is no tsoffset
    (_option(14, struct.pack("<q", -5)), -4.0),  # a negative tsoffset
    (struct.pack("<HH", 9, 40000) + b"\x03", 1.0),  # an option longer than the block: the rest is not read
])
def test_pcapng_interface_options_are_read_to_the_letter(tmp_path, options, ts):
    """Timestamps of a packet of 10**6 ticks: the options decide what a tick is worth."""
    packets, reader = read(tmp_path, shb() + idb(options=options) + epb(FRAMES[0], ticks=10**6))
    assert [p.ts for p in packets] == [pytest.approx(ts)] and not reader.warnings


def test_pcapng_lengths_at_their_limits(tmp_path):
    """Unsigned fields read as unsigned; a record of exactly the largest plausible length, a
    block of exactly the largest allowed one and a block of exactly 12 bytes at the very end
    are all read; a captured length over an original length of 1 is damage."""
    from trafficlens.capture.reader import MAX_BLOCK

    big = bytes(range(256)) * (MAX_RECORD // 256)
    huge_orig = struct.pack("<I", 3_000_000_000) + FRAMES[1]  # a simple block's original length >= 2**31
    filler = block(0x0BAD, bytes(MAX_BLOCK - 12))
    assert len(filler) == MAX_BLOCK
    # interface 0: a snap length of 2**32 - 1; interface 1: none, so records up to MAX_RECORD
    data = (shb() + idb(snaplen=0xFFFFFFFF) + idb() + block(3, huge_orig) + epb(big, iface=1) + filler
            + epb(FRAMES[2]) + block(0x0BAD, b""))
    packets, reader = read(tmp_path, data)
    padded = FRAMES[1] + bytes(-len(FRAMES[1]) % 4)  # a simple block's data runs to its end, padding and all
    assert [(p.data, p.orig_len, p.ts) for p in packets] == [(padded, 3_000_000_000, 0.0), (big, len(big), 0.0),
                                                               (FRAMES[2], len(FRAMES[2]), 0.0)]
    assert not reader.warnings
    bad = shb() + idb() + epb(FRAMES[0], orig=1)
    packets, reader = read(tmp_path, bad, name="bad.pcapng")
    assert packets == [] and reader.warnings == [f"{tmp_path / 'bad.pcapng'}: captured length {len(FRAMES[0])} "
                                                 "beyond the snap length 0 or the length on the wire 1 at offset 48; "
                                                 "kept 0 packets before it"]
    packets, reader = read(tmp_path, shb() + idb() + block(0x0BAD, bytes(4))[:4] + struct.pack("<I", 1 << 31) + bytes(4),
                           name="len.pcapng")
    assert reader.warnings == [f"{tmp_path / 'len.pcapng'}: block length 2147483648 invalid at offset 48; "
                               "kept 0 packets before it"]


def test_big_endian_obsolete_packet_blocks_name_their_interface(tmp_path):
    """An obsolete packet block holds a 16-bit interface id in the high half of its first word
    when big-endian: the second interface (linktype 101, raw IP) must be found."""
    ip = FRAMES[0][14:]
    head = struct.pack(">HHIIII", 1, 0, 0, 0, len(ip), len(ip))  # interface 1, drops 0, time 0
    data = shb(">") + idb(order=">") + idb(linktype=101, order=">") + block(2, head + ip, ">")
    packets, reader = read(tmp_path, data)
    assert [(p.data, p.linktype) for p in packets] == [(ip, 101)] and not reader.warnings


def test_hashing_goes_back_only_to_the_start_and_hashes_what_damage_left(tmp_path):
    """digest=True over a file damaged in its first third: the pass stops there, and the rest of
    the file is still read into the hash (the manifest names the file, not what was usable)."""
    import hashlib
    import io

    from trafficlens.capture.reader import _Hashing

    data = bytearray(pcap(FRAMES * 200))
    at = 24 + sum(16 + len(f) for f in (FRAMES * 200)[:300])
    data[at + 8 : at + 12] = struct.pack("<I", 1 << 30)  # an impossible captured length
    path = tmp_path / "x.pcap"
    path.write_bytes(bytes(data))
    reader = CaptureReader(path, digest=True, chunk_size=4096)
    assert len(list(reader)) == 300 and len(reader.warnings) == 1
    assert reader.sha256 == hashlib.sha256(bytes(data)).hexdigest() and reader.stored_bytes == len(data)
    hashing = _Hashing(io.BytesIO(b"abcdef"))
    assert hashing.read(4) == b"abcd"
    for args in ((2,), (0, 1), (2, 2)):
        with pytest.raises(OSError) as caught:
            hashing.seek(*args)
        assert str(caught.value) == "hashing file: seek to 0 only"
    assert hashing.seek(0) == 0 and hashing.read(2) == b"ab" and hashing.finish() == hashlib.sha256(b"abcdef").hexdigest()


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    reader = CaptureReader(path)
    assert repr(reader) == f"CaptureReader({str(path)!r}, empty, packets read=0)"
    with pytest.raises(CaptureError) as caught:
        list(reader.pcap_windows())
    assert str(caught.value) == f"{path}: an empty file, not classic pcap"


def test_a_simple_packet_block_first_has_time_zero(tmp_path):
    packets, _ = read(tmp_path, shb() + idb() + _spb(FRAMES[0]) + epb(FRAMES[1], ticks=2 * 10**6) + _spb(FRAMES[2]))
    assert [p.ts for p in packets] == [0.0, 2.0, 2.0]  # no time of its own: 0, then the previous packet's
    assert [p.data for p in packets] == FRAMES[:3]  # no snap length (0): the whole packet
    packets, _ = read(tmp_path, shb() + idb(snaplen=20) + _spb(FRAMES[0]), name="snapped.pcapng")
    assert [(p.data, p.orig_len) for p in packets] == [(FRAMES[0][:20], len(FRAMES[0]))]  # cut at the snap length


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_pcapng_ends_read_the_same_at_any_chunk_size(tmp_path, chunk):
    """The end of a file: a 12-byte block last, a block header cut, a block cut, and a second
    section header with an impossible length, whether or not a refill falls there."""
    head = shb() + idb() + epb(FRAMES[0])
    name = str(tmp_path / "x.pcap")
    for tail, warning in ((block(0x0BAD, b""), None),
                          (epb(FRAMES[1])[:10], f"{name}: block header cut short by the end of file at offset {len(head)}"),
                          (epb(FRAMES[1])[:40], f"{name}: block of {len(epb(FRAMES[1]))} bytes cut short by the end of file "
                                                f"at offset {len(head)}"),
                          (shb()[:4] + struct.pack("<I", 1 << 31) + shb()[8:], f"{name}: block length 2147483648 invalid "
                                                                               f"at offset {len(head)}")):
        packets, reader = read(tmp_path, head + tail, chunk_size=chunk)
        assert [p.data for p in packets] == FRAMES[:1]
        assert reader.warnings == ([] if warning is None else [warning + "; kept 1 packets before it"]), tail


def test_stdin_edges_zero_whole_reads_and_the_keep_boundary():
    from trafficlens.capture.reader import _Stdin

    data = bytes(range(200))
    pipe = _Pipe(data)
    pipe_read1 = pipe.read1
    pipe.read1 = lambda n: pipe_read1(min(n, 50))  # one write holds 50 bytes here
    stdin = _Stdin(pipe)
    assert stdin.read(64) == data[:64] and pipe.calls[-1] == ("read", 64)  # KEEP bytes: a small read, waited for
    assert stdin.seek(0) == 0  # exactly KEEP bytes read: still held
    assert stdin.read(0) == b"" and [stdin.read(1) for _ in range(3)] == [data[:1], data[1:2], data[2:3]]
    assert stdin.seek(0) == 0 and stdin.read(-1) == data  # the held bytes, then the rest, whole
    plain = _Stdin(type("Pipe", (), {"read": lambda self, n=-1: data[:n] if n >= 0 else data})())  # no read1
    assert plain.read(100) == data[:100]


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_a_cut_pcapng_gzip_reports_the_gzip_cut_not_the_block(tmp_path, chunk):
    """A pcapng.gz cut short: the records end in a block cut short, but the warning is the gzip
    stream's (the cause), whether the cut block is met in the loop or at a refill."""
    frames = [bytes([i]) * 300 for i in range(40)]
    data = gzip.compress(shb() + idb() + b"".join(epb(f) for f in frames), mtime=0)
    for cut in range(len(data) // 2, len(data) - 9, 7):  # every 7th byte: cuts in headers and in bodies
        packets, reader = read(tmp_path, data[:cut], "x.pcapng.gz", chunk_size=chunk)
        assert 0 < len(packets) < len(frames) and [p.data for p in packets] == frames[: len(packets)]
        assert len(reader.warnings) == 1 and f"gzip stream cut short (compressed byte {cut})" in reader.warnings[0]


# -- the gzip stream on its own: reads like a file, and says where damage begins ---------------------
def _gunzip(data: bytes, monkeypatch, slice_: int, limit: int):
    from trafficlens.capture.reader import _Gunzip

    monkeypatch.setattr(_Gunzip, "SLICE", slice_)
    monkeypatch.setattr(_Gunzip, "LIMIT", limit)
    return _Gunzip(io.BytesIO(data))


def _first_bad_byte(member: bytes) -> int:
    """The index of the compressed byte at which zlib, fed one byte at a time, fails."""
    d = zlib.decompressobj(31)
    for i in range(len(member)):
        try:
            d.decompress(member[i : i + 1])
        except zlib.error:
            return i
    raise AssertionError("no failure")


GUNZIP_RAW = bytes(range(256)) * 40 + b"trafficlens" * 500  # 15,740 bytes, compressible and not


@pytest.mark.parametrize(("slice_", "limit"), [(1, 1), (7, 13), (1 << 15, 1 << 20)])
def test_gunzip_reads_like_a_file_over_members_and_padding(monkeypatch, slice_, limit):
    data = gzip.compress(GUNZIP_RAW[:5000]) + bytes(3) + gzip.compress(GUNZIP_RAW[5000:]) + bytes(5)
    g = _gunzip(data, monkeypatch, slice_, limit)
    parts = [g.read(0), g.read(1), g.read(4999), g.read(2), g.read(10_000)]
    assert [len(p) for p in parts] == [0, 1, 4999, 2, 10_000]
    rest = g.read()
    assert b"".join(parts) + rest == GUNZIP_RAW and len(rest) == len(GUNZIP_RAW) - 15_002
    assert g.read() == b"" and g.read(10) == b"" and g.damage is None  # close: the test below


@pytest.mark.parametrize(("slice_", "limit"), [(1, 1), (7, 13), (1 << 15, 1 << 20)])
def test_gunzip_damage_says_how_much_inflated_and_which_compressed_byte(monkeypatch, slice_, limit):
    first, second = gzip.compress(GUNZIP_RAW[:5000]), gzip.compress(GUNZIP_RAW[5000:])
    whole = first + second

    def damage_of(data):
        g = _gunzip(data, monkeypatch, slice_, limit)
        out = g.read()
        return out, g.damage.offset, g.damage.problem

    # a cut inside the second member: everything that inflated, and the compressed length
    cut = len(first) + len(second) // 2
    expected = GUNZIP_RAW[:5000] + zlib.decompressobj(31).decompress(second[: len(second) // 2])
    assert damage_of(whole[:cut]) == (expected, len(expected), f"gzip stream cut short (compressed byte {cut})")
    # a bad CRC in the second member: all of it inflated, the byte zlib failed at named
    bad = bytearray(whole)
    bad[-8] ^= 0x55
    at = len(first) + _first_bad_byte(bytes(bad[len(first):]))
    assert damage_of(bytes(bad)) == (GUNZIP_RAW, len(GUNZIP_RAW),
                                     f"damaged gzip stream (CRC-32 mismatch, compressed byte {at})")
    bad = bytearray(whole)
    bad[-1] ^= 0x55
    at = len(first) + _first_bad_byte(bytes(bad[len(first):]))
    assert damage_of(bytes(bad)) == (GUNZIP_RAW, len(GUNZIP_RAW),
                                     f"damaged gzip stream (length mismatch, compressed byte {at})")
    # a deflate block type that does not exist: zlib's own words, where no friendlier ones are kept
    broken = bytearray(first)
    broken[10] = 0x07  # first block header: final bit set, type 3 (reserved)
    out, offset, problem = damage_of(bytes(broken) + second)
    assert (out, offset) == (b"", 0) and problem == "damaged gzip stream (invalid block type, compressed byte 10)"
    # bytes after the stream that are not gzip, past zero padding
    out, offset, problem = damage_of(whole + bytes(4) + b"PK\x03\x04")
    assert (out, offset) == (GUNZIP_RAW, len(GUNZIP_RAW))
    assert problem == f"data after the end of the gzip stream is not gzip (compressed byte {len(whole) + 4})"
    out, offset, problem = damage_of(whole + b"\x1f")  # one byte of a magic number
    assert problem == f"data after the end of the gzip stream is not gzip (compressed byte {len(whole)})"


@pytest.mark.parametrize(("slice_", "limit"), [(1, 1), (7, 13), (1 << 15, 1 << 20)])
def test_gunzip_reads_inflate_only_what_they_need_and_close_stops_inflating(monkeypatch, slice_, limit):
    """read(n) inflates until n bytes are there and no further (less than one inflate call's output
    is held over), read(0) returns nothing, and after close only what was held over is returned."""
    data = gzip.compress(GUNZIP_RAW[:5000]) + bytes(3) + gzip.compress(GUNZIP_RAW[5000:]) + bytes(5)
    g = _gunzip(data, monkeypatch, slice_, limit)
    assert g.read(0) == b""
    first = g.read(3)
    assert g.read(0) == b""
    g.close()
    held = g.read()
    assert first == GUNZIP_RAW[:3] and GUNZIP_RAW.startswith(first + held)
    assert len(held) < limit and len(first + held) < len(GUNZIP_RAW)  # nothing inflated after close
    assert g.read() == b"" and g.read(5) == b"" and g.damage is None


# -- classic pcap: records at the limits, cut records named exactly --------------------------------
@pytest.mark.parametrize("chunk", [1024, 1 << 20])
def test_pcap_record_of_exactly_the_largest_plausible_length_is_read(tmp_path, chunk):
    """A record of exactly max(snap length, MAX_RECORD) bytes is a record, whether it is whole in
    the buffer (fast loop) or met at a refill (small chunks)."""
    big = bytes(range(256)) * (MAX_RECORD // 256)
    packets, reader = read(tmp_path, pcap([FRAMES[0], big, FRAMES[1]], snaplen=MAX_RECORD), chunk_size=chunk)
    assert [p.data for p in packets] == [FRAMES[0], big, FRAMES[1]] and not reader.warnings


def test_pcap_cut_short_warnings_say_what_was_cut(tmp_path):
    data = pcap()
    fifth, name = record_offsets(data)[4], str(tmp_path / "x.pcap")
    _, reader = read(tmp_path, data[: fifth + 11])
    assert reader.warnings == [(f"{name}: record header cut short by the end of file at offset {fifth}; "
                                "kept 4 packets before it")]
    _, reader = read(tmp_path, data[:-1])
    assert reader.warnings == [(f"{name}: record of {len(FRAMES[4])} bytes cut short by the end of file "
                                f"at offset {fifth}; kept 4 packets before it")]


# -- gzip: the stream's damage or the records' own, whichever stopped the records ----------------------
def _damaged_third_record() -> bytes:
    data = bytearray(pcap())
    struct.pack_into("<II", data, record_offsets(bytes(data))[2] + 8, 50, 49)
    return bytes(data)


GZ_PCAPNG = shb() + idb() + epb(FRAMES[0])
NOT_GZIP = "data after the end of the gzip stream is not gzip (compressed byte {})"
GZIP_CAUSES = {  # uncompressed bytes, what follows their gzip stream of n bytes, warning(n)
    "pcap header cut": (pcap()[:10], b"junk", lambda n: f"{NOT_GZIP.format(n)} at offset 10; kept 0 packets before it"),
    "no records": (pcap([]), b"junk", lambda n: f"{NOT_GZIP.format(n)} at offset 24; kept 0 packets before it"),
    "pcapng block header cut": (GZ_PCAPNG + epb(FRAMES[1])[:10], b"junk",
                                lambda n: f"{NOT_GZIP.format(n)} at offset {len(GZ_PCAPNG) + 10}; kept 1 packets before it"),
    "only zeros are padding": (pcap(), bytes(3) + b"XYZ",
                               lambda n: f"{NOT_GZIP.format(n + 3)} at offset {len(pcap())}; kept 5 packets before it"),
    "the records' own damage": (_damaged_third_record(), b"junk",
                                lambda n: "record length 50 beyond its length on the wire 49 "
                                          f"at offset {record_offsets(pcap())[2]}; kept 2 packets before it"),
}


@pytest.mark.parametrize("case", list(GZIP_CAUSES))
def test_gzip_damage_is_the_warning_only_where_the_records_merely_ran_out(tmp_path, case):
    """Records that ran out (a header or block cut, or none at all) where a damaged gzip stream
    ended are reported as the gzip damage, the cause, at the uncompressed bytes before it; a
    record damaged in itself is reported as such."""
    raw, after, warning = GZIP_CAUSES[case]
    stream = gzip.compress(raw, mtime=0)
    _, reader = read(tmp_path, stream + after, "x.pcap.gz")
    assert reader.warnings == [f"{tmp_path / 'x.pcap.gz'}: {warning(len(stream))}"]


# -- pcapng: an interface block's options end at its trailing length -----------------------------
def test_pcapng_interface_options_that_fill_the_block_end_at_its_trailing_length(tmp_path):
    """Options may run to the block's end with no end-of-options option. The trailing length after
    them is no option, even when, read as one (big-endian 0x00090004: if_tsresol, 4 bytes), it
    would make the next block's first byte (0) the time resolution: 1 tick a second."""
    options = b"".join(_option(1, bytes(65532), ">") for _ in range(8)) + _option(1, bytes(65516), ">")
    interface = block(1, struct.pack(">HHI", 1, 0, 0) + options, ">")
    assert len(interface) == 9 << 16 | 4
    packets, reader = read(tmp_path, shb(">") + interface + epb(FRAMES[0], ticks=10**6, order=">"))
    assert packets == [RawPacket(1.0, FRAMES[0], len(FRAMES[0]), 1)] and not reader.warnings


# -- classic pcap in windows: the defaults ----------------------------------------------------------
def test_pcap_windows_default_to_the_chunk_size_and_start_with_nothing_read(tmp_path):
    """pcap_windows() without a window size; each window says how to read its records (the compiled
    engine takes the byte order from it) and starts as nothing read: a scanner that finds no whole
    record in a window may leave it as it is, and the reader refills."""
    frames = [bytes([i]) * 500 for i in range(5)]  # longer than a chunk: some windows hold no whole record
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap(frames, big_endian=True, nanosecond=True))
    reader = CaptureReader(path, chunk_size=300)
    got, empty = [], 0
    for window in reader.pcap_windows():
        assert (window.stop, window.records) == (window.start, 0)
        assert window.format[:6] == (">", 1e-9, MAX_RECORD, 1, MAX_RECORD, 16)
        f, pos = window.format, window.start
        if pos + f.header > len(window.data) or pos + f.header + f.record(window.data, pos)[2] > len(window.data):
            empty += 1
            continue  # nothing to read here: left untouched
        got += _scan(window)
    assert empty > 0 and got == frames and reader.packets == 5 and not reader.warnings


# -- the reader's state and files ---------------------------------------------------------------
def test_a_reader_before_its_first_pass(tmp_path):
    empty, capture = tmp_path / "empty.pcap", tmp_path / "x.pcap"
    empty.write_bytes(b"")
    capture.write_bytes(pcap())
    for reader in (CaptureReader(empty), CaptureReader(capture, digest=True)):
        assert (reader.packets, reader.warnings, reader.sha256, reader.stored_bytes) == (0, [], None, None)
    assert (CaptureReader(empty).format, CaptureReader(capture).format) == ("", "pcap")


def _tracked_open(monkeypatch, make=None) -> list:
    """Every file the reader opens, in order; `make(path)` builds the file instead of open()."""
    import trafficlens.capture.reader as reader_module

    opened = []

    def tracking_open(path, mode="r", *args, **kw):
        fh = make(path) if make else open(path, mode, *args, **kw)  # noqa: SIM115 (the reader closes it)
        opened.append(fh)
        return fh

    monkeypatch.setattr(reader_module, "open", tracking_open, raising=False)
    return opened


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_the_reader_closes_every_file_it_opens(tmp_path, monkeypatch, compress):
    opened = _tracked_open(monkeypatch)
    path = tmp_path / "x.pcap.gz"
    path.write_bytes(gzip.compress(pcap(), mtime=0) if compress else pcap())
    reader = CaptureReader(path)
    assert len(opened) == 1 and opened[0].closed  # the format check's file
    assert [p.data for p in reader] == FRAMES
    assert len(opened) == 2 and all(fh.closed for fh in opened)


class _FailingFile(io.BytesIO):
    """A file whose bytes from `at` on cannot be read (EIO), as on a failing disk."""

    def __init__(self, data: bytes, at: int):
        super().__init__(data)
        self.at = at

    def read(self, n: int | None = -1) -> bytes:
        if self.tell() >= self.at:
            raise OSError(5, "Input/output error")
        left = self.at - self.tell()
        return super().read(left if n is None or n < 0 else min(n, left))


def test_open_and_read_errors_give_the_system_s_reason(tmp_path, monkeypatch):
    path = tmp_path / "x.pcap"
    with pytest.raises(CaptureError) as caught:
        CaptureReader(path)
    assert str(caught.value) == f"{path}: cannot open (No such file or directory)"
    data = pcap()
    path.write_bytes(data)
    fourth = record_offsets(data)[3]
    at = [0]
    _tracked_open(monkeypatch, lambda p: _FailingFile(data, at[0]))
    with pytest.raises(CaptureError) as caught:  # the first bytes cannot be read
        CaptureReader(path)
    assert str(caught.value) == f"{path}: cannot read (Input/output error)"
    at[0] = fourth  # the records from the fourth on cannot be read: a warning, and no digest
    reader = CaptureReader(path, chunk_size=64, digest=True)
    assert [p.data for p in reader] == FRAMES[:3] and reader.sha256 is None
    assert reader.warnings == [f"{path}: read error (Input/output error) at offset {fourth}; kept 3 packets before it"]


def test_stdin_reads_the_rest_whole_from_a_buffered_stream():
    """sys.stdin.buffer is a BufferedReader, which refuses read sizes under -1: read(-1) after going
    back returns the held bytes, then the rest whole."""
    from trafficlens.capture.reader import _Stdin

    data = bytes(range(200))
    stdin = _Stdin(io.BufferedReader(io.BytesIO(data)))
    assert stdin.read(4) == data[:4] and stdin.seek(0) == 0
    assert stdin.read(-1) == data and stdin.read(-1) == b""


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_digest_of_standard_input_is_of_every_byte_it_gave(monkeypatch, compress):
    """digest=True on "-" (prep - --label NAME): the SHA-256 and size of the stream as it came, the
    rest after damage included, read in chunks from standard input as the pass's reads are."""
    import hashlib
    import sys

    data = pcap(FRAMES * 40)[:-7]  # the last record cut short: the pass stops before the end
    stored = gzip.compress(data, mtime=0) if compress else data
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(stored))))
    reader = CaptureReader("-", chunk_size=512, digest=True)
    assert len(list(reader)) == 199 and len(reader.warnings) == 1
    assert (reader.sha256, reader.stored_bytes) == (hashlib.sha256(stored).hexdigest(), len(stored))

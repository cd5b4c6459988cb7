"""Property tests of the reader and decoder on random and damaged bytes: only a file that is no
capture is refused; classic pcap records are read exactly until the first bad one (checked
against a reference parser written here); damage keeps every record before it; decode never
raises and its offsets stay inside the frame."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tempfile
import zlib

import pytest

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trafficlens.capture import CaptureReader, PcapngWriter, PcapWriter, RawPacket, build, decode
from trafficlens.errors import CaptureError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAGICS = [b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
          b"\x0a\x0d\x0d\x0a", b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a",
          b"\x0a\x0d\x0d\x0a\x00\x00\x00\x1c\x1a\x2b\x3c\x4d"]
LINKTYPES = [0, 1, 9, 12, 14, 50, 101, 104, 108, 113, 228, 229, 276, 147]
CHUNKS = st.sampled_from([1, 3, 64, 1 << 22])


def read_all(path, chunk_size: int = 1 << 22) -> CaptureReader | None:
    """Read and decode every packet; None when the file is refused as not a capture."""
    try:
        reader = CaptureReader(path, chunk_size=chunk_size)
    except CaptureError:
        return None
    for raw in reader:
        assert isinstance(raw.data, bytes) and raw.orig_len >= 0
        decode(raw)
    assert len(reader.warnings) <= 1
    return reader


def valid_capture(fmt: str, frames: list[bytes], big_endian: bool = False) -> bytes:
    buf = io.BytesIO()
    with (PcapWriter(buf, big_endian=big_endian) if fmt == "pcap" else PcapngWriter(buf, big_endian=big_endian)) as w:
        if fmt == "pcapng":
            w.add_interface(1)
        for i, frame in enumerate(frames):
            w.write(frame, 1_600_000_000 + i)
    return buf.getvalue()


FRAMES = [build.ethernet(build.tcp_packet(b"x" * 30, flags="PA")), build.ethernet(build.udp_packet(b"q" * 9)),
          build.ethernet(build.tcp_packet(b"v6", src="fd00::1", dst="fd00::2"), vlans=(5,))] * 2


PCAP_HEADS = {b"\xd4\xc3\xb2\xa1": ("<", 16), b"\xa1\xb2\xc3\xd4": (">", 16), b"\x4d\x3c\xb2\xa1": ("<", 16),
              b"\xa1\xb2\x3c\x4d": (">", 16), b"\x34\xcd\xb2\xa1": ("<", 24), b"\xa1\xb2\xcd\x34": (">", 24)}


@SETTINGS
@given(st.binary(max_size=3000), CHUNKS)
@example(b"\xd4\xc3", 1)  # a magic cut short: read, with a warning
def test_only_files_that_are_no_capture_are_refused(tmp_path, body, chunk_size):
    path = tmp_path / "fuzz.pcap"
    path.write_bytes(body)
    reader = read_all(path, chunk_size)
    head, heads = body[:4], [*PCAP_HEADS, b"\x0a\x0d\x0d\x0a"]
    if head[:2] == b"\x1f\x8b":
        return  # gzip: refused when the stream breaks before the first four bytes, else read
    if head in heads:
        assert reader is not None
    elif any(m.startswith(head) for m in heads):  # empty, or a magic cut short: nothing, and one warning
        assert reader is not None and reader.packets == 0 and len(reader.warnings) == 1
    else:
        assert reader is None


def pcap_records(data: bytes) -> tuple[list[bytes], bool]:
    """A reference parser of classic pcap as the README describes it: (the records' data up to the
    first that is cut short or impossible, whether something was left unread or nothing read)."""
    order, header = PCAP_HEADS[data[:4]]
    if len(data) < 24:
        return [], True
    snaplen = struct.unpack_from(order + "I", data, 16)[0]
    limit = min(max(snaplen, 262144), 16 << 20)
    out, pos = [], 24
    while pos + header <= len(data):
        caplen, orig = struct.unpack_from(order + "II", data, pos + 8)
        if caplen > limit or (orig and caplen > orig) or pos + header + caplen > len(data):
            break
        out.append(data[pos + header : pos + header + caplen])
        pos += header + caplen
    return out, pos != len(data) or not out


@SETTINGS
@given(st.sampled_from(MAGICS), st.binary(max_size=3000), CHUNKS, st.booleans())
@example(MAGICS[0], b"\x00" * 20 + b"\xff\xff\xff\xff" * 4, 1, False)
def test_random_bodies_after_a_capture_magic(tmp_path, magic, body, chunk_size, compress):
    path = tmp_path / "fuzz.pcap"
    data = magic + body
    path.write_bytes(gzip.compress(data) if compress else data)
    reader = read_all(path, chunk_size)
    assert reader is not None  # a capture magic is never refused
    packets = [p.data for p in reader]
    assert len(packets) == reader.packets
    if magic in PCAP_HEADS:  # exactly the records a plain reading finds, and a warning iff it stopped early
        expected, stopped = pcap_records(data)
        assert packets == expected
        assert len(reader.warnings) == int(stopped)


@SETTINGS
@given(st.sampled_from(list(PCAP_HEADS)), st.lists(st.binary(max_size=80), max_size=12), st.binary(max_size=40),
       st.integers(0, 2**32 - 1), CHUNKS)
def test_classic_pcap_records_are_read_until_the_first_bad_one(tmp_path, magic, payloads, tail, snaplen, chunk_size):
    """Well-formed records, sometimes with a random tail: the reader agrees with the reference parser."""
    order, header = PCAP_HEADS[magic]
    data = magic + struct.pack(order + "HHiIII", 2, 4, 0, 0, snaplen, 1)
    for i, payload in enumerate(payloads):
        data += struct.pack(order + "IIII", 1_600_000_000 + i, i, len(payload), len(payload) + i % 3)
        data += bytes(header - 16) + payload
    data += tail
    path = tmp_path / "records.pcap"
    path.write_bytes(data)
    reader = read_all(path, chunk_size)
    expected, stopped = pcap_records(data)
    assert [p.data for p in reader] == expected and expected[: len(payloads)] == payloads
    assert len(reader.warnings) == int(stopped)


@SETTINGS
@given(st.sampled_from(["pcap", "pcapng"]), st.booleans(), st.integers(0, 600), st.binary(min_size=1, max_size=12),
       CHUNKS)
def test_corrupted_captures_keep_a_prefix_of_their_packets(tmp_path, fmt, big_endian, position, garbage, chunk_size):
    data = valid_capture(fmt, FRAMES, big_endian)
    damaged = bytearray(data)
    damaged[position : position + len(garbage)] = garbage
    path = tmp_path / "fuzz.pcap"
    path.write_bytes(bytes(damaged))
    reader = read_all(path, chunk_size)
    if position < 4:  # the magic itself: refused, or read as some other capture
        return
    assert reader is not None
    packets = [p.data for p in reader]
    ends = [len(valid_capture(fmt, FRAMES[: k + 1], big_endian)) for k in range(len(FRAMES))]
    before = sum(end <= position for end in ends)  # records lying wholly before the damage
    assert packets[:before] == FRAMES[:before]
    if bytes(damaged) == data:
        assert packets == FRAMES and not reader.warnings


@SETTINGS
@given(st.sampled_from(["pcap", "pcapng"]), st.integers(0, 2000))
def test_any_cut_keeps_the_whole_packets_before_it(tmp_path, fmt, cut):
    data = valid_capture(fmt, FRAMES)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:cut])
    reader = read_all(path)
    if cut < 4:  # not even the magic
        assert reader is None or reader.packets == 0
        return
    complete = [p.data for p in CaptureReader(tmp_path / "cut.pcap")]
    ends = [len(valid_capture(fmt, FRAMES[:k])) for k in range(1, len(FRAMES) + 1)]
    assert complete == FRAMES[: sum(end <= cut for end in ends)]  # every record before the cut, none after
    assert bool(reader.warnings) == (min(cut, len(data)) not in ends)  # a cut between records: a shorter file


@SETTINGS
@given(st.binary(max_size=3000))
def test_truncated_gzip_streams(tmp_path, body):
    """A cut gzip stream: a prefix of the records, and one warning."""
    data = gzip.compress(valid_capture("pcap", FRAMES) + body)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(data[: max(10, len(data) * 2 // 3)])
    reader = read_all(path)
    assert reader is not None
    packets = [p.data for p in reader]
    assert packets[: len(FRAMES)] == FRAMES[: len(packets)] and len(reader.warnings) == 1


# -- gzip: every record whole in what decompressed before the damage is kept --------------------------
GZ_FRAMES = [build.ethernet(build.tcp_packet(bytes([i]) * (20 + 7 * i), flags="PA")) for i in range(24)]
GZ_RAW = valid_capture("pcap", GZ_FRAMES)
GZ_ENDS = []  # uncompressed offset where each record ends
for _frame in GZ_FRAMES:
    GZ_ENDS.append((GZ_ENDS[-1] if GZ_ENDS else 24) + 16 + len(_frame))


def whole_records(inflated: int) -> int:
    """Records lying whole in the first `inflated` bytes of GZ_RAW."""
    return sum(end <= inflated for end in GZ_ENDS)


def inflatable(member: bytes) -> int:
    """Bytes that zlib inflates from (a prefix of) one gzip member in a single call, error or not."""
    z = zlib.decompressobj(31)
    try:
        return len(z.decompress(member))
    except zlib.error:
        return -1


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(1, len(GZ_RAW) - 1), max_size=3, unique=True),  # where members split the data
       st.integers(0, 3),  # zero padding after each member, as gzip allows
       st.sampled_from(["cut", "junk", "crc", "length", "garbage", "none"]),
       st.integers(0, 10_000), st.binary(min_size=1, max_size=8),
       st.sampled_from([1, 7, 64, 1 << 15]), st.sampled_from([1, 13, 1 << 20]), CHUNKS)
def test_damaged_gzip_keeps_the_records_before_the_damage(splits, padding, damage, where, garbage, slice_, limit, chunk):
    """Cuts at any offset, junk after the stream, bad CRCs and lengths, garbage inside, over
    concatenated members: exactly the records whole in what inflated before the damage are kept
    (at least them where garbage may inflate into more), and one warning says where."""
    from trafficlens.capture.reader import _Gunzip

    bounds = [0, *sorted(splits), len(GZ_RAW)]
    members = [gzip.compress(GZ_RAW[a:b]) + bytes(padding) for a, b in zip(bounds, bounds[1:])]
    starts = [sum(map(len, members[:j])) for j in range(len(members))]
    data = b"".join(members)
    j = max(k for k in range(len(members)) if starts[k] <= where % len(data))  # the member hit
    offset = where % len(data) - starts[j]
    exact = True  # False: garbage may inflate into more records after the damage
    if damage == "cut":
        data = data[: starts[j] + offset]
        inflated = bounds[j] + max(inflatable(members[j][:offset]), 0)
        clean = offset == 0 or (offset >= len(members[j]) - padding)  # a cut between members
    elif damage == "junk":
        junk = garbage if garbage.strip(b"\0") else b"x"
        data += junk
        inflated, clean = len(GZ_RAW), False
    elif damage in ("crc", "length"):  # the trailer of member j
        trailer = starts[j] + len(members[j]) - padding - (8 if damage == "crc" else 4)
        data = data[:trailer] + bytes([data[trailer] ^ 0xA5]) + data[trailer + 1 :]
        inflated, clean = bounds[j + 1], False
    elif damage == "garbage":
        data = data[: starts[j] + offset] + garbage + data[starts[j] + offset + len(garbage) :]
        inflated = bounds[j] + max(inflatable(members[j][:offset]), 0)
        exact = clean = False
    else:
        inflated, clean = len(GZ_RAW), True
    whole = whole_records(inflated)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Gunzip, "SLICE", slice_)  # small slices and limits reach every refill path
        mp.setattr(_Gunzip, "LIMIT", limit)
        path = os.path.join(tmp, "x.pcap.gz")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            reader = CaptureReader(path, chunk_size=chunk)
        except CaptureError:
            assert inflated < 4 or not exact  # not even the format could be told
            return
        packets = [p.data for p in reader]
    assert packets[:whole] == GZ_FRAMES[:whole]
    if exact:
        assert len(packets) == whole
        ends_between_records = inflated == 24 + sum(16 + len(f) for f in GZ_FRAMES[:whole])
        assert len(reader.warnings) == (0 if clean and ends_between_records and whole else 1), reader.warnings
    else:
        assert len(reader.warnings) <= 1
        if not reader.warnings:  # garbage where nothing checks it (the gzip header's time stamp)
            assert packets == GZ_FRAMES


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=300), st.floats(0, 4e9, allow_nan=False)), max_size=20),
       st.sampled_from(["pcap", "pcapng"]), st.booleans())
def test_written_packets_read_back(tmp_path, packets, fmt, big_endian):
    path = tmp_path / "w.pcap"
    path.write_bytes(b"")
    with (PcapWriter(path, big_endian=big_endian) if fmt == "pcap" else PcapngWriter(path, big_endian=big_endian)) as w:
        if fmt == "pcapng":
            w.add_interface(1)
        for data, ts in packets:
            w.write(data, ts)
    reader = CaptureReader(path)
    read = list(reader)
    assert [p.data for p in read] == [d for d, _ in packets]
    for p, (_, ts) in zip(read, packets):
        assert abs(p.ts - ts) <= 1e-6 + 1e-15 * ts
    assert bool(reader.warnings) == (not packets)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(LINKTYPES), st.integers(0, 70000))
def test_decode_random_frames(frame, linktype, orig_len):
    check_decode(RawPacket(0.0, frame, orig_len, linktype))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(FRAMES + [build.sll2(build.tcp_packet(b"abc", src="fd00::1", dst="fd00::2"), proto=0x86DD)]),
       st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 120))
def test_decode_mutated_headers(frame, mutations, cut):
    mutated = bytearray(frame)
    for position, value in mutations:
        if position < len(mutated):
            mutated[position] = value
    linktype = 276 if frame[:2] == b"\x86\xdd" else 1
    check_decode(RawPacket(0.0, bytes(mutated[: len(mutated) - cut]), len(mutated), linktype))


def check_decode(raw: RawPacket) -> None:
    p = decode(raw)
    if isinstance(p, str):
        assert p in {"non_ip", "other_protocol", "ip_fragment", "malformed", "truncated", "unsupported_link"}
        return
    assert 0 <= p.l3 < p.l4 < p.l7 <= p.end <= len(raw.data)
    assert p.version in (4, 6) and p.proto in (6, 17) and len(p.src) == len(p.dst) == (4 if p.version == 4 else 16)
    assert p.ip_len >= p.l7 - p.l3 and p.payload_len >= 0
    if not p.fragmented:  # a first UDP fragment's payload length is the whole datagram's
        assert p.payload_len <= p.ip_len - (p.l7 - p.l3)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.integers(14, 80), st.integers(0, 255)), max_size=4), st.integers(0, 60),
       st.integers(0, 2000), st.sampled_from([b"", b"abc", bytes(1200)]), st.sampled_from([b"", b"\x01" * 12]))
def test_ethernet_ipv4_tcp_fast_path_agrees_with_the_general_path(mutations, cut, orig_extra, payload, options):
    """decode() takes a shortcut for Ethernet + IPv4 + TCP; the same datagram as raw IPv4 takes
    the general path. Both must agree on every field (offsets shifted by the 14-byte header)."""
    frame = bytearray(build.ethernet(build.tcp_packet(payload, flags="PA", options=options)))
    for position, value in mutations:
        if position < len(frame):
            frame[position] = value
    frame = bytes(frame[: max(14, len(frame) - cut)])
    orig = len(frame) + orig_extra
    fast = decode(RawPacket(0.0, frame, orig, 1))
    general = decode(RawPacket(0.0, frame[14:], orig - 14, 228))
    if isinstance(fast, str) or isinstance(general, str):
        assert fast == general
    else:
        assert fast._replace(frame=b"", linktype=0, l3=0, l4=fast.l4 - 14, l7=fast.l7 - 14, end=fast.end - 14) == \
            general._replace(frame=b"", linktype=0)

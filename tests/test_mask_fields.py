"""Field by field: every header field a mask promises to zero is zero, and every other byte is the
packet's own, for IPv4 and IPv6 (options and extension headers too), TCP and UDP, in every layer
view, on both prep engines.

The expected bytes come from this file's own parser of the packets it builds, with a known
non-zero value in every field, not from features/views.py or features/fields.py: a field the
mask forgets, or a byte it zeroes without promising to, fails here whichever engine does it.
TLS and QUIC values in payloads are checked the same way in test_strict_mask.py.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captures import write_pcap
from trafficlens.capture import RawPacket, build, decode
from trafficlens.prep.config import LAYERS, MASKS, PrepConfig
from trafficlens.prep.capture_file import prepare_capture
from trafficlens.prep.engines.base import EngineSink
from trafficlens.prep.engines import numba_available
from trafficlens.prep.tensors.views import packet_view

BACKENDS = ["python", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]
# What README promises ("Masking"); `ipv6.tclass_flow` is the byte holding half the traffic class and
# the top 4 bits of the flow label: strict zeroes its low nibble only.
PAPER = {"ip.src", "ip.dst", "ipv6.src", "ipv6.dst"}
STRICT = PAPER | {"ip.id", "ip.checksum", "ipv6.flow", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.ack",
                  "tcp.checksum", "tcp.option.tsval", "tcp.option.tsecr", "udp.srcport", "udp.dstport", "udp.checksum"}
ZEROED = {"none": set(), "paper": PAPER, "strict": STRICT}
B = 256  # bytes per packet row: every view here fits whole


# -- this file's parser: a field name for every byte from the IP header on ---------------------------
def _tcp_names(segment: bytes) -> tuple[list[str], int]:
    header = (segment[12] >> 4) * 4
    names = (["tcp.srcport"] * 2 + ["tcp.dstport"] * 2 + ["tcp.seq"] * 4 + ["tcp.ack"] * 4 + ["tcp.offset", "tcp.flags"]
             + ["tcp.window"] * 2 + ["tcp.checksum"] * 2 + ["tcp.urgent"] * 2)
    p = 20
    while p < header:
        kind = segment[p]
        if kind in (0, 1):  # end of list (the rest is padding) or NOP
            names += ["tcp.option"] * (header - p if kind == 0 else 1)
            p = header if kind == 0 else p + 1
            continue
        if p + 1 >= header or segment[p + 1] < 2:  # a kind without a length, or a length under 2:
            names += ["tcp.option"] * (header - p)  # malformed, read no further (nothing after is zeroed)
            break
        size = segment[p + 1]
        if kind == 8 and size == 10 and p + 10 <= header:
            names += ["tcp.option", "tcp.option"] + ["tcp.option.tsval"] * 4 + ["tcp.option.tsecr"] * 4
        else:  # another option, or a timestamp of the wrong length or cut off by the header's end: kept
            names += ["tcp.option"] * min(size, header - p)
        p += size
    return names, header


def field_names(packet: bytes) -> tuple[list[str], int, int]:
    """(a name per byte of an IP packet, transport offset, payload offset)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        names = (["ip.version_ihl", "ip.tos"] + ["ip.length"] * 2 + ["ip.id"] * 2 + ["ip.flags_frag"] * 2
                 + ["ip.ttl", "ip.proto"] + ["ip.checksum"] * 2 + ["ip.src"] * 4 + ["ip.dst"] * 4
                 + ["ip.options"] * (ihl - 20))
        proto, l4 = packet[9], ihl
    else:
        names = (["ipv6.version_tclass", "ipv6.tclass_flow"] + ["ipv6.flow"] * 2 + ["ipv6.length"] * 2
                 + ["ipv6.next", "ipv6.hop_limit"] + ["ipv6.src"] * 16 + ["ipv6.dst"] * 16)
        proto, l4 = packet[6], 40
        while proto in (0, 43, 60, 44):
            size = 8 if proto == 44 else (packet[l4 + 1] + 1) * 8
            names += ["ipv6.ext"] * size
            proto, l4 = packet[l4], l4 + size
    if proto == 6:
        transport, header = _tcp_names(packet[l4:])
    else:
        transport, header = ["udp.srcport"] * 2 + ["udp.dstport"] * 2 + ["udp.length"] * 2 + ["udp.checksum"] * 2, 8
    names += transport
    return names + ["payload"] * (len(packet) - len(names)), l4, l4 + header


def expected_view(frame: bytes, layer: str, mask: str) -> tuple[bytes, list[str]]:
    """The view of an Ethernet frame (no VLAN tag) as README describes it, and its field names."""
    packet = frame[14:]
    names, l4, l7 = field_names(packet)
    masked = bytearray(packet)
    for i, name in enumerate(names):
        if name in ZEROED[mask]:
            masked[i] = 0
        elif name == "ipv6.tclass_flow" and mask == "strict":
            masked[i] &= 0xF0
    if names[l4] == "udp.srcport":  # UDP: the header padded to TCP's 20 bytes
        masked[l4 + 8 : l4 + 8] = bytes(12)
        names[l4 + 8 : l4 + 8] = ["udp.pad"] * 12
        l7 += 12
    if layer == "all":
        ethertype = b"\x08\x00" if packet[0] >> 4 == 4 else b"\x86\xdd"
        return bytes(12) + ethertype + bytes(masked), ["eth.mac"] * 12 + ["eth.type"] * 2 + names
    start = {"network": 0, "transport": l4, "payload": l7}[layer]
    return bytes(masked[start:]), names[start:]


# -- packets with a known non-zero value in every field ----------------------------------------------
V4 = ("10.1.2.3", "172.16.5.9")
V6 = ("2001:db8:1:2::a1", "2001:db8:9:8::b2")
SYN_OPTIONS = (b"\x02\x04\x05\xb4" + b"\x04\x02" + build.tcp_timestamp_option(0x11223344, 0x55667788)[2:]
               + b"\x01\x03\x03\x07")  # MSS, SACK permitted, timestamps, NOP, window scale


def _v4(segment: bytes, src: str, dst: str, proto: int, ident: int, options: bytes = b"") -> bytes:
    packet = bytearray(build.ipv4(segment, src=src, dst=dst, proto=proto, ident=ident, ttl=57, flags=2, options=options))
    packet[1] = 0x28  # DSCP AF11 + ECN
    packet[10:12] = b"\0\0"
    packet[10:12] = struct.pack("!H", build.checksum(bytes(packet[: (packet[0] & 15) * 4])))
    return bytes(packet)


def _v6(segment: bytes, src: str, dst: str, proto: int, flow: int, ext=()) -> bytes:
    packet = bytearray(build.ipv6(segment, src=src, dst=dst, next_header=proto, flow_label=flow, hop_limit=61,
                                  ext_headers=ext))
    packet[0] = 0x6B  # traffic class 0xB8 across the first two bytes
    packet[1] = 0x80 | packet[1] & 0x0F
    return bytes(packet)


def _tcp(payload: bytes, client: bool, seq: int, ack: int, flags: str, ts: int, options: bytes | None = None,
         addrs=V4, port: int = 41234) -> bytes:
    src, dst = addrs if client else addrs[::-1]
    sport, dport = (port, 8443) if client else (8443, port)
    if options is None:
        options = b"\x01\x01" + build.tcp_timestamp_option(ts, ts + 0x0101)[2:]
    segment = bytearray(build.tcp(payload, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=0x7A12,
                                  options=options, src=src, dst=dst))
    if "U" in flags:
        segment[18:20] = b"\x00\x09"
    return bytes(segment)


def tcp4_frames() -> list[bytes]:
    c, s = dict(client=True), dict(client=False)
    return [build.ethernet(_v4(seg, *addrs, 6, ident, opts)) for seg, addrs, ident, opts in (
        (_tcp(b"", seq=0xA1B2C3D4, ack=0, flags="S", ts=0x01020304, options=SYN_OPTIONS, **c), V4, 0x1A2B, b""),
        (_tcp(b"", seq=0x0F1E2D3C, ack=0xA1B2C3D5, flags="SA", ts=0x05060708, options=SYN_OPTIONS, **s), V4[::-1], 0x3C4D, b""),
        (_tcp(b"\x01GET /x HTTP/1.1\r\n\r\n", seq=0xA1B2C3D5, ack=0x0F1E2D3D, flags="PAU", ts=0x0A0B0C0D, **c), V4, 0x1A2C, b""),
        (_tcp(b"\x02" + bytes(range(3, 150)), seq=0x0F1E2D3D, ack=0xA1B2C3E9, flags="PA", ts=0x0E0F1011, **s), V4[::-1], 0x3C4E,
         b"\x94\x04\x00\x00"),  # an IPv4 option (router alert): kept
        (_tcp(b"", seq=0xA1B2C3E9, ack=0x0F1E2E02, flags="FA", ts=0x12131415, **c), V4, 0x1A2D, b""),
    )]


def tcp6_frames() -> list[bytes]:
    c, s = dict(client=True, addrs=V6, port=41235), dict(client=False, addrs=V6, port=41235)
    ext = (build.hop_by_hop(b"\x05\x02\x00\x00"), build.destination_options(b"\x1e\x02\xab\xcd"))
    return [build.ethernet(_v6(seg, *addrs, 6, flow, ext_)) for seg, addrs, flow, ext_ in (
        (_tcp(b"", seq=0x71727374, ack=0, flags="S", ts=0x21222324, options=SYN_OPTIONS, **c), V6, 0xABCDE, ()),
        (_tcp(b"", seq=0x61626364, ack=0x71727375, flags="SA", ts=0x25262728, options=SYN_OPTIONS, **s), V6[::-1], 0x5A5A5, ()),
        (_tcp(b"\x03hello over six", seq=0x71727375, ack=0x61626365, flags="PA", ts=0x292A2B2C, **c), V6, 0xABCDE, ext),
        (_tcp(b"\x04" * 90, seq=0x61626365, ack=0x71727384, flags="PA", ts=0x2D2E2F30, **s), V6[::-1], 0x5A5A5, ()),
    )]


def udp_frames(addrs, v6: bool, port: int) -> list[bytes]:
    frames = []
    for i, payload in enumerate((b"\x05query" + bytes(range(1, 40)), b"\x06answer" + bytes(range(7, 90)), b"\x07again")):
        src, dst = addrs if i % 2 == 0 else addrs[::-1]
        sport, dport = (port, 5353) if i % 2 == 0 else (5353, port)
        datagram = build.udp(payload, sport=sport, dport=dport, src=src, dst=dst)
        ip = _v6(datagram, src, dst, 17, 0x12345 + i) if v6 else _v4(datagram, src, dst, 17, 0x4D5E + i)
        frames.append(build.ethernet(ip))
    return frames


# client port -> the session's frames, in order; every one is kept (no pure ACK, no retransmission)
ALL = {41234: tcp4_frames(), 41235: tcp6_frames(), 53111: udp_frames(V4, False, 53111), 53112: udp_frames(V6, True, 53112)}


def test_every_field_a_mask_zeroes_holds_a_value():
    """Not vacuous: each zeroed field has a non-zero byte in some packet, and so does every other field."""
    seen: dict[str, bool] = {}
    for frames in ALL.values():
        for frame in frames:
            names, _, _ = field_names(frame[14:])
            for name, byte in zip(names, frame[14:]):
                seen[name] = seen.get(name, False) or byte != 0
    assert {name for name, nonzero in seen.items() if not nonzero} <= {"tcp.option"}
    assert STRICT | {"ip.options", "ipv6.ext", "tcp.urgent", "ipv6.tclass_flow"} <= set(seen)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    frames = [(i * 0.01 + k, frame) for k, key in enumerate(ALL) for i, frame in enumerate(ALL[key])]
    return write_pcap(tmp_path_factory.mktemp("fields") / "fields.pcap", frames)


def sessions(capture, layer: str, mask: str, backend: str) -> dict[int, np.ndarray]:
    """The `packets` tensor (M x B) of every session, by client port."""
    config = PrepConfig(layer=layer, mask=mask, packets=8, packet_bytes=B, image_bytes=4 * B)
    out: dict[int, np.ndarray] = {}

    def batch(b, trigger, times):
        for example in b.examples():
            out[example.meta["src_port"]] = np.asarray(example.packets)

    report = prepare_capture(capture, capture.name, config, None, EngineSink(batch), backend=backend)
    assert report.error is None, report.error
    return out


def _mismatch(got: bytes, want: bytes, names: list[str]) -> list[str]:
    return sorted({names[i] if i < len(names) else "past the end" for i in range(max(len(got), len(want)))
                   if i >= len(got) or i >= len(want) or got[i] != want[i]})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", ["none", "paper", "strict"])
@pytest.mark.parametrize("layer", LAYERS)
def test_each_view_zeroes_exactly_the_promised_fields(capture, layer, mask, backend):
    got = sessions(capture, layer, mask, backend)
    assert sorted(got) == sorted(ALL)
    for key, frames in ALL.items():
        views = [expected_view(frame, layer, mask) for frame in frames]
        views = [(want, names) for want, names in views if want]  # a packet with an empty view takes no row
        assert len(views) == (2 if layer == "payload" and key in (41234, 41235) else len(frames))
        for m, (want, names) in enumerate(views):
            row = bytes(got[key][m])
            assert row[: len(want)] == want, (key, m, _mismatch(row[: len(want)], want, names))
            assert row[len(want) :] == bytes(B - len(want)), (key, m, "bytes past the view")
        assert not got[key][len(views) :].any(), key


# -- the same promise on random header values (property-based), both engines' packet views -----------
def numba_view(frame: bytes, layer: str, mask: str) -> bytes:
    from trafficlens.prep.engines import kernels as kn

    data = np.frombuffer(frame, np.uint8)
    rows = np.empty((1, kn.ND), np.int64)
    one = np.array([0], np.int64)
    kn.decode_block(data, one, np.array([len(frame)], np.int64), np.array([len(frame)], np.int64), np.array([1], np.int64),
                    1, rows)
    out = np.zeros(len(frame) + 64, np.uint8)
    n = kn._view(data, 0, rows[0], LAYERS.index(layer), MASKS.index(mask), np.zeros(1 << 16, np.uint8), out, 0,
                 len(out), -1)
    return bytes(out[:n])


PORTS = st.integers(1, 65535)
PAYLOAD = st.binary(min_size=0, max_size=60).filter(lambda p: not p or (p[0] < 0x40 and p[0] != 0x16))  # no TLS, no QUIC
TS = build.tcp_timestamp_option(0x31323334, 0x35363738)[2:]
# Options a mask must read exactly: a SACK block of a timestamp's length (10), a timestamp cut off
# by the header's end, lengths under 2 before a timestamp (malformed: parsing stops, nothing after is
# zeroed), a kind byte with no room for its length as the header's last byte.
ODD_OPTIONS = [b"\x01\x01\x05\x0a" + bytes(range(1, 9)) + TS, b"\x01" * 6 + TS[:6], b"\x03\x01" + TS,
               b"\x04\x00\x01\x01" + TS, b"\x01\x01" + TS + b"\x01\x01\x01\x08"]


@st.composite
def frames(draw) -> bytes:
    v6, tcp = draw(st.booleans()), draw(st.booleans())
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "198.51.100.2")
    payload = draw(PAYLOAD)
    sport, dport = draw(PORTS), draw(PORTS)
    if tcp:
        options = draw(st.sampled_from([b"", SYN_OPTIONS, b"\x01\x01" + build.tcp_timestamp_option(
            draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))[2:], b"\x02\x04\x05\xb4\x00",
            *ODD_OPTIONS]))
        segment = build.tcp(payload, sport=sport, dport=dport, seq=draw(st.integers(0, 2**32 - 1)),
                            ack=draw(st.integers(0, 2**32 - 1)), flags=draw(st.sampled_from(["PA", "S", "SA", "FA", "R"])),
                            window=draw(st.integers(0, 65535)), options=options, src=src, dst=dst)
    else:
        segment = build.udp(payload, sport=sport, dport=dport, src=src, dst=dst)
    proto = 6 if tcp else 17
    if v6:
        ext = draw(st.sampled_from([(), (build.hop_by_hop(b"\x05\x02\x00\x00"),), (build.destination_options(),)]))
        ip = _v6(segment, src, dst, proto, draw(st.integers(0, 0xFFFFF)), ext)
    else:
        ip = _v4(segment, src, dst, proto, draw(st.integers(0, 65535)),
                 draw(st.sampled_from([b"", b"\x94\x04\x00\x00", b"\x01\x01\x01\x00"])))
    return build.ethernet(ip)


def python_view(frame: bytes, layer: str, mask: str) -> bytes:
    return packet_view(decode(RawPacket(0.0, frame, len(frame), 1)), layer, mask)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=200, deadline=None)
@given(frame=frames(), layer=st.sampled_from(LAYERS), mask=st.sampled_from(["none", "paper", "strict"]))
def test_random_headers_keep_every_byte_but_the_promised_fields(backend, frame, layer, mask):
    want, names = expected_view(frame, layer, mask)
    got = (numba_view if backend == "numba" else python_view)(frame, layer, mask)
    assert got == want, _mismatch(got, want, names)


@settings(max_examples=150, deadline=None)
@given(frame=frames(), layer=st.sampled_from(LAYERS))
def test_view_offsets_point_at_the_transport_header_and_the_payload(frame, layer):
    """What explanations map tensor positions back to fields with: in every view, the transport
    header starts at the first offset (its source port there) and the payload at the second."""
    from trafficlens.prep.tensors.views import view_offsets

    packet = decode(RawPacket(0.0, frame, len(frame), 1))
    view = packet_view(packet, layer, "none")
    transport, payload = view_offsets(packet, layer)
    ip = frame[14:]
    names, l4, l7 = field_names(ip)
    if layer == "payload":
        assert (transport, payload) == (-1, 0)
    else:
        assert transport == (0 if layer == "transport" else 14 * (layer == "all") + l4)
        assert view[transport : transport + 4] == ip[l4 : l4 + 4]  # both ports
    assert view[payload:] == ip[l7:]
    assert len(view) - payload == len(ip) - l7


def _odd_option_frame(options: bytes, payload: bytes) -> bytes:
    segment = build.tcp(payload, sport=41234, dport=8443, seq=0xA1B2C3D4, ack=0x0F1E2D3C, flags="PA", window=0x7A12,
                        options=options, src=V4[0], dst=V4[1])
    return build.ethernet(_v4(segment, *V4, 6, 0x1A2B))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("payload", [b"", b"\x02\x0a" + bytes(range(20, 40))], ids=["no-payload", "payload"])
@pytest.mark.parametrize("options", ODD_OPTIONS, ids=["sack-of-10", "timestamp-cut-off", "length-1", "length-0",
                                                      "kind-without-length"])
def test_odd_tcp_options_are_read_exactly(backend, options, payload):
    """Every odd option case on both engines, every view (the property test may not draw them):
    only a whole, well-formed timestamp option is zeroed, nothing past the options is touched,
    and a malformed list neither raises nor loops."""
    frame = _odd_option_frame(options, payload)
    for layer in LAYERS:
        want, names = expected_view(frame, layer, "strict")
        got = (numba_view if backend == "numba" else python_view)(frame, layer, "strict")
        assert got == want, _mismatch(got, want, names)

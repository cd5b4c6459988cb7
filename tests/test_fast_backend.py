"""The numba prep backend gives the very datasets of the Python reference, byte for byte.

Both backends run on the same captures: hand-built ones that reach every branch of the reader,
decoder, session rules, views and masks, and real ones from ../shared/data (nDPI, IoT Sentinel
and the damaged files). Sessions, tensors, counts and warnings must all be equal.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from captures import CLIENT, SERVER, tcp_frame, tcp_session, udp_frame, write_pcap
from trafficlens.capture import CaptureReader, PcapngWriter, PcapWriter, build
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.errors import ConfigError
from trafficlens.prep.engines import numba_available, resolve_backend

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed (the optional fast backend)")


# -- comparing two datasets ------------------------------------------------------------------------
def _run_both(inputs, out: Path, config: PrepConfig, workers: int = 1) -> tuple[Path, Path, list[str], list[str]]:
    warnings = {"python": [], "numba": []}
    for backend in ("python", "numba"):
        prep(inputs, out / backend, config, workers=workers, backend=backend, on_warning=warnings[backend].append)
    return out / "python", out / "numba", warnings["python"], warnings["numba"]


def assert_same_dataset(a: Path, b: Path) -> dict:
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    ma.pop("created"), mb.pop("created")
    ma.pop("sources", None), mb.pop("sources", None)
    assert ma == mb
    ta, tb = pq.read_table(a / "sessions.parquet"), pq.read_table(b / "sessions.parquet")
    assert ta.equals(tb), (ta.slice(0, 5).to_pylist(), tb.slice(0, 5).to_pylist())
    for name in ("image", "packets", "sequence", "stats"):
        assert (a / f"{name}.npy").read_bytes() == (b / f"{name}.npy").read_bytes(), name
    return ma


def compare(inputs, out: Path, config: PrepConfig | None = None, workers: int = 1) -> dict:
    a, b, wa, wb = _run_both(inputs, out, config or PrepConfig(), workers)
    assert wa == wb
    return assert_same_dataset(a, b)


# -- hand-built captures ----------------------------------------------------------------------------
def _client_hello(name: bytes, random: bytes = bytes(32), key: bytes = b"") -> bytes:
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sni)) + sni + struct.pack("!HH", 0x0017, 0)
    if key:  # a key_share before the server name
        ext = struct.pack("!HHHHH", 51, len(key) + 6, len(key) + 4, 29, len(key)) + key + ext
    body = b"\x03\x03" + random + b"\x00" + struct.pack("!H", 2) + b"\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _server_hello(random: bytes, session_id: bytes, key: bytes) -> bytes:
    ext = struct.pack("!HHHH", 51, len(key) + 4, 29, len(key)) + key
    body = b"\x03\x03" + random + bytes([len(session_id)]) + session_id + b"\x13\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


def _quic_long(first: int, dcid: bytes, scid: bytes, payload: bytes) -> bytes:
    """A QUIC v1 long header packet (an Initial gets an empty token) with a 2-byte length."""
    token = b"\x00" if (first >> 4) & 3 == 0 else b""
    return bytes([first]) + struct.pack("!I", 1) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + token \
        + struct.pack("!H", 0x4000 | len(payload)) + payload


def _tcp(payload=b"", **kw):
    return build.tcp(payload, **{k: v for k, v in kw.items() if k in ("sport", "dport", "seq", "ack", "flags", "options")})


def _mixed_ethernet(path: Path) -> Path:
    """Sessions exercising the cleaning rules, views and masks, all on Ethernet."""
    frames = []
    ts_opt = build.tcp_timestamp_option(123456, 654321)
    # plain HTTP-like session with TCP timestamp options
    frames += tcp_session(t0=1.0, requests=(b"GET / HTTP/1.1\r\n\r\n", b"GET /a\r\n\r\n"),
                          responses=(b"HTTP/1.1 200 OK\r\n\r\n" + bytes(900), b"x" * 40))
    # TLS ClientHello carrying a server name, with timestamps
    hello = _client_hello(b"secret.example.com")
    c = dict(src=CLIENT, dst=SERVER, sport=40001, dport=443)
    s = dict(src=SERVER, dst=CLIENT, sport=443, dport=40001)
    frames += [(2.0, tcp_frame(seq=10, flags="S", options=ts_opt, **c)),
               (2.01, tcp_frame(seq=99, ack=11, flags="SA", options=ts_opt, **s)),
               (2.02, tcp_frame(hello, seq=11, ack=100, flags="PA", options=ts_opt, **c)),
               (2.03, tcp_frame(b"\x16\x03\x03" + bytes(60), seq=100, ack=11 + len(hello), flags="PA", **s))]
    # a TLS 1.3 ClientHello cut across two segments inside the server name, and a ServerHello
    hello = _client_hello(b"split.example.com", bytes(range(1, 33)), bytes(range(40, 240)) * 6)
    cut = len(hello) - 12
    c = dict(src=CLIENT, dst=SERVER, sport=40006, dport=443)
    s = dict(src=SERVER, dst=CLIENT, sport=443, dport=40006)
    frames += [(2.5, tcp_frame(seq=10, flags="S", **c)),
               (2.51, tcp_frame(seq=99, ack=11, flags="SA", **s)),
               (2.52, tcp_frame(hello[:cut], seq=11, ack=100, flags="A", **c)),
               (2.53, tcp_frame(hello[cut:], seq=11 + cut, ack=100, flags="PA", **c)),
               (2.54, tcp_frame(_server_hello(bytes(range(100, 132)), bytes(range(1, 33)), bytes(range(7, 39))),
                                seq=100, ack=11 + len(hello), flags="PA", **s))]
    # QUIC: Initials, coalesced Initial + Handshake, short headers; one short header before the peer's
    # long header (its connection ID length unknown: left and counted)
    cid_c, cid_s = bytes(range(1, 6)), bytes(range(11, 19))
    q = dict(sport=40443, dport=443)
    r = dict(src=SERVER, dst=CLIENT, sport=443, dport=40443)
    frames += [(2.6, udp_frame(_quic_long(0xC3, bytes(range(21, 29)), cid_c, bytes(range(1, 201))), **q)),
               (2.61, udp_frame(b"\x41" + cid_s + bytes(range(1, 41)), **q)),
               (2.62, udp_frame(_quic_long(0xC1, cid_c, cid_s, bytes(range(1, 61))) + _quic_long(0xE1, cid_c, cid_s, bytes(range(1, 31))), **r)),
               (2.63, udp_frame(b"\x41" + cid_s + bytes(range(1, 41)), **q)),
               (2.64, udp_frame(b"\x41" + cid_c + bytes(range(1, 41)), **r))]
    # retransmission, pure ACKs, out-of-order segments
    c = dict(src=CLIENT, dst=SERVER, sport=40002, dport=80)
    s = dict(src=SERVER, dst=CLIENT, sport=80, dport=40002)
    frames += [(3.0, tcp_frame(seq=1000, flags="S", **c)),
               (3.01, tcp_frame(seq=5000, ack=1001, flags="SA", **s)),
               (3.02, tcp_frame(seq=1001, ack=5001, flags="A", **c)),
               (3.03, tcp_frame(b"A" * 100, seq=1001, ack=5001, flags="PA", **c)),
               (3.04, tcp_frame(b"C" * 100, seq=1201, ack=5001, flags="PA", **c)),  # gap: 1101..1201 missing
               (3.05, tcp_frame(b"B" * 100, seq=1101, ack=5001, flags="PA", **c)),  # fills it: out of order
               (3.06, tcp_frame(b"A" * 100, seq=1001, ack=5001, flags="PA", **c)),  # retransmission
               (3.07, tcp_frame(seq=5001, ack=1301, flags="A", **s)),  # pure ACK
               (3.08, tcp_frame(b"r" * 300, seq=5001, ack=1301, flags="PA", **s)),
               (3.09, tcp_frame(b"s" * 50, seq=5401, ack=1301, flags="PA", **s)),  # gap
               (3.10, tcp_frame(b"t" * 100, seq=5301, ack=1301, flags="PA", **s)),
               (3.11, tcp_frame(b"u" * 20, seq=5351, ack=1301, flags="PA", **s)),  # overlaps, not contained
               (3.12, tcp_frame(seq=1301, ack=5451, flags="FA", **c))]
    # SYN after FIN on the same 5-tuple, then the same 5-tuple after an idle gap
    frames += tcp_session(sport=40003, t0=4.0, requests=(b"one",), responses=(b"two",))
    frames += tcp_session(sport=40003, t0=4.5, requests=(b"three",), responses=(b"four",))
    frames += tcp_session(sport=40003, t0=400.0, requests=(b"five",), responses=(b"six",), close=False)
    frames += [(700.0, tcp_frame(b"late", seq=77, ack=1, flags="PA", src=CLIENT, dst=SERVER, sport=40003, dport=443))]
    # a capture that starts at the SYN-ACK names the client by it
    frames += [(5.0, tcp_frame(seq=1, ack=2, flags="SA", src=SERVER, dst=CLIENT, sport=443, dport=40004)),
               (5.1, tcp_frame(b"hi", seq=2, ack=2, flags="PA", src=CLIENT, dst=SERVER, sport=40004, dport=443))]
    # UDP, a DNS-like exchange, and a zero-payload datagram
    frames += [(6.0, udp_frame(b"\x12\x34" + bytes(30))), (6.1, udp_frame(b"\x12\x34" + bytes(60), src=SERVER, dst=CLIENT, sport=53, dport=5353)),
               (6.2, udp_frame(b"", sport=7000, dport=7001))]
    # TLS over UDP-looking bytes (a 0x16 first byte) and a payload-less session
    frames += [(6.5, udp_frame(_client_hello(b"udp.example"), sport=4433, dport=4433))]
    frames += tcp_session(sport=40005, t0=7.0, requests=(), responses=())
    # IPv4 fragments: a first fragment (kept, counted) and a later one (skipped)
    seg = build.udp(bytes(64), sport=9999, dport=53)
    frames += [(8.0, build.ethernet(build.ipv4(seg[:40], proto=17, flags=1, ident=7))),
               (8.1, build.ethernet(build.ipv4(seg[40:], proto=17, frag_offset=5, ident=7)))]
    # ICMP, ARP, VLAN and QinQ tagged TCP, PPPoE
    frames += [(9.0, build.ethernet(build.ipv4(bytes(16), proto=1))),
               (9.1, build.ethernet(bytes(28), ethertype=0x0806)),
               (9.2, build.ethernet(build.tcp_packet(b"vlan", sport=1, dport=2, flags="PA"), vlans=(5,))),
               (9.3, build.ethernet(build.tcp_packet(b"qinq", sport=1, dport=2, flags="PA"), vlans=(5, 6), qinq=True)),
               (9.4, build.ethernet(b"\x11\x00\x00\x01" + struct.pack("!H", 30) + b"\x00\x21"
                                    + build.udp_packet(b"pppoe" * 4), ethertype=0x8864))]
    # IPv6 with every extension header, a non-first IPv6 fragment, and a malformed packet
    six = dict(src="fd00::1", dst="fd00::2")
    for i, ext in enumerate(((build.hop_by_hop(),), (build.routing_header(),), (build.destination_options(),),
                             (build.fragment_header(0, more=False),), (build.authentication_header(),),
                             (build.hop_by_hop(), build.destination_options(), build.routing_header()))):
        tcp = build.tcp(b"v6-%d" % i, sport=3000 + i, dport=443, flags="PA", **six)
        frames.append((10.0 + i * 0.01, build.ethernet(build.ipv6(tcp, flow_label=0xABCDE, ext_headers=ext, **six))))
    frames.append((10.2, build.ethernet(build.ipv6(bytes(16), ext_headers=(build.fragment_header(3, more=True),), **six))))
    frames.append((10.3, build.ethernet(b"\x45\x00\x00\x10" + bytes(16))))
    # random payload sizes over one long UDP flow
    rng = random.Random(7)
    for i in range(60):
        frames.append((11.0 + i * 0.3, udp_frame(bytes(rng.randrange(0, 1400)), sport=6000, dport=6001)))
    return write_pcap(path, frames)


def _other_links(folder: Path) -> list[Path]:
    """The same traffic on every other link type, in pcap (both byte orders, ns) and pcapng, gzip."""
    ip4 = lambda payload, sport: build.tcp_packet(payload, sport=sport, dport=80, flags="PA")  # noqa: E731
    ip6 = lambda payload, sport: build.tcp_packet(payload, src="fd00::1", dst="fd00::2", sport=sport, dport=80, flags="PA")  # noqa: E731
    packets = [ip4(b"a" * 30, 1000), ip6(b"b" * 30, 1001), build.udp_packet(b"c" * 12), build.udp_packet(b"d", src="fd00::9", dst="fd00::8")]
    links = {
        12: lambda p: p, 14: lambda p: p, 101: lambda p: p,
        228: lambda p: p, 229: lambda p: p,
        113: lambda p: build.sll(p, proto=0x86DD if p[0] >> 4 == 6 else 0x0800),
        276: lambda p: build.sll2(p, proto=0x86DD if p[0] >> 4 == 6 else 0x0800),
        0: lambda p: build.null_loopback(p, family=30 if p[0] >> 4 == 6 else 2),
        108: lambda p: build.null_loopback(p, family=24 if p[0] >> 4 == 6 else 2, big_endian=True),
        9: lambda p: build.ppp(p, proto=0x0057 if p[0] >> 4 == 6 else 0x0021),
        50: lambda p: build.ppp(p, proto=0x0057 if p[0] >> 4 == 6 else 0x0021, hdlc=False),
        104: lambda p: b"\x0f\x00" + (b"\x86\xdd" if p[0] >> 4 == 6 else b"\x08\x00") + p,
        147: lambda p: p,  # a link type trafficlens does not decode: counted, skipped
    }
    paths = []
    for i, (linktype, wrap) in enumerate(links.items()):
        frames = [(100.0 + k * 0.1, wrap(p)) for k, p in enumerate(packets)]
        if linktype in (228, 229):
            frames = [(t, f) for t, f in frames if (f[0] >> 4 == 4) == (linktype == 228)]
        path = folder / f"link{linktype}.pcap"
        with PcapWriter(path, linktype=linktype, big_endian=i % 2 == 1, nanosecond=i % 3 == 0, gzip=i % 4 == 0) as w:
            for ts, frame in frames:
                w.write(frame, ts)
        paths.append(path)
    # pcapng: two interfaces of different link types, EPBs and a simple packet block, gzip too
    for big, gz in ((False, False), (True, True)):
        path = folder / f"multi-{int(big)}{int(gz)}.pcapng"
        with PcapngWriter(path, big_endian=big, gzip=gz) as w:
            w.add_interface(1)
            w.add_interface(113, tsresol_exp10=9)
            for k in range(5):
                w.write(tcp_frame(b"q" * (10 + k), sport=2000, seq=k * 100 + 1, flags="PA"), 200.0 + k)
                w.write(build.sll(build.udp_packet(b"w" * (20 + k))), 200.5 + k, interface=1)
            w.write(tcp_frame(b"simple", sport=2001, flags="PA"), 0.0, simple=True)
        paths.append(path)
    # snapped records (orig longer than captured) and a file cut inside its last record
    path = folder / "snapped.pcap"
    with PcapWriter(path, snaplen=60) as w:
        for k in range(4):
            w.write(tcp_frame(b"z" * 400, sport=2100, seq=1 + 400 * k, flags="PA"), 300.0 + k)
    paths.append(path)
    whole = write_pcap(folder / "whole.pcap", [(1.0, tcp_frame(b"k" * 50, flags="PA")), (2.0, tcp_frame(b"l" * 50, flags="PA"))])
    cut = folder / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:-7])
    paths.append(cut)
    return paths


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fast-captures")
    _mixed_ethernet(folder / "mixed.pcap")
    _other_links(folder)
    return folder


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["all", "network", "transport", "payload"])
@pytest.mark.parametrize("mask", ["none", "paper", "strict"])
def test_every_layer_and_mask_identical(hand_built, tmp_path, layer, mask):
    manifest = compare([hand_built], tmp_path, PrepConfig(layer=layer, mask=mask, unlabeled="keep", labels="dir"))
    assert manifest["n_sessions"] > 20
    assert manifest["dropped"]["retransmission_packets"] >= 1
    assert manifest["dropped"]["pure_ack_packets"] >= 1


def test_the_hand_built_captures_reach_every_rule(hand_built, tmp_path):
    manifest = compare([hand_built], tmp_path, PrepConfig(labels="dir", unlabeled="keep"))
    skipped = manifest["skipped_packets"]
    for reason in ("non_ip", "other_protocol", "ip_fragment", "ip_fragment_first_kept", "malformed", "unsupported_link"):
        assert skipped.get(reason), reason
    assert manifest["dropped"]["empty_sessions"] >= 1
    assert manifest["unmasked"] == {"quic_short_dcid": 1}
    assert any(e["kind"] == "damaged" for e in manifest["errors"])
    assert {i["format"] for i in manifest["inputs"]} == {"pcap", "pcapng"}


@pytest.mark.parametrize("settings", [
    dict(unit="flow"),
    dict(image_bytes=50, packets=2, packet_bytes=7, sequence_length=3),
    dict(image_bytes=1225, packets=20, packet_bytes=300, layer="payload"),
    dict(min_packets=4, min_bytes=400, idle_timeout=0.2),
    dict(deduplicate=False, mask="none"),
])
def test_other_settings_identical(hand_built, tmp_path, settings):
    compare([hand_built], tmp_path, PrepConfig(**settings))


def test_growth_of_every_pool_keeps_results(hand_built, tmp_path, monkeypatch):
    """Tiny initial tables force every growth path (slots, packet and view pools, arena compaction)."""
    from trafficlens.prep.engines.compiled import CompiledEngine

    monkeypatch.setattr(CompiledEngine, "INITIAL_SLOTS", 1)
    monkeypatch.setattr(CompiledEngine, "INITIAL_NODES", 1)
    monkeypatch.setattr(CompiledEngine, "INITIAL_ARENA", 1)
    compare([hand_built], tmp_path, PrepConfig(image_bytes=100))


def test_idle_sessions_flushed_mid_file_in_the_same_order(tmp_path):
    """Over 65,536 kept packets the reference scans for idle sessions; the order must match."""
    frames = []
    base = [udp_frame(bytes(8 + k % 40), sport=1024 + k % 3000, dport=53) for k in range(3000)]
    t = 0.0
    for k in range(70_000):
        t += 0.01 if k % 5000 else 300.0  # a long pause every 5000 packets makes sessions idle
        frames.append((t, base[k % 3000]))
    path = write_pcap(tmp_path / "long.pcap", frames)
    manifest = compare([path], tmp_path / "out", PrepConfig(deduplicate=False, idle_timeout=60))
    assert manifest["n_sessions"] > 3000


def test_labels_from_flows_and_presets(hand_built, tmp_path):
    table = tmp_path / "flows.csv"
    table.write_text("src_ip,src_port,dst_ip,dst_port,protocol,label\n"
                     f"{CLIENT},40000,{SERVER},443,TCP,web\n{SERVER},53,{CLIENT},5353,udp,dns\n")
    compare([hand_built / "mixed.pcap"], tmp_path / "a", PrepConfig(labels=f"csv:{table}", unlabeled="drop"))
    compare([hand_built / "mixed.pcap"], tmp_path / "b", PrepConfig(labels=f"csv:{table}", unlabeled="as:other"))
    compare([hand_built], tmp_path / "c", PrepConfig(labels="preset:iscx-vpn2016", unlabeled="keep"))


def test_parallel_workers_identical(hand_built, tmp_path):
    compare([hand_built], tmp_path, PrepConfig(labels="dir", unlabeled="keep"), workers=2)


def test_backend_choice(monkeypatch):
    assert resolve_backend("python") == "python"
    monkeypatch.setenv("TRAFFICLENS_BACKEND", "python")
    assert resolve_backend() == "python"
    monkeypatch.delenv("TRAFFICLENS_BACKEND")
    assert resolve_backend() == "numba"
    # a small input skips loading the kernels, unless an engine is asked for
    from trafficlens.prep.engines import SMALL_INPUT_BYTES

    assert resolve_backend(None, SMALL_INPUT_BYTES - 1) == "python"
    assert resolve_backend(None, SMALL_INPUT_BYTES) == "numba" and resolve_backend(None, None) == "numba"
    assert resolve_backend("numba", 100) == "numba"
    monkeypatch.setenv("TRAFFICLENS_BACKEND", "numba")
    assert resolve_backend(None, 100) == "numba"
    with pytest.raises(ConfigError, match="backend must be one of"):
        resolve_backend("fortran")


def test_prep_and_predict_of_a_small_capture_use_the_python_engine(tmp_path, monkeypatch):
    """Which engine runs is visible only in time, so the test watches which one is built."""
    from trafficlens.prep.engines import compiled, reference

    built = []
    for module, name in ((compiled, "CompiledEngine"), (reference, "ReferenceEngine")):
        cls = getattr(module, name)
        monkeypatch.setattr(cls, "__init__", (lambda init, tag: lambda self, *a, **k: built.append(tag) or init(self, *a, **k))(cls.__init__, name))
    monkeypatch.delenv("TRAFFICLENS_BACKEND", raising=False)
    prep([LAB], tmp_path / "ds", PrepConfig(), workers=1)
    assert built == ["ReferenceEngine"]
    prep([LAB], tmp_path / "ds2", PrepConfig(), workers=1, backend="numba")
    assert built[-1] == "CompiledEngine"
    from trafficlens.inference.classifier import Classifier

    rows = Classifier.load(LAB.parent / "model", device="cpu").predict_pcap(LAB)
    assert len(rows) == 30 and built[-1] == "ReferenceEngine"


def test_modified_pcap_gives_the_datasets_of_classic_pcap(tmp_path):
    """The "modified" pcap format (a1b2cd34, 24-byte record headers), both byte orders and gzip:
    the same packets, sessions and datasets as the classic form, on both backends."""
    packets = list(CaptureReader(_mixed_ethernet(tmp_path / "source.pcap")))
    manifests = []
    for name, kw in (("classic", {}), ("modified", dict(modified=True)),
                     ("modified-be", dict(modified=True, big_endian=True, gzip=True))):
        folder = tmp_path / name / "app"
        folder.mkdir(parents=True)
        with PcapWriter(folder / "x.pcap", **kw) as w:
            for p in packets:
                w.write(p.data, p.ts, orig_len=p.orig_len)
        assert [(p.data, p.ts, p.orig_len) for p in CaptureReader(folder / "x.pcap")] == \
            [(p.data, p.ts, p.orig_len) for p in packets]
        manifest = compare([folder.parent], tmp_path / f"out-{name}", PrepConfig(labels="dir"))
        assert manifest["packets_read"] == len(packets)
        manifests.append(manifest)
    tables = [pq.read_table(tmp_path / f"out-{name}" / "python" / "sessions.parquet")
              for name in ("classic", "modified", "modified-be")]
    assert tables[0].num_rows > 3 and tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    for name in ("image", "packets", "sequence", "stats"):
        first = (tmp_path / "out-classic" / "numba" / f"{name}.npy").read_bytes()
        assert first == (tmp_path / "out-modified" / "numba" / f"{name}.npy").read_bytes()
        assert first == (tmp_path / "out-modified-be" / "numba" / f"{name}.npy").read_bytes()
    for key in ("classes", "dropped", "skipped_packets"):
        assert manifests[0][key] == manifests[1][key] == manifests[2][key]
    assert [[e["message"].rpartition(": ")[2] for e in m["errors"]] for m in manifests] == [["1 malformed packets skipped"]] * 3


LAB = Path(__file__).resolve().parents[1] / "examples" / "lab" / "capture-002.pcap.gz"  # 4,729 packets


@pytest.mark.parametrize("damage", ["junk", "cut", "crc", "unreadable"])
def test_damaged_gzip_identical(tmp_path, damage):
    """What a damaged gzip stream decompressed before the damage, on both backends; an unreadable
    gzip file is one error and the run goes on."""
    import gzip

    raw = gzip.decompress(LAB.read_bytes())
    data = gzip.compress(raw)
    folder = tmp_path / "caps" / "app"
    folder.mkdir(parents=True)
    if damage == "junk":
        bad = data + b"junk"
    elif damage == "cut":
        bad = data[: len(data) // 2]
    elif damage == "crc":
        bad = data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]
    else:
        bad = b"\x1f\x8b"
    (folder / "a.pcap.gz").write_bytes(bad)
    write_pcap(folder / "b.pcap", tcp_session())  # a good capture after it
    a, b, wa, wb = _run_both([tmp_path / "caps"], tmp_path / "out", PrepConfig(labels="dir"))
    assert wa == wb and len(wa) == 1 and "a.pcap.gz" in wa[0]
    manifest = assert_same_dataset(a, b)
    packets = {i["path"]: i["packets"] for i in manifest["inputs"]}
    expected = {"junk": 4729, "crc": 4729, "unreadable": 0, "cut": None}[damage]
    if expected is not None:
        assert packets["app/a.pcap.gz"] == expected
    else:
        assert 1000 < packets["app/a.pcap.gz"] < 4729
    assert packets["app/b.pcap"] == 8
    assert [e["kind"] for e in manifest["errors"]] == ["unreadable" if damage == "unreadable" else "damaged"]


# -- real captures --------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_real_captures_identical(shared_data, tmp_path):
    ndpi = sorted((shared_data / "ndpi" / "pcap").iterdir())
    iot = shared_data / "iot-sentinel"
    inputs = ndpi[::6] + [iot / "Aria", iot / "HueBridge", iot / "D-LinkCam"]
    manifest = compare(inputs, tmp_path / "a", PrepConfig(labels="dir", unlabeled="keep"), workers=2)
    assert manifest["n_sessions"] > 1000
    assert {"pcap", "pcapng"} <= {i["format"] for i in manifest["inputs"]}
    compare(inputs[:60], tmp_path / "b", PrepConfig(layer="payload", mask="paper", unit="flow", min_packets=3))


@pytest.mark.shared_data
def test_damaged_captures_identical(shared_data, tmp_path):
    """Every packet before the damage and one warning per damaged file, as the reference."""
    manifest = compare([shared_data / "malformed"], tmp_path, PrepConfig(unlabeled="keep"))
    damaged = {e["file"] for e in manifest["errors"]}
    assert len(damaged) >= 8
    assert manifest["packets_read"] > 0

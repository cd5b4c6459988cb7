"""The strict mask, version 3: TLS hello randoms, session ids, server names and key shares (also
when a hello spans TCP segments), session tickets and pre-shared-key values, and QUIC connection
IDs are zeroed, and nothing else changes.

Every capture here is built twice: with its random values, and with the same values zeroed (same
lengths). Prepared with `--mask strict`, the first must give exactly the bytes this file rebuilds
from the second (IPv4 headers masked by hand: id, checksums, addresses, ports, TCP sequence
numbers), and with `--mask paper` exactly the first's own bytes; in both engines. The field names
of `features/fields.py` must point at exactly the zeroed values.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from captures import CLIENT, SERVER, tcp_frame, udp_frame, write_pcap
from trafficlens.datasets import Dataset
from trafficlens.prep.config import MASK_VERSION, PrepConfig
from trafficlens.prep.local import prep
from trafficlens.errors import ConfigError, DatasetError
from trafficlens.prep.engines import numba_available
from trafficlens.prep.tensors.fields import dataset_layouts, tensor_fields
from trafficlens.prep.tensors.quic import mask_quic, scid_length
from trafficlens.prep.tensors.tls import hello_spans, mask_hello, record_end

BACKENDS = ["python"] + (["numba"] if numba_available() else [])
K, M, B = 8192, 10, 1600  # big enough for every byte of every session to reach the tensors
VALUES = {"tls.handshake.random", "tls.handshake.session_id", "tls.handshake.sni", "tls.handshake.key_exchange",
          "tls.handshake.session_ticket", "tls.handshake.psk_identity", "tls.handshake.psk_ticket_age",
          "tls.handshake.psk_binder", "quic.dcid", "quic.scid", "quic.token"}
HEADERS = {"ip.id", "ip.checksum", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.ack", "tcp.checksum",
           "udp.srcport", "udp.dstport", "udp.checksum"}
HOST = b"secret.example.com"


def fill(n: int, seed: int) -> bytes:
    """n non-zero bytes, different for each seed: a random value as a capture would hold it."""
    return bytes((seed * 31 + i * 7) % 255 + 1 for i in range(n))


# -- messages ---------------------------------------------------------------------------------
def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(host: bytes, random: bytes, session_id: bytes, shares: list[tuple[int, bytes]], extra: bytes = b"") -> bytes:
    """A TLS 1.3 ClientHello record: supported_versions, key_share (the shares given), SNI, ALPN,
    then the `extra` extensions."""
    entries = b"".join(struct.pack("!HH", group, len(key)) + key for group, key in shares)
    extensions = (_ext(43, b"\x02\x03\x04") + _ext(51, struct.pack("!H", len(entries)) + entries)
                  + _ext(0, struct.pack("!HBH", len(host) + 3, 0, len(host)) + host) + _ext(16, b"\x00\x03\x02h2")
                  + extra)
    body = (b"\x03\x03" + random + bytes([len(session_id)]) + session_id + b"\x00\x04\x13\x01\x13\x02\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def server_hello(random: bytes, session_id: bytes, key: bytes) -> bytes:
    """A ServerHello record (key_share: x25519), then ChangeCipherSpec and an encrypted record."""
    extensions = _ext(43, b"\x03\x04") + _ext(51, struct.pack("!HH", 29, len(key)) + key)
    body = (b"\x03\x03" + random + bytes([len(session_id)]) + session_id + b"\x13\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return (b"\x16\x03\x03" + struct.pack("!H", len(handshake)) + handshake + b"\x14\x03\x03\x00\x01\x01"
            + b"\x17\x03\x03\x00\x20" + fill(32, 99))


def ticket_extensions(ticket: bytes, identities: list[tuple[bytes, bytes]], binders: list[bytes]) -> bytes:
    """session_ticket (the ticket given), psk_key_exchange_modes, then pre_shared_key (the last
    extension of a ClientHello): identities of (identity, obfuscated ticket age), and binders."""
    ids = b"".join(struct.pack("!H", len(i)) + i + age for i, age in identities)
    keys = b"".join(bytes([len(b)]) + b for b in binders)
    return (_ext(35, ticket) + _ext(45, b"\x01\x01")
            + _ext(41, struct.pack("!H", len(ids)) + ids + struct.pack("!H", len(keys)) + keys))


def new_session_ticket(ticket: bytes) -> bytes:
    """A TLS 1.2 server's last flight: NewSessionTicket (lifetime hint 7200 s), ChangeCipherSpec, Finished."""
    body = struct.pack("!IH", 7200, len(ticket)) + ticket
    handshake = b"\x04" + len(body).to_bytes(3, "big") + body
    return (b"\x16\x03\x03" + struct.pack("!H", len(handshake)) + handshake + b"\x14\x03\x03\x00\x01\x01"
            + b"\x16\x03\x03\x00\x28" + fill(40, 98))


TICKET_SIZES = dict(ticket=160, identities=(96, 48), binders=(32, 48), issued=176)


def ticket_hello(z, seed: int = 70) -> bytes:
    """A ClientHello resuming a session: a session ticket and two PSK identities with binders."""
    identities = [(z(fill(n, seed + i)), z(fill(4, seed + 10 + i))) for i, n in enumerate(TICKET_SIZES["identities"])]
    extra = ticket_extensions(z(fill(TICKET_SIZES["ticket"], seed + 20)), identities,
                              [z(fill(n, seed + 30 + i)) for i, n in enumerate(TICKET_SIZES["binders"])])
    return client_hello(z(HOST), z(fill(32, seed + 1)), z(fill(32, seed + 2)), [(29, z(fill(32, seed + 3)))], extra)


def quic_long(first: int, dcid: bytes, scid: bytes, payload: bytes, version: int = 1, initial: bool = False,
              token: bytes = b"") -> bytes:
    """A QUIC long header packet: an Initial (with `token`, under 64 bytes) when `initial`, with a 2-byte length."""
    header = bytes([first]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    return header + (bytes([len(token)]) + token if initial else b"") + struct.pack("!H", 0x4000 | len(payload)) + payload


# -- sessions: built with their values (`z` = identity) or with them zeroed -------------------------
def tls_sessions(z, arrival: bool = True) -> list[tuple[float, bytes]]:
    """Four TLS sessions whose ClientHello is cut into 2 segments: inside the random, inside the
    post-quantum key share, inside the host name, and inside the host name again with the
    segments arriving in reverse order (`arrival`; else in the order of the tensors, which
    reorder them). A ServerHello answers each."""
    frames = []
    for n, where in enumerate(("random", "key", "host", "host-reversed")):
        seed = 10 * n
        hello = client_hello(z(HOST), z(fill(32, seed + 1)), z(fill(32, seed + 2)),
                             [(0x11EC, z(fill(1216, seed + 3))), (29, z(fill(32, seed + 4)))])
        name_at = len(hello) - 9 - len(HOST)  # the ALPN extension (9 bytes) follows the name
        cut = {"random": 20, "key": 700}.get(where) or name_at + 7
        reply = server_hello(z(fill(32, seed + 5)), z(fill(32, seed + 2)), z(fill(32, seed + 6)))
        c = dict(src=CLIENT, dst=SERVER, sport=41000 + n, dport=443)
        s = dict(src=SERVER, dst=CLIENT, sport=443, dport=41000 + n)
        t = 1.0 + n
        first = tcp_frame(hello[:cut], seq=11, ack=100, flags="A", **c)
        second = tcp_frame(hello[cut:], seq=11 + cut, ack=100, flags="PA", **c)
        if where == "host-reversed" and arrival:
            first, second = second, first
        frames += [(t, tcp_frame(seq=10, flags="S", **c)), (t + 0.01, tcp_frame(seq=99, ack=11, flags="SA", **s)),
                   (t + 0.02, first), (t + 0.03, second),
                   (t + 0.04, tcp_frame(reply, seq=100, ack=11 + len(hello), flags="PA", **s))]
    return frames


def ticket_sessions(z) -> list[tuple[float, bytes]]:
    """A resumed TLS session: the ClientHello presents a ticket and PSK identities; the server
    answers with a ServerHello and then issues a new ticket (NewSessionTicket in its own segment)."""
    hello = ticket_hello(z)
    reply = server_hello(z(fill(32, 75)), z(fill(32, 72)), z(fill(32, 76)))
    issued = new_session_ticket(z(fill(TICKET_SIZES["issued"], 77)))
    c = dict(src=CLIENT, dst=SERVER, sport=41010, dport=443)
    s = dict(src=SERVER, dst=CLIENT, sport=443, dport=41010)
    return [(30.0, tcp_frame(seq=10, flags="S", **c)), (30.01, tcp_frame(seq=99, ack=11, flags="SA", **s)),
            (30.02, tcp_frame(hello, seq=11, ack=100, flags="PA", **c)),
            (30.03, tcp_frame(reply, seq=100, ack=11 + len(hello), flags="PA", **s)),
            (30.04, tcp_frame(issued, seq=100 + len(reply), ack=11 + len(hello), flags="PA", **s))]


def quic_sessions(z) -> list[tuple[float, bytes]]:
    """QUIC v1 (client Initial with a token; server Initial + Handshake + 1-RTT coalesced; short
    headers both ways), QUIC v2 (its client Initial with a token), one whose first client short header comes before any server long header
    (its ID length unknown: left as it is, and counted), and two UDP sessions that are no QUIC."""
    client_cid, server_cid, first_dcid = fill(5, 51), fill(8, 52), fill(8, 53)
    q = dict(sport=50000, dport=443)
    r = dict(src=SERVER, dst=CLIENT, sport=443, dport=50000)
    frames = [(20.0, udp_frame(quic_long(0xC3, z(first_dcid), z(client_cid), fill(1200, 54), initial=True,
                                         token=z(fill(24, 50))), **q)),
              (20.01, udp_frame(quic_long(0xC1, z(client_cid), z(server_cid), fill(120, 55), initial=True)
                                + quic_long(0xE1, z(client_cid), z(server_cid), fill(90, 56))
                                + b"\x41" + z(client_cid) + fill(40, 57), **r)),
              (20.02, udp_frame(b"\x41" + z(server_cid) + fill(60, 58), **q)),
              (20.03, udp_frame(b"\x41" + z(client_cid) + fill(50, 59), **r))]
    q2 = dict(sport=50001, dport=443)
    r2 = dict(src=SERVER, dst=CLIENT, sport=443, dport=50001)
    frames += [(21.0, udp_frame(quic_long(0xD3, z(first_dcid), z(client_cid), fill(300, 60), 0x6B3343CF, initial=True,
                                          token=z(fill(40, 49))), **q2)),
               (21.01, udp_frame(quic_long(0xF3, z(client_cid), z(server_cid), fill(80, 61), 0x6B3343CF), **r2)),
               (21.02, udp_frame(b"\x43" + z(server_cid) + fill(30, 62), **q2))]
    q3 = dict(sport=50002, dport=443)
    r3 = dict(src=SERVER, dst=CLIENT, sport=443, dport=50002)
    frames += [(22.0, udp_frame(quic_long(0xC3, z(first_dcid), z(client_cid), fill(200, 63), initial=True), **q3)),
               (22.01, udp_frame(b"\x41" + server_cid + fill(40, 64), **q3)),  # unknown length: kept
               (22.02, udp_frame(quic_long(0xE1, z(client_cid), z(server_cid), fill(70, 65)), **r3)),
               (22.03, udp_frame(b"\x41" + z(server_cid) + fill(40, 66), **q3))]
    frames += [(23.0, udp_frame(b"\xc3\x00\x00\x00\x07\x08" + fill(60, 67), sport=50003, dport=9)),  # version 7
               (23.01, udp_frame(b"\x41" + fill(60, 68), sport=50004, dport=9))]  # no long header before
    return frames


def keep(value: bytes) -> bytes:
    return value


def zero(value: bytes) -> bytes:
    return bytes(len(value))


# -- what the tensors must hold, rebuilt here --------------------------------------------------------
def expected_view(frame: bytes, strict: bool) -> bytes:
    """The `all` layer view of an Ethernet + IPv4 (no options) + TCP (no options) / UDP frame."""
    ip = bytearray(frame[14:])
    ip[12:20] = bytes(8)  # addresses
    if strict:
        ip[4:6] = ip[10:12] = bytes(2)  # identification, header checksum
        if ip[9] == 6:
            ip[20:32] = bytes(12)  # ports, sequence and acknowledgement numbers
            ip[36:38] = bytes(2)  # checksum
        else:
            ip[20:24] = bytes(4)  # ports
            ip[26:28] = bytes(2)  # checksum
    if ip[9] == 17:
        ip[28:28] = bytes(12)  # UDP header padded to TCP's 20 bytes
    return bytes(12) + b"\x08\x00" + bytes(ip)


# Where each layer view starts in the `all` view of these frames (IPv4 and TCP without options; a
# UDP header padded to 20 bytes): the rebuilt Ethernet header, the IP header, the TCP/UDP header.
LAYER_START = {"all": 0, "network": 14, "transport": 34, "payload": 54}


def expected_rows(frames: list[tuple[float, bytes]], sport: int, strict: bool, layer: str = "all") -> tuple[bytes, bytes]:
    """(image, packets) bytes of the session of client port `sport`, in time order; a packet whose
    view is empty (no payload in the `payload` view) is not stored."""
    views = [expected_view(f, strict)[LAYER_START[layer]:] for _, f in sorted(frames)
             if sport in struct.unpack("!HH", f[34:38])]
    views = [v for v in views if v]
    image = b"".join(views)[:K].ljust(K, b"\0")
    packets = b"".join(v[:B].ljust(B, b"\0") for v in views[:M]).ljust(M * B, b"\0")
    return image, packets


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("strict-mask")
    out = {}
    for name, z in (("values", keep), ("zeroed", zero)):
        write_pcap(root / name / "tls.pcap", tls_sessions(z))
        write_pcap(root / name / "quic.pcap", quic_sessions(z))
        write_pcap(root / name / "ticket.pcap", ticket_sessions(z))
        out[name] = root / name
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def datasets(request, captures, tmp_path_factory) -> dict[str, Dataset]:
    root = tmp_path_factory.mktemp(f"strict-{request.param}")
    config = dict(unlabeled="keep", deduplicate=False, image_bytes=K, packets=M, packet_bytes=B)
    return {mask: Dataset.open(prep([captures["values"]], root / mask, PrepConfig(mask=mask, **config), workers=1,
                                    backend=request.param))
            for mask in ("strict", "paper")}


def _row(ds: Dataset, sport: int) -> int:
    return ds.table.column("src_port").to_pylist().index(sport)


SESSIONS = [(41000 + n, "tls") for n in range(4)] + [(50000 + n, "quic") for n in range(5)] + [(41010, "ticket")]


def _frames(kind: str, z) -> list[tuple[float, bytes]]:
    """A capture's frames in the order of the tensors."""
    return {"tls": lambda: tls_sessions(z, arrival=False), "quic": lambda: quic_sessions(z),
            "ticket": lambda: ticket_sessions(z)}[kind]()


@pytest.mark.parametrize("sport,kind", SESSIONS)
def test_strict_zeroes_the_values_and_nothing_else(datasets, sport, kind):
    for mask, frames in (("paper", _frames(kind, keep)), ("strict", _frames(kind, zero))):
        ds = datasets[mask]
        row = _row(ds, sport)
        image, packets = expected_rows(frames, sport, strict=mask == "strict")
        got_image = bytes(np.asarray(ds.tensor("image")[row]))
        assert got_image == image, (mask, [i for i in range(K) if got_image[i] != image[i]][:20])
        assert bytes(np.asarray(ds.tensor("packets")[row]).ravel()) == packets, mask


@pytest.fixture(scope="module", params=BACKENDS)
def layer_datasets(request, captures, tmp_path_factory) -> dict[tuple[str, str], Dataset]:
    """The other layer views, each with both masks (the `all` view is `datasets`)."""
    root = tmp_path_factory.mktemp(f"layers-{request.param}")
    config = dict(unlabeled="keep", deduplicate=False, image_bytes=K, packets=M, packet_bytes=B)
    return {(layer, mask): Dataset.open(prep([captures["values"]], root / f"{layer}-{mask}",
                                             PrepConfig(mask=mask, layer=layer, **config), workers=1,
                                             backend=request.param))
            for layer in ("network", "transport", "payload") for mask in ("strict", "paper")}


@pytest.mark.parametrize("layer", ["network", "transport", "payload"])
def test_every_layer_view_zeroes_the_values_and_nothing_else(layer_datasets, layer):
    """The same promise in the views that start at the IP header, the TCP/UDP header and the payload:
    a hello's values (also across segments) and QUIC IDs are found wherever the view starts."""
    for sport, kind in SESSIONS:
        for mask, frames in (("paper", _frames(kind, keep)), ("strict", _frames(kind, zero))):
            ds = layer_datasets[layer, mask]
            row = _row(ds, sport)
            image, packets = expected_rows(frames, sport, strict=mask == "strict", layer=layer)
            got_image = bytes(np.asarray(ds.tensor("image")[row]))
            assert got_image == image, (sport, mask, [i for i in range(K) if got_image[i] != image[i]][:20])
            assert bytes(np.asarray(ds.tensor("packets")[row]).ravel()) == packets, (sport, mask)


def test_the_values_are_there_to_zero(datasets):
    """The sessions hold what the mask must find: a hello cut across segments, coalesced QUIC packets."""
    for sport, kind in SESSIONS[:5]:
        values, zeroed = expected_rows(_frames(kind, keep), sport, False)[0], expected_rows(_frames(kind, zero), sport, False)[0]
        assert sum(a != b for a, b in zip(values, zeroed)) > 60, sport
    frames = [f for _, f in sorted(tls_sessions(keep)) if 41002 in struct.unpack("!HH", f[34:38])]
    assert frames[2][54:].endswith(HOST[:7]) and frames[3][54:].startswith(HOST[7:])  # the name cut by the segments


def test_manifest_records_mask_version_and_the_ids_left(datasets):
    strict, paper = datasets["strict"].manifest, datasets["paper"].manifest
    assert strict["config"]["mask_version"] == MASK_VERSION == 3
    assert strict["unmasked"] == {"quic_short_dcid": 1}  # session 50002's first short header
    assert paper["unmasked"] == {}


def test_field_names_point_at_exactly_the_zeroed_values(datasets, captures):
    strict, paper = datasets["strict"], datasets["paper"]
    layouts = dataset_layouts(strict, range(len(strict)), [captures["values"]])
    assert len(layouts) == len(strict)
    named_values = 0
    for row, session in layouts.items():
        s = np.asarray(strict.tensor("image")[row])
        p = np.asarray(paper.tensor("image")[_row(paper, int(strict.table.column("src_port")[row].as_py()))])
        names = np.array(tensor_fields(s, session, "all", M, B).image)
        values = np.isin(names, list(VALUES))
        named_values += int(values.sum())
        assert (s[values] == 0).all() and (p[values] != 0).all(), row
        changed = s != p
        assert set(names[changed]) <= VALUES | HEADERS, (row, set(names[changed]) - VALUES - HEADERS)
        assert set(names[values]) <= set(names[changed])
    # random, session id, key shares and host name of 4 ClientHellos and 4 ServerHellos
    tls = 4 * (32 + 32 + 1216 + 32 + len(HOST)) + 4 * (32 + 32 + 32)
    # the resumed session: its ClientHello (random, session id, key share, host name, ticket, PSK
    # identities, their ages and binders), its ServerHello and the ticket issued
    tls += ((32 + 32 + 32 + len(HOST) + TICKET_SIZES["ticket"] + sum(TICKET_SIZES["identities"]) + 2 * 4
             + sum(TICKET_SIZES["binders"])) + (32 + 32 + 32) + TICKET_SIZES["issued"])
    # QUIC IDs: v1 (client Initial 8 + 5; server Initial and Handshake 2 x (5 + 8) and short 5;
    # short headers 8 and 5), v2 (8 + 5, 5 + 8, short 8), the one with an ID left (8 + 5, 5 + 8, 8)
    quic = (13 + 26 + 5 + 8 + 5) + (13 + 13 + 8) + (13 + 13 + 8)
    quic += 24 + 40  # the client Initials' tokens (v1, v2)
    assert named_values == tls + quic


def test_layouts_of_a_version_1_dataset_allow_its_fewer_zeros(datasets, captures, tmp_path):
    """Explanations rebuild a dataset's sessions with today's mask: a version-1 dataset, which kept
    the values version 2 zeroes, must still match its captures, and a changed byte must not."""
    strict, paper = datasets["strict"], datasets["paper"]
    row = _row(strict, 41002)
    image = np.load(strict.path / "image.npy")
    version_1 = np.where(image[row] == 0, np.asarray(paper.tensor("image")[_row(paper, 41002)]), image[row])
    assert (version_1 != image[row]).sum() > 1000
    for kept_key, changed, fails in ((False, False, False), (False, True, True), (True, False, True)):
        old = tmp_path / f"{kept_key}-{changed}"
        shutil.copytree(strict.path, old)
        manifest = json.loads((old / "manifest.json").read_text())
        if not kept_key:
            del manifest["config"]["mask_version"]
        (old / "manifest.json").write_text(json.dumps(manifest))
        image[row] = version_1
        if changed:
            image[row][22] ^= 1  # the first packet's TTL, which no mask zeroes: the capture changed
        np.save(old / "image.npy", image)
        if fails:
            with pytest.raises(DatasetError, match="no longer matches its capture"):
                dataset_layouts(Dataset.open(old), [row], [captures["values"]])
        else:
            assert len(dataset_layouts(Dataset.open(old), [row], [captures["values"]])[row]) == 5


# -- the parsers on their own: bounds, and the compiled copies ----------------------------------------
def _messages() -> list[tuple[str, bytes]]:
    hello = client_hello(HOST, fill(32, 1), fill(32, 2), [(29, fill(32, 3)), (23, fill(65, 4))])
    quic = [quic_long(0xC3, fill(8, 5), fill(5, 6), fill(40, 7), initial=True, token=fill(12, 11))
            + quic_long(0xE1, fill(8, 5), fill(5, 6), fill(9, 8)) + b"\x41" + fill(20, 9),
            b"\x80" + bytes(4) + b"\x04" + fill(4, 1) + b"\x03" + fill(3, 2) + struct.pack("!II", 1, 0xFF00001D)]  # negotiation
    return ([("tls", hello), ("tls", server_hello(fill(32, 1), fill(32, 2), fill(32, 3))), ("tls", ticket_hello(keep)),
             ("tls", new_session_ticket(fill(TICKET_SIZES["issued"], 77)))] + [("quic", d) for d in quic])


def _variants(message: bytes, rng: np.random.Generator):
    for n in range(len(message) + 1):  # every truncation
        yield message[:n]
    for _ in range(300):  # random damage
        damaged = bytearray(message)
        for i in rng.integers(0, len(damaged), rng.integers(1, 4)):
            damaged[i] = rng.integers(0, 256)
        yield bytes(damaged)


def test_hello_spans_name_every_value_once():
    hello = client_hello(HOST, fill(32, 1), fill(32, 2), [(29, fill(32, 3)), (23, fill(65, 4))])
    spans = hello_spans(hello)
    assert [(name, length) for name, _, length in spans] == [
        ("tls.handshake.random", 32), ("tls.handshake.session_id", 32), ("tls.handshake.key_exchange", 32),
        ("tls.handshake.key_exchange", 65), ("tls.handshake.sni", len(HOST))]
    assert hello[spans[-1][1] : spans[-1][1] + len(HOST)] == HOST
    assert record_end(hello, 0, len(hello)) == len(hello)
    reply = server_hello(fill(32, 1), fill(32, 2), fill(32, 3))
    assert [name for name, _, _ in hello_spans(reply)] == ["tls.handshake.random", "tls.handshake.session_id",
                                                            "tls.handshake.key_exchange"]
    retry = reply.replace(_ext(51, struct.pack("!HH", 29, 32) + fill(32, 3)), _ext(51, b"\x00\x1d"))  # no key
    assert "tls.handshake.key_exchange" not in [name for name, _, _ in hello_spans(retry)]
    # a resumption: the ticket, then each PSK identity and its ticket age, then each binder
    resumed = ticket_hello(keep)
    spans = hello_spans(resumed)
    assert [(name, length) for name, _, length in spans[4:]] == [
        ("tls.handshake.session_ticket", 160), ("tls.handshake.psk_identity", 96), ("tls.handshake.psk_ticket_age", 4),
        ("tls.handshake.psk_identity", 48), ("tls.handshake.psk_ticket_age", 4), ("tls.handshake.psk_binder", 32),
        ("tls.handshake.psk_binder", 48)]
    assert [resumed[at : at + n] for _, at, n in spans[4:]] == [
        fill(160, 90), fill(96, 70), fill(4, 80), fill(48, 71), fill(4, 81), fill(32, 100), fill(48, 101)]
    asking = client_hello(HOST, fill(32, 1), fill(32, 2), [(29, fill(32, 3))], _ext(35, b""))  # an empty ticket asks for one
    assert "tls.handshake.session_ticket" not in [name for name, _, _ in hello_spans(asking)]
    issued = new_session_ticket(fill(176, 77))
    assert [(name, issued[at : at + n]) for name, at, n in hello_spans(issued)] == [("tls.handshake.session_ticket", fill(176, 77))]


def _zeroed(message: bytes, start: int = 0) -> set[int]:
    """The offsets `mask_hello` zeroes (non-zero bytes only: `fill` values are never 0)."""
    masked = bytearray(message)
    assert mask_hello(masked, start) == sum(length for _, _, length in hello_spans(message, start))  # its return
    return {i for i, (a, b) in enumerate(zip(message, masked)) if a != b}


def test_a_cut_hello_zeroes_exactly_the_whole_hello_s_bytes_before_the_cut():
    """A snapped or segmented hello: the bytes zeroed in its first n bytes are those the whole
    hello's mask zeroes there, for every n and at an offset into a buffer; nothing raises."""
    prefix = fill(7, 8)
    for _, message in _messages()[:4]:
        whole = _zeroed(message)
        assert whole  # there is something to zero
        for n in range(len(message) + 1):
            assert _zeroed(message[:n]) == {i for i in whole if i < n}, n
            assert _zeroed(prefix + message[:n], len(prefix)) == {i + len(prefix) for i in whole if i < n}, n
    assert hello_spans(fill(10, 1) + b"\x16\x03\x01", 10) == []  # a record header's first bytes at the end
    assert record_end(fill(10, 1) + b"\x16\x03\x01", 10, 13) == 0


def test_a_hello_parse_stays_inside_its_first_handshake_message():
    """A record holding a ServerHello and then another message: an extensions length that claims
    more than the ServerHello holds must not carry the parse into the next message."""
    key = fill(32, 3)
    extensions = _ext(43, b"\x03\x04") + _ext(51, struct.pack("!HH", 29, len(key)) + key) + _ext(65000, fill(230, 4))
    # the next message (a certificate, say): read as extensions, its header is one of 8 bytes and
    # then comes what parses as a key_share of 32 bytes
    after = b"\x0b\x00\x00\x08" + fill(8, 6) + _ext(51, struct.pack("!HH", 29, 32) + fill(32, 5))
    body = (b"\x03\x03" + fill(32, 1) + b"\x20" + fill(32, 2) + b"\x13\x01\x00"
            + struct.pack("!H", len(extensions) + len(after)))
    hello = b"\x02" + (len(body) + len(extensions)).to_bytes(3, "big") + body + extensions
    assert len(body) + len(extensions) >= 256  # the handshake length's middle byte is not 0
    record = b"\x16\x03\x03" + struct.pack("!H", len(hello) + len(after)) + hello + after
    zeroed = _zeroed(record)
    assert zeroed and max(zeroed) < 5 + len(hello)
    if numba_available():  # the compiled engine's parser too
        from trafficlens.prep.engines import kernels as kn

        src = np.frombuffer(record, np.uint8)
        dst = src.copy()
        kn._mask_hello(src, 0, 0, len(record), dst)
        assert bytes(dst) == bytes(_masked(record))


def test_a_gap_in_a_segmented_hello_stops_the_stream_there():
    """A ClientHello over three segments with the middle one lost: the segment after the gap is not
    part of the hello's stream, so nothing in it is zeroed (its bytes are not where the parse thinks)."""
    from trafficlens.prep.tensors.tls import hello_stream, mask_hello_stream

    hello = client_hello(HOST, fill(32, 1), fill(32, 2), [(29, fill(32, 3)), (23, fill(65, 4))])
    cut = [0, 60, 140, len(hello)]
    pieces = [(cut[i], hello[cut[i] : cut[i + 1]], 0) for i in range(3)]
    whole = mask_hello_stream(pieces)
    assert set(whole) == {0, 1, 2} and b"".join(whole[i] for i in range(3)) == bytes(_masked(hello))
    gap = [pieces[0], pieces[2]]
    stream, parts = hello_stream(gap)
    assert len(stream) == 60 and [i for i, _ in parts] == [0]
    assert mask_hello_stream(gap) == {}


def _masked(message: bytes) -> bytearray:
    masked = bytearray(message)
    mask_hello(masked)
    return masked


def test_quic_ids_of_coalesced_packets():
    datagram = _messages()[4][1]
    masked = bytearray(datagram)
    assert mask_quic(masked, 0, len(masked), 5) is False
    assert scid_length(datagram, 0, len(datagram)) == 5
    assert sum(a != b for a, b in zip(datagram, masked)) == 8 + 5 + 12 + 8 + 5 + 5  # IDs, the Initial's token
    assert mask_quic(bytearray(datagram), 0, len(datagram)) is True  # the short header's ID length unknown
    assert scid_length(b"\xc3\x00\x00\x00\x07\x00\x00" + bytes(20), 0, 27) == -1  # an unknown version


@pytest.mark.skipif(not numba_available(), reason="numba is not installed (the optional fast backend)")
def test_compiled_parsers_match_the_reference_on_damaged_bytes():
    from trafficlens.prep.engines import kernels as kn

    rng = np.random.default_rng(12)
    for kind, message in _messages():
        for data in _variants(message, rng):
            n = len(data)
            src = np.frombuffer(data + bytes(rng.integers(0, 256, 64, dtype=np.uint8)), np.uint8)  # junk past the end
            dst = np.frombuffer(data + b"\xaa" * 64, np.uint8).copy()  # a guard past the end
            if kind == "tls":
                expected = bytearray(data)
                mask_hello(expected)
                kn._mask_hello(src, 0, 0, n, dst)
                assert bytes(dst[:n]) == bytes(expected) and bytes(dst[n:]) == b"\xaa" * 64, data.hex()
                assert kn._record_end(src, 0, n) == record_end(data, 0, n)
                continue
            for dcid in (-1, 5):
                expected = bytearray(data)
                dst = np.frombuffer(data + b"\xaa" * 64, np.uint8).copy()
                assert kn._mask_quic(src, 0, 0, n, dst, dcid, True) == mask_quic(expected, 0, n, dcid)
                assert bytes(dst[:n]) == bytes(expected) and bytes(dst[n:]) == b"\xaa" * 64, (dcid, data.hex())
            assert kn._quic_scid(src, 0, 0, n) == scid_length(data, 0, n)


# -- settings ---------------------------------------------------------------------------------------
def test_mask_version_of_settings_without_it_is_1_and_prep_makes_only_the_current_one(tmp_path):
    old = PrepConfig.from_dict({k: v for k, v in PrepConfig().to_dict().items() if k != "mask_version"})
    assert old.mask_version == 1 and old.mask_outdated and not PrepConfig().mask_outdated
    with pytest.warns(UserWarning, match="strict mask version 1"):
        assert old.for_prediction().mask_version == MASK_VERSION
    with pytest.raises(ConfigError, match="mask_version 1 tensors can no longer be made"):
        prep([tmp_path], tmp_path / "ds", old)
    with pytest.raises(ConfigError, match="mask_version must be 1 to 3"):
        PrepConfig(mask_version=4)
    assert json.loads(json.dumps(PrepConfig().to_dict()))["mask_version"] == 3

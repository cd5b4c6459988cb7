"""explain: byte positions map to the right protocol fields; Grad-CAM finds a planted region;
attention weights are distributions; the CLI writes JSON and an offline HTML page."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from captures import tcp_session, udp_frame, write_pcap
from trafficlens.capture import RawPacket, build, decode
from trafficlens.cli import cli
from trafficlens.datasets import Dataset
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.errors import DatasetError
from trafficlens.explain.maps import explain_tensors
from trafficlens.prep.tensors.fields import FILL, PacketLayout, dataset_layouts, packet_fields, tensor_fields
from trafficlens.prep.tensors.tls import hello_spans
from trafficlens.prep.tensors.views import packet_view
from trafficlens.models import create_model, list_models, model_info
from trafficlens.models.layers import TrafficModel, square_image
from trafficlens.training import TrainConfig, train_run

LAYERS = ("all", "network", "transport", "payload")
TCP_OPTIONS = b"\x02\x04\x05\xb4" + b"\x01" + b"\x03\x03\x07" + build.tcp_timestamp_option(111, 222)  # MSS, NOP, WS, NOP NOP TS


def client_hello(host: bytes) -> bytes:
    """A TLS 1.2 record holding a ClientHello with one cipher suite, SNI and ALPN."""
    sni = struct.pack("!HHHBH", 0, len(host) + 5, len(host) + 3, 0, len(host)) + host
    alpn = struct.pack("!HHH", 16, 5, 3) + b"\x02h2"
    extensions = sni + alpn
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def decoded(frame: bytes):
    packet = decode(RawPacket(0.0, frame, len(frame), 1))
    assert not isinstance(packet, str), packet
    return packet


def named(view: bytes, names: list[str], field: str) -> bytes:
    """The bytes of `view` at the positions named `field`, in order."""
    return bytes(view[i] for i, n in enumerate(names) if n == field)


def positions(names: list[str], field: str) -> list[int]:
    return [i for i, n in enumerate(names) if n == field]


# -- field mapping on hand-built packets ----------------------------------------------------------
@pytest.mark.parametrize("layer", LAYERS)
def test_tcp_fields_with_options_and_a_tls_record(layer):
    hello = client_hello(b"example.org")
    frame = build.ethernet(build.ipv4(build.tcp(hello, sport=40000, dport=443, seq=7, flags="PA", options=TCP_OPTIONS,
                                                src="10.1.1.1", dst="10.2.2.2"), src="10.1.1.1", dst="10.2.2.2", ttl=57))
    p = decoded(frame)
    view = packet_view(p, layer, "none")
    names = packet_fields(view, PacketLayout.of(p, layer), layer)
    assert len(names) == len(view)
    base = {"all": 34, "network": 20, "transport": 0, "payload": None}[layer]  # where TCP starts
    if layer != "payload":
        # every header field read at its named positions holds the value that was built
        assert named(view, names, "tcp.srcport") == struct.pack("!H", 40000)
        assert named(view, names, "tcp.dstport") == struct.pack("!H", 443)
        assert named(view, names, "tcp.seq") == struct.pack("!I", 7)
        assert named(view, names, "tcp.flags") == bytes([0x18])
        assert named(view, names, "tcp.hdr_len") == bytes([(20 + len(TCP_OPTIONS)) // 4 << 4])
        assert named(view, names, "tcp.option_kind") == bytes([2, 1, 3, 1, 1, 8])
        assert named(view, names, "tcp.option_len") == bytes([4, 3, 10])
        assert named(view, names, "tcp.option.mss") == struct.pack("!H", 1460)
        assert named(view, names, "tcp.option.timestamp") == struct.pack("!II", 111, 222)
        assert positions(names, "tcp.flags") == [base + 13]
    if layer in ("all", "network"):
        assert named(view, names, "ip.ttl") == bytes([57])
        assert named(view, names, "ip.proto") == bytes([6])
        assert named(view, names, "ip.len") == struct.pack("!H", len(frame) - 14)
        assert named(view, names, "ip.src") == bytes([10, 1, 1, 1])
    if layer == "all":
        assert names[:12] == ["eth.dst"] * 6 + ["eth.src"] * 6
        assert named(view, names, "eth.type") == b"\x08\x00"
        assert positions(names, "ip.ttl") == [22]
    else:
        assert "eth.type" not in names
    if layer in ("transport", "payload"):
        assert not any(n.startswith("ip.") for n in names)
    # the TLS record: header fields, the ClientHello, and the SNI exactly where the mask looks for it
    start = positions(names, "tls.record.content_type")[0]
    assert view[start:] == hello
    assert named(view, names, "tls.record.content_type") == b"\x16"
    assert named(view, names, "tls.record.length") == struct.pack("!H", len(hello) - 5)
    assert named(view, names, "tls.handshake.type") == b"\x01"
    assert named(view, names, "tls.handshake.random") == bytes(range(32))
    assert named(view, names, "tls.handshake.cipher_suites") == b"\x13\x01"
    assert named(view, names, "tls.handshake.sni") == b"example.org"
    spans: dict[str, list[int]] = {}  # what the strict mask zeroes sits exactly where its field is named
    for name, offset, length in hello_spans(hello):
        spans.setdefault(name, []).extend(range(start + offset, start + offset + length))
    assert set(spans) == {"tls.handshake.random", "tls.handshake.session_id", "tls.handshake.sni"}
    assert spans == {name: positions(names, name) for name in spans}
    assert named(view, names, "tls.handshake.extension.alpn") == struct.pack("!H", 3) + b"\x02h2"
    assert not any(n.startswith("payload[") for n in names)


@pytest.mark.parametrize("layer", LAYERS)
def test_udp_fields_padding_and_payload_offsets(layer):
    payload = bytes(range(100, 140))
    p = decoded(udp_frame(payload, sport=5353, dport=53))
    view = packet_view(p, layer, "strict")
    names = packet_fields(view, PacketLayout.of(p, layer), layer)
    assert len(names) == len(view)
    if layer != "payload":
        assert named(view, names, "udp.length") == struct.pack("!H", 8 + len(payload))
        assert named(view, names, "udp.pad") == bytes(12)
        assert len(positions(names, "udp.pad")) == 12
        assert named(view, names, "udp.srcport") == bytes(2)  # strict mask zeroes ports
    if layer in ("all", "network"):
        assert named(view, names, "ip.proto") == bytes([17])
    for i in (0, 17, 39):
        assert named(view, names, f"payload[{i}]") == bytes([payload[i]])
    assert positions(names, "payload[17]") == [{"all": 54, "network": 40, "transport": 20, "payload": 0}[layer] + 17]


def test_ipv6_fields_and_a_snapped_frame():
    segment = build.tcp(b"abc", sport=1, dport=2, flags="PA", src="2001:db8::1", dst="2001:db8::2")
    p = decoded(build.ethernet(build.ipv6(segment, src="2001:db8::1", dst="2001:db8::2", hop_limit=33)))
    view = packet_view(p, "all", "none")
    names = packet_fields(view, PacketLayout.of(p, "all"), "all")
    assert named(view, names, "eth.type") == b"\x86\xdd"
    assert named(view, names, "ipv6.hlim") == bytes([33])
    assert named(view, names, "ipv6.nxt") == bytes([6])
    assert named(view, names, "ipv6.plen") == struct.pack("!H", 23)
    assert named(view, names, "payload[2]") == b"c"
    # a view cut short (snapped frame, or the tensor's end) keeps the names of the bytes it has
    short = packet_fields(view[:60], PacketLayout.of(p, "all", 60), "all")
    assert short == names[:60]


def test_tensor_fields_place_packets_in_the_image_and_rows():
    frames = [decoded(f) for _, f in tcp_session(requests=(client_hello(b"a.example"),), responses=(b"\x17\x03\x03\x00\x05hello",))]
    kept = [p for p in frames if p.payload_len or p.flags & 0x02]  # SYN, SYN-ACK, data (as the assembler keeps)
    layer = "network"
    views = [packet_view(p, layer, "strict") for p in kept]
    k, m, b = 200, 6, 48
    image = np.frombuffer(b"".join(views)[:k].ljust(k, b"\0"), dtype=np.uint8)
    f = tensor_fields(image, [PacketLayout.of(p, layer) for p in kept], layer, m, b)
    assert len(f.image) == k and len(f.packets) == m and all(len(row) == b for row in f.packets)
    starts = np.cumsum([0] + [len(v) for v in views])
    for i, start in enumerate(starts[:-1]):
        if start < k:
            assert f.image[start] == "ip.version_ihl" and f.image_packet[start] == i
            assert f.packets[i][:3] == ["ip.version_ihl", "ip.dsfield", "ip.len"]
    assert f.image[starts[2] + 40] == "tls.record.content_type" and image[starts[2] + 40] == 0x16
    assert f.packets[2][40] == "tls.record.content_type"
    assert f.packets[0][40:] == [FILL] * (b - 40)  # the SYN has 40 bytes (no options, no payload)
    assert f.packets[len(kept)] == [FILL] * b
    assert (f.image_packet == -1).sum() == max(0, k - starts[-1])


# -- layouts rebuilt from a prepared dataset's captures -------------------------------------------
def _captures(root):
    """Two classes, five captures each, three sessions per capture, every session's bytes distinct."""
    for label in ("tls", "dns"):
        for i in range(5):
            frames = []
            for j in range(3):
                t0, n = 10.0 * j, 3 * i + j
                if label == "tls":
                    frames += tcp_session(sport=41000 + n, t0=t0, isn_c=1000 + n, requests=(client_hello(b"svc%d.example" % n),),
                                          responses=(b"\x16\x03\x03\x00\x06" + bytes(6) + b"\x17\x03\x03\x00" + bytes([20 + n]) + bytes(range(20 + n)),))
                else:
                    q = struct.pack("!H", 0x1200 + n) + b"\x01\x00\x00\x01" + bytes(6) + bytes([7 + n % 4]) + b"e" * (7 + n % 4) + b"\x00\x00\x01\x00\x01"
                    frames += [(t0, udp_frame(q, sport=50000 + n, dport=53)),
                               (t0 + 0.01, udp_frame(q + bytes(16 + n), src="10.2.2.2", dst="10.1.1.1", sport=53, dport=50000 + n))]
            write_pcap(root / label / f"cap{i}.pcap", frames)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    threads = torch.get_num_threads()
    captures = _captures(tmp / "captures")
    ds = prep([captures], tmp / "ds", PrepConfig(labels="dir", image_bytes=256, packet_bytes=64), workers=1)
    run = tmp / "run"
    torch.set_num_threads(1)  # restored below: the tiny run trains faster on one thread
    train_run(ds, run, "chen-cnn", TrainConfig(batch_size=8, max_epochs=2, split="random"), progress=False, log=lambda m: None)
    torch.set_num_threads(threads)
    return Dataset.open(ds), run, captures


@pytest.mark.parametrize("layer", ["transport", "payload"])
def test_dataset_layouts_from_captures(tiny, tmp_path, layer):
    ds = Dataset.open(prep([tiny[2]], tmp_path / layer, PrepConfig(labels="dir", layer=layer, image_bytes=256, packet_bytes=64),
                           workers=1))
    layouts = dataset_layouts(ds, range(len(ds)))
    assert len(ds) == 30 and sorted(layouts) == list(range(len(ds)))
    image, labels = ds.tensor("image"), ds.labels
    for row in range(len(ds)):
        f = tensor_fields(image[row], layouts[row], layer, 6, 64)
        values = image[row]
        if labels[row] == "tls":
            hello = positions(f.image, "tls.record.content_type")
            assert hello and all(values[i] in (0x16, 0x17) for i in hello)
            sni = named(values, f.image, "tls.handshake.sni")
            assert len(sni) in (12, 13) and not any(sni)  # the host name's place, zeroed by the strict mask
            if layer == "transport":
                assert set(named(values, f.image, "tcp.flags")) <= {0x02, 0x12, 0x18, 0x11}
        else:
            assert named(values, f.image, "payload[0]") == b"\x12\x12"  # the DNS id of query and answer
            assert len(set(named(values, f.image, "payload[1]"))) == 1
            assert ("udp.pad" in f.image) == (layer == "transport")
    # a capture changed after prep is refused, not silently misnamed
    capture = next(iter((tiny[2] / "tls").glob("*.pcap")))
    moved = tmp_path / "moved"
    (moved / "tls").mkdir(parents=True)
    write_pcap(moved / "tls" / capture.name, tcp_session(sport=41000, requests=(b"x" * 30,)))
    rows = np.flatnonzero(ds.column("capture").astype(str) == f"tls/{capture.name}")
    with pytest.raises(DatasetError, match="no longer matches"):
        dataset_layouts(ds, rows[:1].tolist(), captures=[moved])


# -- maps -----------------------------------------------------------------------------------------
def _planted(n, rng, side=20):
    """Class 1 has a bright 4 x 8 block at rows 3-6, columns 11-18; class 0 does not."""
    x = rng.integers(0, 80, (n, side, side), dtype=np.uint8)
    y = np.arange(n) % 2
    x[y == 1, 3:7, 11:19] = 230
    return x.reshape(n, -1), y


class TinyCNN(TrafficModel):
    """conv -> pool -> conv on a 20 x 20 image, global-average-pooled head: a small receptive field
    (8 bytes), so a well-trained model can only find the planted block where it is."""

    inputs = ("image",)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward_features(self, image):
        return self.features(square_image(image, 20))  # (B, 8, 10, 10)

    def forward_head(self, x, pre_logits=False):
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_grad_cam_highlights_a_planted_region(one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = _planted(256, rng)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        idx = rng.choice(len(x), 32, replace=False)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = _planted(40, rng)
    ones = xt[yt == 1]
    maps = explain_tensors(model, {"image": ones}, np.ones(len(ones), dtype=int))
    assert (maps.probabilities.argmax(axis=1) == 1).all()
    assert maps.image_method == "grad-cam" and maps.grad_cam_grid == (10, 10) and maps.image.shape == (len(ones), 400)
    assert np.allclose(maps.image.sum(axis=1), 1)
    region = np.zeros((20, 20), dtype=bool)
    region[3:7, 11:19] = True
    grid = lambda m: m.reshape(-1, 20, 20)  # noqa: E731
    inside = maps.image[:, region.ravel()].sum(axis=1)
    near = grid(maps.image)[:, 1:9, 9:20].sum(axis=(1, 2))  # the block and a 2-byte margin (bilinear spread)
    # 8% of the image holds most of the weight; a transposed, flipped or shifted map would miss it
    assert np.median(inside) > 0.4 and near.min() > 0.8, (inside, near)
    assert grid(maps.image).transpose(0, 2, 1)[:, region].sum(axis=1).max() < 0.1
    assert grid(maps.image)[:, ::-1][:, region].sum(axis=1).max() < 0.1
    hires = explain_tensors(model, {"image": ones}, np.ones(len(ones), dtype=int), cam="hires-cam")
    assert hires.image_method == "hires-cam" and np.median(hires.image[:, region.ravel()].sum(axis=1)) > 0.4
    # the same explanation through a registered model's forward_features / forward_head split works too
    cnn = create_model("chen-cnn", num_classes=2, image_side=20)
    assert explain_tensors(cnn, {"image": ones}).image.shape == (len(ones), 400)


def test_attention_weights_are_distributions():
    torch.manual_seed(0)
    shapes = {"packets": (6, 32), "image": (400,)}
    packets = np.random.default_rng(0).integers(0, 256, (5, 6, 32), dtype=np.uint8)
    packets[:, 4:] = 0  # two padding packets
    han = create_model("chen-han", num_classes=3, input_shapes=shapes)
    maps = explain_tensors(han, {"packets": packets})
    assert maps.packets_method == "attention"
    assert np.allclose(maps.packet_attention.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(maps.byte_attention.sum(axis=2), 1, atol=1e-5)
    assert np.allclose(maps.packets.sum(axis=(1, 2)), 1, atol=1e-5)
    assert maps.packet_attention[:, 4:].max() < 1e-3  # padding packets get no attention
    elmo = create_model("ge-elmo-lstm-attention", num_classes=3, input_shapes=shapes, elmo_hidden=8, lstm_hidden=8)
    maps = explain_tensors(elmo, {"packets": packets})
    assert np.allclose(maps.packet_attention.sum(axis=1), 1, atol=1e-5) and maps.packets_method == "gradient-x-input"
    model_a = create_model("chen-model-a", num_classes=3, input_shapes=shapes)
    image = np.random.default_rng(1).integers(0, 256, (5, 400), dtype=np.uint8)
    maps = explain_tensors(model_a, {"image": image})
    width = model_a.cnn.spatial_features + model_a.gru.num_features  # theta: GAP of the CNN + the GRU state
    assert maps.feature_attention.shape == (5, width) and np.allclose(maps.feature_attention.sum(axis=1), 1, atol=1e-5)
    assert maps.image_method == "grad-cam"  # through the frozen CNN branch, without changing the model


@pytest.mark.parametrize("name", list_models("deep"))
def test_every_model_gets_a_normalised_map(name):
    torch.manual_seed(0)
    shapes = {"image": (400,), "packets": (6, 32), "sequence": (8, 2), "stats": (3,)}
    model = create_model(name, num_classes=3, input_shapes=shapes).eval()
    rng = np.random.default_rng(0)
    tensors = {t: rng.integers(0, 256, (3, *shapes[t]), dtype=np.uint8) for t in model_info(name).inputs}
    maps = explain_tensors(model, tensors)
    assert maps.probabilities.shape == (3, 3)
    present = [m for m in (maps.image, maps.packets) if m is not None]
    assert present
    for m in present:
        totals = m.reshape(3, -1).sum(axis=1)
        assert np.isfinite(m).all() and ((np.abs(totals - 1) < 1e-6) | (totals == 0)).all()


def test_grad_cam_of_a_model_reading_the_first_400_bytes_stays_on_them():
    torch.manual_seed(0)
    model = create_model("ge-inception-capsnet", num_classes=3, input_shapes={"image": (784,)}).eval()
    image = np.random.default_rng(2).integers(0, 256, (4, 784), dtype=np.uint8)
    maps = explain_tensors(model, {"image": image}, cam="hires-cam")
    assert maps.image.shape == (4, 784)
    assert not maps.image[:, 400:].any()  # bytes the model never reads get no weight
    assert np.allclose(maps.image.sum(axis=1), 1, atol=1e-5)  # all of it on the 20x20 it reads


def test_grad_cam_is_laid_out_as_the_picture_the_model_made():
    from trafficlens.explain.maps import Maps, _image_map

    activation = torch.zeros(1, 1, 2, 2)
    activation[0, 0, 0, 0] = 1.0  # heat in the top-left quarter of the model's picture only
    x = torch.zeros(1, 784)
    for side, width in ((20, 20), (None, 28)):  # a 20x20 crop of 784 bytes, or all 784 as 28x28
        maps = Maps(probabilities=np.ones((1, 1)), targets=np.zeros(1, np.int64))
        _image_map(maps, x, [activation], [], {id(activation): torch.ones_like(activation)}, "hires-cam", side)
        used = maps.image[0, : width * width].reshape(width, width)
        assert used[: width // 4, : width // 4].min() > 0  # the top-left corner, in the picture's own rows
        assert not used[:, width * 3 // 4:].any() and not used[width * 3 // 4:, :].any()
        assert not maps.image[0, width * width:].any()


# -- command line ---------------------------------------------------------------------------------
def test_cli_writes_session_and_per_class_outputs(tiny, tmp_path):
    ds, run, _ = tiny
    runner = CliRunner()
    result = runner.invoke(cli, ["explain", str(run), "--session", "0", "--top", "1000", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    exp = json.loads((tmp_path / "s" / "session-0.json").read_text())
    assert exp["fields_from"] == "capture" and exp["methods"]["image"] == "grad-cam"
    assert len(exp["image"]["fields"]) == 256 and exp["image"]["fields"][12:14] == ["eth.type", "eth.type"]
    assert all(not f.startswith("image[") for f in exp["image"]["fields"])
    weights = np.array(exp["image"]["weights"])
    if exp["empty_map"]:  # Grad-CAM found no region raising the score: no weight anywhere, no field listed, a reason
        assert not weights.any() and exp["top_fields"] == [] and sum(exp["groups"].values()) == 0
        assert "zero everywhere" in exp["empty_reason"]
    else:  # every field listed (--top 1000) or marked masked, their weights the whole map's
        assert weights.sum() > 0 and exp["empty_reason"] is None
        assert abs(sum(r["weight"] for r in exp["top_fields"] + exp["masked_fields"]) - 1) < 1e-4
        assert abs(sum(exp["groups"].values()) - 1) < 1e-4
    # the strict mask zeroed the addresses and ports: never ranked
    ranked = {r["field"] for r in exp["top_fields"]}
    assert not ranked & {"ip.src", "ip.dst", "eth.src", "eth.dst", "tcp.srcport", "udp.srcport"}
    assert all(r["masked"] for r in exp["masked_fields"])
    result = runner.invoke(cli, ["explain", str(run), "--per-class", "-n", "3", "--rows", "all", "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "c" / "per-class.json").read_text())
    assert set(summary["classes"]) == {"dns", "tls"} and all(c["sessions"] == 3 for c in summary["classes"].values())
    for name in ("s/session-0.html", "c/per-class.html"):
        page = (tmp_path / name).read_text()
        assert "http://" not in page and "https://" not in page
        # one figure per map and the field chart, blank or not: chen-cnn's session page has 2, its per-class page 3
        figures = 2 if name.startswith("s/") else 3
        assert len(re.findall(r"src='data:image/png;base64,", page)) == figures
    bad = runner.invoke(cli, ["explain", str(run), "--session", str(len(ds) + 5)])
    assert isinstance(bad.exception, DatasetError) and "no session" in str(bad.exception)


def test_shortcut_flags_only_identifying_fields_that_hold_values():
    from trafficlens.explain.maps import Maps, field_weights, top_fields
    from trafficlens.prep.tensors.fields import TensorFields

    names = ["ip.src"] * 4 + ["ip.ttl"] + ["tls.app_data"] * 3 + [FILL] * 2
    fields = TensorFields("network", names, np.zeros(10, dtype=np.int32), [])
    weights = np.array([[0.1, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]])
    image = np.array([0, 0, 0, 0, 64, 23, 23, 23, 0, 0], dtype=np.uint8)  # addresses masked, TTL kept
    w, count, live = field_weights(Maps(np.ones((1, 2)), np.zeros(1), image=weights), 0, fields, image)
    assert w == pytest.approx({"ip.src": 0.4, "ip.ttl": 0.2, "tls.app_data": 0.3, FILL: 0.1})
    rows = top_fields(w, {k: v / 10 for k, v in count.items()}, {k: live[k] / count[k] for k in count}, 3)
    assert [r["field"] for r in rows] == ["ip.src", "tls.app_data", "ip.ttl"]
    assert [r["identifying"] for r in rows] == [False, False, True]  # zeroed addresses carry nothing
    assert rows[2]["lift"] == pytest.approx(2.0)


def test_pages_render_offline_with_every_figure(tiny, tmp_path):
    from test_report_browser import CHROMIUM, render

    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    from trafficlens.explain.maps import ExplainConfig, explain_per_class, write_per_class

    _, page = write_per_class(tmp_path / "out", explain_per_class(tiny[1], cfg=ExplainConfig(per_class=3, split="all")))
    expected = len(re.findall(r"<img ", page.read_text()))
    result = render(page, tmp_path)
    assert len(result["images"]) == expected == 3  # mean maps, layers, fields: blank maps included
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in result["images"]), result["images"]
    assert [u for u in result["fetched"] if not u.startswith(("data:", "file:"))] == []


def test_per_class_explanations_count_their_sessions_on_a_bar(tiny, capsys):
    from trafficlens.explain.maps import ExplainConfig, explain_per_class

    result = explain_per_class(tiny[1], cfg=ExplainConfig(per_class=3, split="all"), progress=True)
    total = sum(c["sessions"] for c in result["classes"].values())
    assert f"/{total} " in capsys.readouterr().err


def test_masked_fields_are_marked_and_never_ranked():
    from trafficlens.explain.maps import (METHOD_GRAD_CAM, Maps, blank_reason, field_weights, mask_fields,
                                          masked_fields, session_figures, top_fields)
    from trafficlens.prep.tensors.fields import TensorFields

    names = ["ip.src"] * 4 + ["ip.ttl"] + ["ip.id"] * 2 + ["tls.app_data"] * 3
    fields = TensorFields("network", names, np.zeros(10, dtype=np.int32), [])
    weights = np.array([[0.25, 0.1, 0.1, 0.1, 0.15, 0.05, 0.05, 0.1, 0.05, 0.05]])
    image = np.array([0, 0, 0, 0, 64, 0, 7, 23, 23, 23], dtype=np.uint8)  # addresses zeroed; this ip.id holds a value
    w, count, nonzero = field_weights(Maps(np.ones((1, 2)), np.zeros(1), image=weights), 0, fields, image)
    live = {k: nonzero[k] / count[k] for k in count}
    strict = mask_fields("strict")
    rows = top_fields(w, {k: v / 10 for k, v in count.items()}, live, 10, strict)
    assert [r["field"] for r in rows] == ["tls.app_data", "ip.ttl", "ip.id"]  # ip.src (0.55 of the map) not ranked
    assert masked_fields(w, live, strict) == [{"field": "ip.src", "weight": 0.55, "masked": True}]
    assert "ip.src" in mask_fields("paper") and "tcp.srcport" not in mask_fields("paper")
    assert "hires-cam" in blank_reason(METHOD_GRAD_CAM, "dns")
    # a blank map still gets its figures: the count depends on the model, not the training
    exp = {"image": {"weights": [0.0] * 16, "bytes": [0] * 16}, "packets": {"weights": None}, "methods": {"image": "grad-cam"},
           "target": "dns", "top_fields": [], "feature_attention": None, "empty_reason": blank_reason(METHOD_GRAD_CAM, "dns")}
    assert len(session_figures(exp)) == 2

"""prep end to end on tiny captures: cleaning rules, sessions, views, masking, labels, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from captures import CLIENT, SERVER, tcp_frame, tcp_session, udp_frame, write_pcap
from trafficlens.cli import cli
from trafficlens.datasets import Dataset
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.prep.engines import numba_available

BACKENDS = ["python", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]


def _prep(tmp_path, frames, name="ds", backend=None, **settings):
    capture = write_pcap(tmp_path / "caps" / "app" / "x.pcap", frames)
    settings.setdefault("labels", "dir")
    return Dataset.open(prep([capture.parent.parent], tmp_path / name, PrepConfig(**settings), workers=1, backend=backend))


def test_one_session_cleaned_per_the_papers(tmp_path):
    frames = tcp_session()
    request_frame = frames[3]
    frames.append((request_frame[0] + 0.5, request_frame[1]))  # retransmission of the request
    ds = _prep(tmp_path, frames)
    assert len(ds) == 1
    row = ds.table.to_pylist()[0]
    # SYN, SYN-ACK, request, response, FIN, FIN; pure ACKs and the retransmission are gone
    assert row["packets"] == 6
    assert (row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"]) == (CLIENT, 40000, SERVER, 443)
    assert (row["packets_fwd"], row["packets_bwd"], row["label"]) == (3, 3, "app")
    # IP lengths: four 40-byte headers alone, the 18-byte request and the 24-byte response on theirs
    assert (row["bytes"], row["payload_bytes"]) == (4 * 40 + 58 + 64, 42)
    assert (row["ts_start"], row["ts_end"]) == (0.0, pytest.approx(0.09))
    dropped = ds.manifest["dropped"]
    assert dropped["retransmission_packets"] == 1
    assert dropped["pure_ack_packets"] == 2


def test_handshake_only_session_is_empty_and_dropped(tmp_path):
    ds = _prep(tmp_path, tcp_session(requests=(), responses=()) + tcp_session(sport=40001))
    assert len(ds) == 1
    assert ds.manifest["dropped"]["empty_sessions"] == 1


def test_all_layer_view_has_no_macs_and_masked_addresses(tmp_path):
    ds = _prep(tmp_path, tcp_session(), mask="paper")
    image = ds.tensor("image")[0]
    assert image[:12].tolist() == [0] * 12 and image[12:14].tolist() == [0x08, 0x00]
    ip = image[14:34]
    assert ip[0] == 0x45 and ip[12:20].tolist() == [0] * 8  # addresses zeroed
    assert image[34:36].tolist() == [0x9C, 0x40]  # paper mask keeps ports (40000)


def test_strict_mask_zeroes_ports_sequence_and_checksums(tmp_path):
    ds = _prep(tmp_path, tcp_session(), layer="transport")
    first = ds.tensor("packets")[0, 0]
    assert first[:12].tolist() == [0] * 12  # ports, seq, ack
    assert first[16:18].tolist() == [0, 0]  # checksum
    assert first[13] == 0x02  # SYN flag survives


def test_copies_differing_only_in_masked_fields_give_identical_tensors(tmp_path):
    sni_a = _client_hello(b"robot.example.com")
    sni_b = _client_hello(b"other.example.org")
    ts_a = b"\x01\x01\x08\x0a" + (111).to_bytes(4, "big") + (222).to_bytes(4, "big")
    ts_b = b"\x01\x01\x08\x0a" + (999).to_bytes(4, "big") + (7).to_bytes(4, "big")
    a = _hello_session(sni_a, ts_a, client="10.0.0.1", sport=40000, isn=1000, ident=5)
    b = _hello_session(sni_b, ts_b, client="192.168.9.9", sport=51234, isn=777777, ident=999, t0=500.0)
    for mask, identical in (("strict", True), ("paper", False)):
        ds = _prep(tmp_path, a + b, name=f"ds-{mask}", mask=mask, deduplicate=False)
        assert len(ds) == 2
        same = all(np.array_equal(ds.tensor(t)[0], ds.tensor(t)[1]) for t in ("image", "packets"))
        assert same is identical, mask


def test_duplicate_sessions_counted_and_dropped(tmp_path):
    a = tcp_session(client="10.0.0.1")
    b = tcp_session(client="10.0.0.9", sport=41000, t0=300.0)
    ds = _prep(tmp_path, a + b)
    assert len(ds) == 1 and ds.manifest["dropped"]["duplicate_sessions"] == 1


def test_out_of_order_segments_are_reordered(tmp_path):
    c = dict(src=CLIENT, dst=SERVER, sport=40000, dport=443)
    frames = [(0.0, tcp_frame(seq=99, flags="S", **c)),
              (0.1, tcp_frame(b"B" * 10, seq=110, flags="PA", **c)),  # second segment first
              (0.2, tcp_frame(b"A" * 10, seq=100, flags="PA", **c))]
    ds = _prep(tmp_path, frames, layer="payload")
    packets = ds.tensor("packets")[0]
    assert bytes(packets[0, :10]) == b"A" * 10 and bytes(packets[1, :10]) == b"B" * 10
    assert bytes(ds.tensor("image")[0, :20]) == b"A" * 10 + b"B" * 10


def test_udp_header_padded_to_tcp_length(tmp_path):
    frames = [(0.0, udp_frame(b"\xaa" * 30)), (0.1, udp_frame(b"\xbb" * 20, src=SERVER, dst=CLIENT, sport=53, dport=5353))]
    ds = _prep(tmp_path, frames, layer="transport", mask="none")
    first = ds.tensor("packets")[0, 0]
    assert first[8:20].tolist() == [0] * 12 and first[20:50].tolist() == [0xAA] * 30
    assert ds.table.column("protocol").to_pylist() == ["UDP"]


def test_syn_after_fin_and_idle_timeout_start_new_sessions(tmp_path):
    frames = tcp_session() + tcp_session(t0=1.0, requests=(b"second",), responses=(b"reply2",))
    frames += tcp_session(t0=1000.0, close=False, requests=(b"third",), responses=(b"reply3",))
    frames += [(2000.0, tcp_frame(b"late", seq=3000, flags="PA"))]  # same 5-tuple after the timeout
    ds = _prep(tmp_path, frames, idle_timeout=120.0, deduplicate=False)
    assert len(ds) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_syn_after_rst_starts_a_new_session_and_other_packets_do_not(tmp_path, backend):
    """README: a 5-tuple starts a new session on a SYN after FIN/RST. A RST from the server ends the
    first connection; the client's next SYN opens the second. A SYN-ACK or data after the RST,
    or a SYN repeated before any FIN/RST, stays in its session."""
    c = dict(src=CLIENT, dst=SERVER, sport=40000, dport=443)
    s = dict(src=SERVER, dst=CLIENT, sport=443, dport=40000)
    frames = [(0.0, tcp_frame(seq=10, flags="S", **c)), (0.05, tcp_frame(seq=10, flags="S", **c)),  # SYN again
              (0.1, tcp_frame(seq=90, ack=11, flags="SA", **s)),
              (0.2, tcp_frame(b"first" * 4, seq=11, ack=91, flags="PA", **c)),
              (0.3, tcp_frame(seq=91, ack=31, flags="RA", **s)),
              (0.4, tcp_frame(b"late", seq=31, ack=91, flags="PA", **c)),  # after the RST, no SYN: same session
              (1.0, tcp_frame(seq=500, flags="S", **c)),  # a new connection on the same 5-tuple
              (1.1, tcp_frame(seq=700, ack=501, flags="SA", **s)),
              (1.2, tcp_frame(b"second", seq=501, ack=701, flags="PA", **c))]
    ds = _prep(tmp_path, frames, mask="none", layer="payload", deduplicate=False, backend=backend)
    rows = ds.table.to_pylist()
    assert [(r["ts_start"], r["ts_end"], r["packets"], r["payload_bytes"]) for r in rows] == [
        (0.0, pytest.approx(0.4), 6, 24), (1.0, pytest.approx(1.2), 3, 6)]
    assert bytes(ds.tensor("image")[0, :24]) == b"first" * 4 + b"late"
    assert bytes(ds.tensor("image")[1, :8]) == b"second\0\0"


def test_flow_unit_splits_directions(tmp_path):
    ds = _prep(tmp_path, tcp_session(), unit="flow")
    assert len(ds) == 2
    assert sorted(ds.column("packets_bwd").tolist()) == [0, 0]


def test_min_filters_are_counted(tmp_path):
    frames = tcp_session() + tcp_session(sport=40001, requests=(b"x" * 500,), responses=(b"y" * 500,))
    ds = _prep(tmp_path, frames, min_bytes=400)
    assert len(ds) == 1 and ds.manifest["dropped"]["min_bytes"] == 1
    ds = _prep(tmp_path, frames, name="ds2", min_packets=7)
    assert len(ds) == 0 and ds.manifest["dropped"]["min_packets"] == 2


def test_sequence_and_stats(tmp_path):
    ds = _prep(tmp_path, tcp_session())
    seq = ds.tensor("sequence")[0]
    assert seq[0, 0] == 40 and seq[1, 0] == -40  # SYN from the client, SYN-ACK towards it
    assert seq[1, 1] == pytest.approx(0.01, abs=1e-6)
    stats = dict(zip(ds.stats_names, ds.tensor("stats")[0]))
    assert stats["fwd_packets"] == 3 and stats["bwd_packets"] == 3
    assert stats["syn_count"] == 2 and stats["fin_count"] == 2


def test_parallel_workers_match_one_worker(tmp_path):
    for i in range(4):
        frames = tcp_session(sport=40000 + i, requests=(bytes([65 + i]) * (50 + i),), responses=(b"ok" * (i + 1),))
        write_pcap(tmp_path / "caps" / f"app{i % 2}" / f"c{i}.pcap", frames)
    one = Dataset.open(prep([tmp_path / "caps"], tmp_path / "one", PrepConfig(labels="dir"), workers=1))
    two = Dataset.open(prep([tmp_path / "caps"], tmp_path / "two", PrepConfig(labels="dir"), workers=2))
    assert one.table.drop(["id"]).equals(two.table.drop(["id"]))
    for name in ("image", "packets", "sequence", "stats"):
        assert np.array_equal(one.tensor(name), two.tensor(name))
    assert one.manifest["classes"] == {"app0": 2, "app1": 2}


def test_truncated_capture_keeps_packets_before_damage(tmp_path):
    capture = write_pcap(tmp_path / "caps" / "app" / "x.pcap", tcp_session())
    data = capture.read_bytes()
    capture.write_bytes(data[:-30])  # cut into the last record
    warnings = []
    path = prep([capture], tmp_path / "ds", PrepConfig(labels="dir"), workers=1, on_warning=warnings.append)
    ds = Dataset.open(path)
    assert len(ds) == 1 and ds.table.column("packets")[0].as_py() == 5
    assert len(warnings) == 1 and "x.pcap" in warnings[0]
    assert ds.manifest["errors"][0]["kind"] == "damaged"


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("bad", [b"\x1f\x8b", b"\x1f\x8b\x08\x00garbage"])
def test_an_unreadable_gzip_is_one_warning_and_the_run_goes_on(tmp_path, backend, bad):
    for name in ("a", "b"):
        write_pcap(tmp_path / "caps" / "app" / f"{name}.pcap", tcp_session(sport=40000 + ord(name)))
    (tmp_path / "caps" / "app" / "zz.pcap.gz").write_bytes(bad)  # last, after the good ones
    warnings = []
    ds = Dataset.open(prep([tmp_path / "caps"], tmp_path / "ds", PrepConfig(labels="dir"), workers=1,
                           backend=backend, on_warning=warnings.append))
    assert len(ds) == 1 and ds.manifest["duplicates"]["dropped"] == 1  # a and b make the same tensors
    assert [i["path"] for i in ds.manifest["inputs"]] == ["app/a.pcap", "app/b.pcap", "app/zz.pcap.gz"]
    assert len(warnings) == 1 and "zz.pcap.gz: cannot read" in warnings[0]
    [error] = ds.manifest["errors"]
    assert error["file"] == "app/zz.pcap.gz" and error["kind"] == "unreadable" and error["message"] == warnings[0]


def test_label_specs_that_label_nothing_or_one_folder_warn(tmp_path):
    write_pcap(tmp_path / "flat" / "web-1.pcap", tcp_session())
    write_pcap(tmp_path / "flat" / "mail-1.pcap", tcp_session(sport=40001, requests=(b"HELO",)))
    warnings = []
    ds = Dataset.open(prep([tmp_path / "flat"], tmp_path / "a", PrepConfig(labels="file:nogroup"), workers=1,
                           on_warning=warnings.append))
    assert len(ds) == 0 and ds.manifest["dropped"]["unlabeled"] == 2
    assert warnings == ["--labels file:nogroup gives no label to any of the 2 capture names (e.g. mail-1.pcap): "
                        "their sessions are unlabeled (dropped, unless --unlabeled keep or as:NAME)"]
    warnings.clear()
    ds = Dataset.open(prep([tmp_path / "flat"], tmp_path / "b", PrepConfig(labels="dir"), workers=1,
                           on_warning=warnings.append))
    assert ds.manifest["classes"] == {"flat": 2}
    assert len(warnings) == 1 and "--labels dir: 2 capture(s) lie directly in" in warnings[0]
    table = tmp_path / "labels.csv"
    table.write_text("file,label\nother.pcap,web\n")
    warnings.clear()
    prep([tmp_path / "flat"], tmp_path / "c", PrepConfig(labels=f"csv:{table}"), workers=1, on_warning=warnings.append)
    assert warnings == [f"--labels csv:{table} gave no label to any session: all 2 were dropped as unlabeled, "
                        "and the dataset is empty"]


def test_cli_prep_info_and_one_line_errors(tmp_path):
    write_pcap(tmp_path / "caps" / "web" / "a.pcap", tcp_session())
    (tmp_path / "caps" / "web" / "README.txt").write_text("not a capture")
    runner = CliRunner()
    result = runner.invoke(cli, ["prep", str(tmp_path / "caps"), "-o", str(tmp_path / "ds"), "--labels", "dir", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["info", str(tmp_path / "ds")])
    assert result.exit_code == 0 and "web" in result.output and "mask=strict" in result.output
    result = runner.invoke(cli, ["prep", str(tmp_path / "caps"), "-o", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code != 0 and "already exists" in str(result.exception or result.output)


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"<html>not a capture</html>")
    proc = subprocess.run([sys.executable, "-m", "trafficlens", "info", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no such dataset" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "trafficlens", "prep", str(tmp_path), "-o", str(tmp_path / "o"),
                           "--labels", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown source" in proc.stderr


# -- helpers ---------------------------------------------------------------------------------
def _client_hello(host: bytes) -> bytes:
    sni = (0).to_bytes(2, "big") + (len(host) + 5).to_bytes(2, "big") + (len(host) + 3).to_bytes(2, "big") + b"\x00" + len(host).to_bytes(2, "big") + host
    extensions = sni
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def _hello_session(hello, ts_option, client, sport, isn, ident, t0=0.0):
    c = dict(src=client, dst=SERVER, sport=sport, dport=443, ident=ident, options=ts_option)
    s = dict(src=SERVER, dst=client, sport=443, dport=sport, ident=ident + 1, options=ts_option)
    return [(t0, tcp_frame(seq=isn, flags="S", **c)),
            (t0 + 0.01, tcp_frame(seq=9, ack=isn + 1, flags="SA", **s)),
            (t0 + 0.02, tcp_frame(hello, seq=isn + 1, ack=10, flags="PA", **c)),
            (t0 + 0.03, tcp_frame(b"\x16\x03\x03\x00\x04" + b"abcd", seq=10, ack=isn + 1 + len(hello), flags="PA", **s))]


def test_ipv6_flow_label_and_addresses_masked(tmp_path):
    from trafficlens.capture import build

    def session(src, flow_label, sport, t0):
        frames = []
        for i, (a, b, sp, dp, payload) in enumerate([(src, "2001:db8::53", sport, 443, b"q" * 20),
                                                     ("2001:db8::53", src, 443, sport, b"r" * 30)]):
            seg = build.tcp(payload, sport=sp, dport=dp, seq=1000 * (i + 1), flags="PA", src=a, dst=b)
            frames.append((t0 + i * 0.01, build.ethernet(build.ipv6(seg, src=a, dst=b, flow_label=flow_label))))
        return frames

    frames = session("2001:db8::1", 0x12345, 40000, 0.0) + session("2001:db8::99", 0xABCDE, 50000, 300.0)
    ds = _prep(tmp_path, frames, deduplicate=False, layer="network")
    first, second = ds.tensor("packets")[:, 0]
    assert np.array_equal(first, second)
    assert first[1] & 0x0F == 0 and first[2:4].tolist() == [0, 0] and first[8:40].tolist() == [0] * 32
    assert first[0] >> 4 == 6 and first[6] == 6  # version and next header survive


def test_sequence_numbers_wrap_around(tmp_path):
    c = dict(src=CLIENT, dst=SERVER, sport=40000, dport=443)
    top = 2**32 - 5
    frames = [(0.0, tcp_frame(b"a" * 10, seq=top, flags="PA", **c)),
              (0.1, tcp_frame(b"b" * 10, seq=(top + 10) % 2**32, flags="PA", **c)),
              (0.2, tcp_frame(b"a" * 10, seq=top, flags="PA", **c))]  # retransmission across the wrap
    ds = _prep(tmp_path, frames, layer="payload")
    assert ds.table.column("packets")[0].as_py() == 2
    assert ds.manifest["dropped"]["retransmission_packets"] == 1

"""`--filter BPF` on capture files for prep, predict and live -r: libpcap's expressions keep
exactly the packets tcpdump would, and a bad expression is one error line before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from captures import tcp_frame, tcp_session, udp_frame, write_pcap
from trafficlens.capture import build
from trafficlens.capture.bpf import PacketFilter
from trafficlens.cli import cli
from trafficlens.datasets import Dataset
from trafficlens.errors import ConfigError
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.serving import Classifier

LAB = Path(__file__).resolve().parents[1] / "examples" / "lab"
V4_TCP = tcp_frame(b"x", src="10.1.1.1", dst="10.2.2.2", sport=40000, dport=443)
V4_UDP = udp_frame(b"x", src="10.1.1.1", dst="192.168.7.9", sport=5353, dport=53)
V6_TCP = build.ethernet(build.tcp_packet(b"x", src="fd00::1", dst="fd00::2", sport=1234, dport=80))


@pytest.mark.parametrize("expression,keeps", [
    ("tcp", {"v4tcp", "v6tcp"}),
    ("udp", {"v4udp"}),
    ("ip", {"v4tcp", "v4udp"}),
    ("ip6", {"v6tcp"}),
    ("port 443 or port 53", {"v4tcp", "v4udp"}),
    ("src port 5353", {"v4udp"}),
    ("dst port 5353", set()),
    ("host 10.2.2.2", {"v4tcp"}),
    ("src host 10.1.1.1 and not udp", {"v4tcp"}),
    ("net 192.168.0.0/16", {"v4udp"}),
    ("dst net 10.0.0.0/8", {"v4tcp"}),
    ("host fd00::2", {"v6tcp"}),
    ("(tcp and port 80) or (udp and dst host 192.168.7.9)", {"v6tcp", "v4udp"}),
    ("not (tcp or udp)", set()),
])
def test_expressions_keep_what_tcpdump_keeps(expression, keeps):
    frames = {"v4tcp": V4_TCP, "v4udp": V4_UDP, "v6tcp": V6_TCP}
    keep = PacketFilter(expression)
    assert {name for name, frame in frames.items() if keep.matches(frame, 1)} == keeps
    # the same packets without a link header (LINKTYPE_RAW, 101)
    assert {name for name, frame in frames.items() if keep.matches(frame[14:], 101)} == keeps


@pytest.mark.parametrize("expression,problem", [
    ("tcp port", "can't parse filter expression: syntax error"),
    ("hots 10.0.0.1", "can't parse filter expression: syntax error"),
    ("port 70000", "illegal port number 70000 > 65535"),
    ("  ", "--filter is empty"),
])
def test_a_bad_expression_is_one_line_naming_it(expression, problem):
    with pytest.raises(ConfigError) as error:
        PacketFilter(expression)
    assert problem in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("command", [["predict", str(LAB / "model"), str(LAB / "capture-000.pcap.gz")],
                                     ["prep", str(LAB / "capture-000.pcap.gz"), "-o", "ds", "--label", "x"],
                                     ["live", str(LAB / "model"), "-r", str(LAB / "capture-000.pcap.gz")]])
def test_commands_say_a_bad_filter_in_one_line(command, tmp_path, monkeypatch, capsys):
    from trafficlens.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["trafficlens", *command, "--filter", "tcp port"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines() == [
        "error: --filter 'tcp port': can't parse filter expression: syntax error"], err
    assert not (tmp_path / "ds").exists()


def _capture(tmp_path: Path) -> Path:
    """12 TCP sessions to port 443, 8 to port 80, 5 UDP datagrams to port 53."""
    frames = [f for i in range(12) for f in tcp_session(sport=41000 + i, dport=443, t0=i)]
    frames += [f for i in range(8) for f in tcp_session(sport=42000 + i, dport=80, t0=20 + i)]
    frames += [(40 + i, udp_frame(b"query %d" % i, sport=5000 + i)) for i in range(5)]
    return write_pcap(tmp_path / "mixed.pcap", frames)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_prep_reads_only_matching_packets(tmp_path, backend):
    capture = _capture(tmp_path)
    config = PrepConfig(labels="name:web", min_packets=1, deduplicate=False)
    ds = Dataset.open(prep([capture], tmp_path / "ds", config, workers=1, backend=backend, bpf="tcp dst port 443 or tcp src port 443"))
    assert len(ds) == 12 and set(ds.table.column("dst_port").to_pylist()) == {443}
    assert ds.manifest["packet_filter"] == "tcp dst port 443 or tcp src port 443"
    # 8 sessions of 8 frames to port 80 (handshake, request, response, ACK, FINs) and 5 datagrams, left out
    assert ds.manifest["skipped_packets"]["filtered_out"] == 8 * 8 + 5 and ds.manifest["packets_read"] == 20 * 8 + 5
    everything = Dataset.open(prep([capture], tmp_path / "all", config, workers=1, backend=backend))
    assert len(everything) == 12 + 8 + 5 and "packet_filter" not in everything.manifest
    keep = [i for i, port in enumerate(everything.table.column("dst_port").to_pylist()) if port == 443]
    assert (everything.tensor("image")[keep] == ds.tensor("image")[:]).all()


def test_predict_and_live_read_only_matching_packets(tmp_path):
    capture = _capture(tmp_path)
    clf = Classifier.load(LAB / "model", device="cpu")
    every = [r for batch in clf.iter_predictions(capture) for r in batch]
    udp = [r for batch in clf.iter_predictions(capture, bpf="udp") for r in batch]
    assert len(every) == 25 and len(udp) == 5
    assert udp == [r for r in every if r["protocol"] == "udp"]
    result = CliRunner().invoke(cli, ["predict", str(LAB / "model"), str(capture), "--filter", "port 80",
                                      "--format", "jsonl", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 8 and {r["dst_port"] for r in rows} == {80}
    out = tmp_path / "live.jsonl"
    result = CliRunner().invoke(cli, ["live", str(LAB / "model"), "-r", str(capture), "--speed", "0",
                                      "--filter", "udp and dst port 53", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {(r["protocol"], r["dst_port"]) for r in rows} == {("udp", 53)}

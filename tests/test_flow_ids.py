"""Join keys and Zeek-style output: Community ID v1 against the reference implementation (the
`communityid` package), uids, orig/resp counts counted by hand, and the Zeek TSV log read back
the way zeek-cut reads it."""

from __future__ import annotations

from pathlib import Path

import communityid
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from captures import tcp_session, write_pcap
from trafficlens.capture import build
from trafficlens.capture.flow_ids import community_id, zeek_uid
from trafficlens.cli import cli
from trafficlens.prep.engines import numba_available
from trafficlens.serving import Classifier
from trafficlens.serving.output import write_rows
from trafficlens.serving.zeek_log import FIELDS as ZEEK_FIELDS

LAB = Path(__file__).resolve().parents[1] / "examples" / "lab"
BACKENDS = ["python", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]


def reference(protocol: str, src: str, sport: int, dst: str, dport: int) -> str:
    make = {"tcp": communityid.FlowTuple.make_tcp, "udp": communityid.FlowTuple.make_udp}[protocol]
    return communityid.CommunityID(0).calc(make(src, dst, sport, dport))


@pytest.mark.parametrize("protocol,src,sport,dst,dport", [
    ("tcp", "128.232.110.120", 34855, "66.35.250.204", 80),  # the spec's own example
    ("udp", "192.168.1.52", 54585, "8.8.8.8", 53),
    ("tcp", "fe80::200:86ff:fe05:80da", 1024, "fe80::260:97ff:fe07:69ea", 22),
    ("udp", "2001:db8::1", 5353, "2001:db8::2", 5353),
    ("tcp", "10.0.0.1", 443, "10.0.0.1", 51000),  # equal addresses: the ports decide the order
])
def test_community_id_is_the_reference_value_from_both_ends(protocol, src, sport, dst, dport):
    expected = reference(protocol, src, sport, dst, dport)
    assert community_id(protocol, src, sport, dst, dport) == expected
    assert community_id(protocol, dst, dport, src, sport) == expected
    assert community_id(protocol.upper(), src, sport, dst, dport) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["tcp", "udp"]), st.booleans(), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16), st.integers(0, 65535), st.integers(0, 65535))
def test_community_id_matches_the_reference_on_any_flow(protocol, v6, a, b, sport, dport):
    import ipaddress

    make = ipaddress.IPv6Address if v6 else (lambda raw: ipaddress.IPv4Address(raw[:4]))
    src, dst = str(make(a)), str(make(b))
    assert community_id(protocol, src, sport, dst, dport) == reference(protocol, src, sport, dst, dport)


def test_community_id_rejects_mixed_ip_versions():
    with pytest.raises(ValueError, match="different IP versions"):
        community_id("tcp", "10.0.0.1", 1, "::1", 2)


def test_uids_are_zeek_shaped_stable_and_distinct():
    uid = zeek_uid("a.pcap", "1:x", 1.5)
    assert uid == zeek_uid("a.pcap", "1:x", 1.5) and len(uid) == 18 and uid[0] == "C" and uid.isalnum()
    assert len({zeek_uid("a.pcap", "1:x", t) for t in range(1000)}) == 1000


def _mixed_capture(path: Path) -> Path:
    """An IPv4 TCP session (client 10.1.1.1) and an IPv6 UDP exchange (client fd00::1, 2 out, 1 back)."""
    frames = tcp_session(requests=(b"hello server",), responses=(b"hello client, longer",))
    c, s = "fd00::1", "fd00::2"
    for i, (src, dst, sport, dport, size) in enumerate([(c, s, 5000, 53, 30), (s, c, 53, 5000, 90),
                                                        (c, s, 5000, 53, 31)]):
        frames.append((1.0 + 0.01 * i, build.ethernet(build.udp_packet(b"q" * size, src=src, dst=dst, sport=sport,
                                                                          dport=dport), ethertype=0x86DD)))
    return write_pcap(path, frames)


@pytest.fixture(scope="module")
def lab():
    clf = Classifier.load(LAB / "model", device="cpu")
    assert clf.prep_config.mask == "strict"  # hides addresses from the tensors, not from the rows
    return clf


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_carry_join_keys_and_orig_resp_counts(lab, tmp_path, backend, monkeypatch):
    monkeypatch.setenv("TRAFFICLENS_BACKEND", backend)
    capture = _mixed_capture(tmp_path / "mixed.pcap")
    rows = {r["protocol"]: r for batch in lab.iter_predictions(capture) for r in batch}
    tcp, udp = rows["tcp"], rows["udp"]
    assert tcp["community_id"] == reference("tcp", "10.1.1.1", 40000, "10.2.2.2", 443)
    assert udp["community_id"] == reference("udp", "fd00::1", 5000, "fd00::2", 53)
    assert tcp["uid"] != udp["uid"] and all(len(r["uid"]) == 18 for r in (tcp, udp))
    # TCP: client SYN, "hello server" (52 bytes), FIN; server SYN-ACK, 60-byte answer, FIN (pure ACKs dropped)
    assert (tcp["orig_pkts"], tcp["orig_ip_bytes"], tcp["resp_pkts"], tcp["resp_ip_bytes"]) == (3, 40 + 52 + 40, 3, 40 + 60 + 40)
    # UDP over IPv6: 40 + 8 header bytes on each datagram
    assert (udp["orig_pkts"], udp["orig_ip_bytes"], udp["resp_pkts"], udp["resp_ip_bytes"]) == (2, 78 + 79, 1, 138)
    assert udp["duration"] == pytest.approx(0.02) and udp["ts_start"] == pytest.approx(1.0)
    for row in (tcp, udp):
        assert row["orig_pkts"] + row["resp_pkts"] == row["packets"]
        assert row["orig_ip_bytes"] + row["resp_ip_bytes"] == row["bytes"]
        assert row["confidence"] == round(row["confidence"], 4)
        assert all(p == round(p, 4) for _, p in row["top_k"])


def read_zeek_log(text: str) -> tuple[dict[str, str], list[str], list[str], list[dict[str, str]]]:
    """A Zeek TSV log as zeek-cut reads it: the separator from `#separator`, the column names from
    `#fields`; returns (header, fields, types, rows as name -> text)."""
    lines = text.splitlines()
    assert lines[0].startswith("#separator ")
    sep = bytes(lines[0].split(" ", 1)[1], "ascii").decode("unicode_escape")
    header, fields, types, rows = {}, [], [], []
    for line in lines[1:]:
        if line.startswith("#"):
            key, _, value = line[1:].partition(sep)
            header[key] = value
            if key == "fields":
                fields = value.split(sep)
            elif key == "types":
                types = value.split(sep)
            continue
        values = line.split(sep)
        assert len(values) == len(fields), line
        rows.append(dict(zip(fields, values)))
    return header, fields, types, rows


def _zeek_value(text: str, unset: str, empty: str):
    if text == unset:
        return None
    if text == empty:
        return ""
    return bytes(text, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


def test_zeek_log_reads_back_value_by_value(lab, tmp_path):
    rows = [r for batch in lab.iter_predictions(LAB / "capture-002.pcap.gz", top_k=2) for r in batch]
    rejected = dict(rows[0], label=None, confidence=None, top_k=[], status="not_judged", reason="no payload\there")
    rows.append(rejected)
    assert write_rows([rows[:10], rows[10:]], str(tmp_path / "p.log")) == 31
    header, fields, types, parsed = read_zeek_log((tmp_path / "p.log").read_text())
    assert header["unset_field"] == "-" and header["path"] == "trafficlens"
    assert header["set_separator"] == "," and header["empty_field"] == "(empty)"
    assert "open" in header and "close" in header  # a whole log, not one cut short
    assert fields[:7] == ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto"]
    assert "community_id" in fields and len(types) == len(fields) == len(ZEEK_FIELDS)
    assert dict(zip(fields, types))["ts"] == "time" and dict(zip(fields, types))["id.orig_h"] == "addr"
    assert len(parsed) == 31
    column_of = {name: column for name, _, column in ZEEK_FIELDS}
    for got, want in zip(parsed, rows, strict=True):
        value = {name: _zeek_value(text, header["unset_field"], header["empty_field"]) for name, text in got.items()}
        for name in ("uid", "community_id", "id.orig_h", "id.resp_h", "proto", "capture", "label", "status", "reason"):
            assert value[name] == want[column_of[name]], name
        for name in ("id.orig_p", "id.resp_p", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes"):
            assert int(value[name]) == want[column_of[name]], name
        assert float(value["ts"]) == pytest.approx(want["ts_start"], abs=1e-6)
        assert float(value["duration"]) == pytest.approx(want["duration"], abs=1e-6)
        if want["confidence"] is None:
            assert value["confidence"] is None and value["top_k"] == ""
        else:
            assert float(value["confidence"]) == want["confidence"]
            assert value["top_k"].split(",") == [f"{label}:{p:.4f}" for label, p in want["top_k"]]
    assert parsed[-1]["reason"] == "no payload\\x09here"  # a tab in a value is escaped, never a column break


def test_predict_and_live_commands_write_zeek_logs(tmp_path):
    capture = LAB / "capture-002.pcap.gz"
    result = CliRunner().invoke(cli, ["predict", str(LAB / "model"), str(capture), "--format", "zeek", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    _, fields, _, rows = read_zeek_log(result.stdout)
    assert len(rows) == 30 and {r["proto"] for r in rows} <= {"tcp", "udp"}
    assert all(r["community_id"].startswith("1:") for r in rows)
    out = tmp_path / "live.log"
    result = CliRunner().invoke(cli, ["live", str(LAB / "model"), "-r", str(capture), "--speed", "0",
                                      "--format", "zeek", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, _, _, live_rows = read_zeek_log(out.read_text())
    assert header["path"] == "trafficlens_live" and "close" in header and len(live_rows) == 30
    assert {r["community_id"] for r in live_rows} == {r["community_id"] for r in rows}


def test_zeek_log_reads_in_zat_a_zeek_log_library(lab, tmp_path):
    """An independent reader of Zeek logs (zat, SuperCowPowers' Zeek Analysis Tools) types every
    column from `#types`: times, intervals, ports, counts, doubles; `-` is unset."""
    zat = pytest.importorskip("zat.log_to_dataframe")
    rows = [r for batch in lab.iter_predictions(LAB / "capture-002.pcap.gz", top_k=2) for r in batch]
    rows.append(dict(rows[0], label=None, confidence=None, top_k=[], status="not_judged", reason="no payload"))
    write_rows([rows], str(tmp_path / "p.log"))
    table = zat.LogToDataFrame().create_dataframe(str(tmp_path / "p.log"))
    assert len(table) == 31
    assert str(table["id.orig_p"].dtype) == "UInt16" and str(table["orig_ip_bytes"].dtype) == "UInt64"
    assert str(table["duration"].dtype).startswith("timedelta64") and table["confidence"].dtype == "float64"
    assert table["community_id"].astype(str).tolist() == [r["community_id"] for r in rows]
    assert table["orig_ip_bytes"].tolist() == [r["orig_ip_bytes"] for r in rows]
    assert table.index[0].timestamp() == pytest.approx(rows[0]["ts_start"], abs=1e-6)
    assert table["duration"].dt.total_seconds().tolist() == pytest.approx([r["duration"] for r in rows], abs=1e-6)
    assert table["confidence"].tolist()[:30] == [r["confidence"] for r in rows[:30]]

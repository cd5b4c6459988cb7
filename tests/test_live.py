"""live: replayed captures are decided session by session at the M-th packet, with bounded state."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from captures import tcp_frame, tcp_session, udp_frame, write_pcap
from test_predict import KEY, SAMPLE, reference_sessions, run  # noqa: F401  (the trained bundle fixture)
from trafficlens.capture.flow_ids import community_id
from trafficlens.errors import CaptureError
from trafficlens.prep.engines import numba_available
from trafficlens.serving import Classifier
from trafficlens.serving.live import LiveClassifier, interface, replay

# Every behaviour holds for both session engines: the Python reference and the compiled one.
BACKENDS = ["python", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_decides_every_session_at_the_mth_packet(run, backend, tmp_path):  # noqa: F811
    clf = Classifier.load(run[0])
    rows = []
    stats = LiveClassifier(clf, rows.append, after=6, backend=backend).run(replay(SAMPLE / "capture-2.pcapng", speed=None))
    assert stats.decisions == len(rows) == 28 == stats.decided_early
    assert {r["trigger"] for r in rows} == {"after"} and all(r["packets"] == 6 for r in rows)
    assert 0 < stats.summary()["delay_ms_median"] < 60_000
    assert_decided_on_the_first_packets(clf, rows, [SAMPLE / "capture-2.pcapng"], tmp_path)
    # decided on 6 packets, the labels agree with whole-session prediction on this sample
    full = clf.predict_pcap(SAMPLE / "capture-2.pcapng")
    by_port = dict(zip(full.src_port, full.label))
    agree = sum(by_port[r["src_port"]] == r["label"] for r in rows)
    assert agree >= 0.9 * len(rows)


def assert_decided_on_the_first_packets(clf, rows, captures, tmp_path) -> None:
    """Each row holds its session's values as they were at its trigger, field by field: a row
    decided at its M-th packet counts those M packets (sizes and times from the reference
    dataset's `sequence` tensor); one decided at its end, the whole session. (Live rows name
    the capture by the source's name, so sessions are found by the rest of their key.)"""
    ds, index = reference_sessions(clf, captures, tmp_path / "reference")
    index = {key[1:]: value for key, value in index.items()}
    assert len(rows) == len(index)
    sequence = np.asarray(ds.tensor("sequence"))
    for row in rows:
        i, ref = index[tuple(row[f] for f in KEY[1:])]
        # orig/resp split the packets and bytes the row decided on (at its trigger)
        assert (row["orig_pkts"] + row["resp_pkts"], row["orig_ip_bytes"] + row["resp_ip_bytes"]) == (row["packets"], row["bytes"])
        assert row["community_id"] == community_id(row["protocol"], ref["src_ip"], ref["src_port"], ref["dst_ip"], ref["dst_port"])
        if row["trigger"] == "end":
            assert (row["ts_end"], row["packets"], row["bytes"]) == (ref["ts_end"], ref["packets"], ref["bytes"])
            continue
        first = sequence[i, : row["packets"]]  # signed sizes and gaps of the first packets
        assert row["packets"] <= ref["packets"] and row["bytes"] == int(np.abs(first[:, 0]).sum())
        assert row["ts_end"] == pytest.approx(ref["ts_start"] + float(first[:, 1].astype(np.float64).sum()), abs=1e-4)
        if row["packets"] < ref["packets"]:
            assert row["bytes"] < ref["bytes"] and row["ts_end"] < ref["ts_end"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_sessions_decided_at_their_end_with_reasons(run, tmp_path, backend):  # noqa: F811
    # 4 kept packets (SYN, SYN-ACK, request, response): never reaches M=6, under min_packets=5
    capture = write_pcap(tmp_path / "short.pcap", tcp_session(requests=(b"hi",), responses=(b"yo",), close=False))
    rows = []
    LiveClassifier(Classifier.load(run[0]), rows.append, after=6, backend=backend).run(replay(capture, speed=None))
    assert len(rows) == 1 and rows[0]["trigger"] == "end"
    assert rows[0]["status"] == "not_judged" and rows[0]["reason"] == "fewer packets than the model's min_packets"


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_is_bounded_by_eviction(run, tmp_path, backend):  # noqa: F811
    frames = []
    for i in range(50):  # 50 concurrent sessions, each one payload packet so far
        frames.append((i * 0.001, tcp_frame(b"x" * 40, sport=20000 + i, seq=1, flags="PA")))
    capture = write_pcap(tmp_path / "many.pcap", frames)

    def source():  # a heartbeat after every 10 packets ends the compiled engine's block
        for i, packet in enumerate(replay(capture, speed=None)):
            yield packet
            if i % 10 == 9:
                yield None

    rows = []
    live = LiveClassifier(Classifier.load(run[0]), rows.append, after=6, max_sessions=10, backend=backend)
    held = []
    if backend == "numba":  # evicts after each block: the cap holds between blocks
        feed = live._engine.feed
        live._engine.feed = lambda *block: (feed(*block), held.append(live.tracked_sessions))
        stats = live.run(source())
        # 10 sessions, then 20 of which 11 go (down to 9: a tenth of the cap below it), then 19 ...
        assert held == [10, 9, 9, 9, 9] and stats.evicted == 41
    else:  # fed a block at each heartbeat, evicts as each new session comes, the oldest one at a time
        stats = live.run(_watching(source(), lambda: held.append(live.tracked_sessions)))
        assert held == [0] * 10 + [10] * 45 and stats.evicted == 40
    assert live.tracked_sessions == 0
    assert len(rows) == 50  # evicted sessions are still decided, not lost
    # the oldest sessions went first: their rows came before the last ten's
    assert sorted(r["src_port"] for r in rows[:40]) == list(range(20000, 20040))


def _watching(packets, look):
    for packet in packets:
        yield packet
        look()


def _mixed_capture(path):
    """A session that reaches M=6 (with an out-of-order and a retransmitted segment before it)
    and goes on in the same block, a short one, UDP flows and an empty UDP one: every kind of row."""
    frames = []
    long = tcp_session(sport=41000, requests=tuple(b"req %d " % i + b"a" * 90 for i in range(8)),
                       responses=tuple(b"resp %d " % i + b"b" * 300 for i in range(8)))
    long[3], long[6] = (long[3][0], long[6][1]), (long[6][0], long[3][1])  # 2nd request before the 1st
    long.append((long[7][0] + 0.001, long[3][1]))  # and the 2nd again: a retransmission
    short = tcp_session(sport=41001, t0=0.05, requests=(b"hi",), responses=(b"yo",), close=False)
    frames += long + short
    frames += [(0.2 + i * 0.01, udp_frame(b"q" * (30 + i), sport=5000 + (i % 3))) for i in range(24)]
    frames += [(0.3, udp_frame(b"", sport=6000))]
    frames.sort(key=lambda f: f[0])
    return write_pcap(path, frames)


def test_both_engines_give_the_same_rows(run, tmp_path):  # noqa: F811
    if not numba_available():
        pytest.skip("numba not installed")
    clf = Classifier.load(run[0])
    captures = [SAMPLE / "capture-2.pcapng", _mixed_capture(tmp_path / "mixed.pcap")]
    results = {}
    for backend in ("python", "numba"):
        rows = []
        for capture in captures:
            LiveClassifier(clf, rows.append, after=6, backend=backend).run(replay(capture, speed=None))
        for row in rows:
            row.pop("delay_ms")
        results[backend] = sorted(rows, key=lambda r: (r["capture"], r["ts_start"], r["src_port"], r["trigger"]))
    python, numba = results["python"], results["numba"]
    assert len(python) == len(numba) > 30
    assert {r["trigger"] for r in python} == {"after", "end"} and {r["status"] for r in python} >= {"ok", "not_judged"}
    for a, b in zip(python, numba):
        assert {k: v for k, v in a.items() if k not in ("confidence", "top_k")} == \
            {k: v for k, v in b.items() if k not in ("confidence", "top_k")}
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
    judged = [r for r in python if r["reason"] != "no payload"]
    assert len(judged) == len(python) - 1  # the empty UDP datagram
    assert_decided_on_the_first_packets(clf, judged, captures, tmp_path)


def test_quiet_line_ends_idle_sessions(run, tmp_path):  # noqa: F811
    """With the compiled engine a quiet source (heartbeats only) still ends idle sessions: their
    decision comes while the source is silent, not at its end."""
    if not numba_available():
        pytest.skip("numba not installed")
    clf = Classifier.load(run[0])
    clf.prep_config = dataclasses.replace(clf.prep_config, idle_timeout=0.5)
    capture = write_pcap(tmp_path / "idle.pcap", tcp_session(requests=(b"x" * 80,), responses=(b"y" * 80,), close=False))
    decided_at = []
    ended = []

    def source():
        yield from replay(capture, speed=None)
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            yield None
            time.sleep(0.01)
        ended.append(time.monotonic())

    LiveClassifier(clf, lambda row: decided_at.append((time.monotonic(), row)), after=6, backend="numba").run(source())
    assert len(decided_at) == 1 and decided_at[0][1]["trigger"] == "end"
    assert decided_at[0][0] < ended[0] - 0.5


def test_replay_keeps_the_recorded_pace(tmp_path):
    frames = [(t, tcp_frame(b"p", seq=int(t * 10), flags="PA")) for t in (0.0, 0.2, 0.4)]
    capture = write_pcap(tmp_path / "paced.pcap", frames)
    start = time.perf_counter()
    assert len(list(replay(capture, speed=1.0))) == 3
    assert time.perf_counter() - start >= 0.38
    start = time.perf_counter()
    list(replay(capture, speed=None))
    assert time.perf_counter() - start < 0.38


def test_interface_errors_are_clear():
    pytest.importorskip("pcapy")
    with pytest.raises(CaptureError, match="cannot capture on nosuch0"):
        next(interface("nosuch0"))


def _can_capture() -> str | None:
    try:
        import pcapy
    except ImportError:
        return "pcapy-ng is not installed"
    handle = pcapy.create("lo")
    status = handle.activate()
    if isinstance(status, int) and status < 0:
        return f"cannot capture on lo here (pcap_activate {status}: needs root or CAP_NET_RAW)"
    return None


def test_interface_capture_decides_a_loopback_session(run):  # noqa: F811
    import socket
    import threading

    from trafficlens.serving.live import Interface

    reason = _can_capture()
    if reason:
        pytest.skip(reason)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    source = Interface("lo", bpf=f"udp and port {port}", idle_exit=0.5)

    def talk():
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(8):
            client.sendto(b"robot-status %d " % i + b"x" * 60, ("127.0.0.1", port))
            time.sleep(0.01)
        client.close()

    sender = threading.Thread(target=talk)
    sender.start()
    rows = []
    stats = LiveClassifier(Classifier.load(run[0]), rows.append, after=6, clock="capture").run(source)
    sender.join()
    server.close()
    assert stats.packets == 8 and source.stats()["dropped"] == 0
    assert len(rows) == 1 and rows[0]["trigger"] == "after" and rows[0]["packets"] == 6
    assert rows[0]["dst_port"] == port and rows[0]["protocol"] == "udp"
    # measured from the kernel's timestamp of the 6th packet: positive and small
    assert 0 < rows[0]["delay_ms"] < 2000


def test_live_command_replays_a_capture(run, tmp_path):  # noqa: F811
    """`trafficlens live -r` as a user runs it: JSON lines out, the summary on stderr."""
    import json

    from click.testing import CliRunner

    from trafficlens.cli import cli

    import torch

    out = tmp_path / "live.jsonl"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["live", str(run[0]), "-r", str(SAMPLE / "capture-2.pcapng"),
                                          "--speed", "0", "-o", str(out), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)  # the command sets one intra-op thread for itself
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert len(rows) == summary["decisions"] == 28 and summary["packets"] > 28 * 6
    assert f"live: ready, reading {SAMPLE / 'capture-2.pcapng'}" in result.stderr.splitlines()  # what a script waits for
    assert all(r["trigger"] == "after" and r["status"] == "ok" and r["label"] for r in rows)


def test_live_output_replaces_a_file_only_when_live_stops(run, tmp_path):  # noqa: F811
    """-o is written beside its name: a run that fails leaves an earlier file as it was."""
    import torch
    from click.testing import CliRunner

    from trafficlens.cli import cli

    out = tmp_path / "live.jsonl"
    out.write_text("earlier\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a capture")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["live", str(run[0]), "-r", str(notes), "--speed", "0",
                                          "-o", str(out), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)  # the command sets one intra-op thread for itself
    assert result.exit_code != 0 and "not a pcap or pcapng file" in str(result.exception)
    assert out.read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.jsonl", "notes.txt"]

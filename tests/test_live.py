"""live: replayed captures are decided session by session at the M-th packet, with bounded state."""

from __future__ import annotations

import time

import pytest

from captures import tcp_frame, tcp_session, write_pcap
from test_predict import SAMPLE, run  # noqa: F401  (the trained bundle fixture)
from trafficlens.errors import CaptureError
from trafficlens.serving import Classifier
from trafficlens.serving.live import LiveClassifier, interface, replay


def test_replay_decides_every_session_at_the_mth_packet(run):  # noqa: F811
    clf = Classifier.load(run[0])
    rows = []
    stats = LiveClassifier(clf, rows.append, after=6).run(replay(SAMPLE / "capture-2.pcapng", speed=None))
    assert stats.decisions == len(rows) == 28 == stats.decided_early
    assert {r["trigger"] for r in rows} == {"after"} and all(r["packets"] == 6 for r in rows)
    assert stats.summary()["delay_ms_median"] is not None
    # decided on 6 packets, the labels agree with whole-session prediction on this sample
    full = clf.predict_pcap(SAMPLE / "capture-2.pcapng")
    by_port = dict(zip(full.src_port, full.label))
    agree = sum(by_port[r["src_port"]] == r["label"] for r in rows)
    assert agree >= 0.9 * len(rows)


def test_short_sessions_decided_at_their_end_with_reasons(run, tmp_path):  # noqa: F811
    # 4 kept packets (SYN, SYN-ACK, request, response): never reaches M=6, under min_packets=5
    capture = write_pcap(tmp_path / "short.pcap", tcp_session(requests=(b"hi",), responses=(b"yo",), close=False))
    rows = []
    LiveClassifier(Classifier.load(run[0]), rows.append, after=6).run(replay(capture, speed=None))
    assert len(rows) == 1 and rows[0]["trigger"] == "end"
    assert rows[0]["status"] == "not_judged" and rows[0]["reason"] == "fewer packets than the model's min_packets"


def test_state_is_bounded_by_eviction(run, tmp_path):  # noqa: F811
    frames = []
    for i in range(50):  # 50 concurrent sessions, each one payload packet so far
        frames.append((i * 0.001, tcp_frame(b"x" * 40, sport=20000 + i, seq=1, flags="PA")))
    capture = write_pcap(tmp_path / "many.pcap", frames)
    rows = []
    live = LiveClassifier(Classifier.load(run[0]), rows.append, after=6, max_sessions=10)
    stats = live.run(replay(capture, speed=None))
    assert stats.evicted >= 40 and len(live._assembler.sessions) == 0
    assert len(rows) == 50  # evicted sessions are still decided, not lost


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
    assert rows[0]["dst_port"] == port and rows[0]["protocol"] == "UDP"
    # measured from the kernel's timestamp of the 6th packet: positive and small
    assert 0 < rows[0]["delay_ms"] < 2000

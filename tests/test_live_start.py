"""What keeps live decisions fast from the first packet: the rehearsal before capture, session
tables sized up front, a frozen heap, and a worker that takes ready sessions itself."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from captures import tcp_frame, tcp_session, write_pcap
from test_predict import SAMPLE, run  # noqa: F401  (the trained bundle fixture)
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.engines import numba_available
from trafficlens.prep.engines.blocks import packet_blocks
from trafficlens.prep.engines.rehearsal import rehearsal_packets, rehearse
from trafficlens.serving import Classifier
from trafficlens.serving.live import Interface, LiveClassifier, replay

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.mark.parametrize("backend", ["python", pytest.param("numba", marks=needs_numba)])
def test_rehearsal_hands_over_every_session(backend):
    packets = rehearsal_packets()
    batches = rehearse(backend, PrepConfig(), after=6)
    metas = [m for b in batches for m in b.rows(np.arange(len(b)), tensors=False)[0]["src_port"]]
    # 24 TCP sessions and 24 UDP flows, each of them handed over once; the UDP flows of one packet at close
    assert len(metas) == 48 and len(packets) > 48 * 6


@needs_numba
def test_rehearsal_runs_every_growth_path(monkeypatch):
    """The kernels a live engine loads only when its tables fill (the table, both pools, the
    arena's compaction) are loaded by the rehearsal, not at the first busy moment of traffic."""
    from trafficlens.prep.engines import kernels as kn
    from trafficlens.prep.engines.compiled import CompiledEngine

    codes = []
    grow = CompiledEngine._grow
    monkeypatch.setattr(CompiledEngine, "_grow", lambda self, code: (codes.append(code), grow(self, code)))
    rehearse("numba", PrepConfig(), after=6)
    assert set(codes) == {kn.NEED_SLOT, kn.NEED_PACKET, kn.NEED_STORED, kn.NEED_ARENA}


@needs_numba
def test_live_engines_start_with_room_for_max_sessions_and_prep_engines_small(monkeypatch, tmp_path):
    from trafficlens.prep.engines.base import EngineSink
    from trafficlens.prep.engines.compiled import CompiledEngine

    sink = EngineSink(lambda *batch: None)
    live = CompiledEngine(PrepConfig(), "x", sink, after=6, max_sessions=1000)
    prep = CompiledEngine(PrepConfig(), "x", sink)
    assert live.st.slot_ints.shape[0] == 1024 and live.st.arena.size >= 1024 * CompiledEngine.LIVE_ARENA_PER_SLOT
    assert prep.st.slot_ints.shape[0] == CompiledEngine.INITIAL_SLOTS and prep.st.arena.size < live.st.arena.size
    grown = []
    monkeypatch.setattr(CompiledEngine, "_grow", lambda self, code: grown.append(code))
    # 1000 sessions of one packet each: none of the live engine's tables has to grow
    frames = [(i * 0.001, tcp_frame(b"x" * 300, sport=10000 + i, seq=1, flags="PA")) for i in range(1000)]
    for block in packet_blocks(replay(write_pcap(tmp_path / "many.pcap", frames), speed=None)):
        live.feed(block)
    assert live.tracked == 1000 and grown == []


def test_the_heap_is_frozen_while_live_runs_and_given_back_after(run):  # noqa: F811
    before = gc.get_freeze_count()
    seen = []
    LiveClassifier(Classifier.load(run[0]), lambda row: seen.append(gc.get_freeze_count()), after=6).run(
        replay(SAMPLE / "capture-2.pcapng", speed=None))
    assert before == 0 and len(seen) == 28 and min(seen) > 10_000  # torch, numba and the model at least
    assert gc.get_freeze_count() == 0


def test_ready_is_signalled_after_loading_and_before_the_first_packet(run):  # noqa: F811
    events = []

    def source():
        events.append("first packet read")
        yield from replay(SAMPLE / "capture-2.pcapng", speed=None)

    live = LiveClassifier(Classifier.load(run[0]), lambda row: None, after=6)
    live.run(source(), on_ready=lambda: events.append(("ready", gc.get_freeze_count() > 0)))
    assert events == [("ready", True), "first packet read"]  # rehearsed and frozen by then


class _QuietLine(Interface):
    """An interface that hands over one block, then stays quiet (no heartbeat) until told."""

    def __init__(self, block, until: threading.Event):
        self._block, self._until = block, until
        self.waited = None

    def blocks(self):
        yield self._block
        self.waited = self._until.wait(5.0)  # a blocking read on a silent line


@pytest.mark.parametrize("backend", ["python", pytest.param("numba", marks=needs_numba)])
def test_a_ready_session_is_decided_without_waiting_for_the_next_block(run, tmp_path, backend):  # noqa: F811
    """The worker takes a ready session once it has waited `max_wait_ms`: its decision does not
    wait for capture to read another block, which on a quiet line may be seconds away."""
    frames = tcp_session(requests=(b"a" * 50, b"b" * 60, b"c" * 70), responses=(b"x" * 80, b"y" * 90, b"z" * 99))
    block = next(packet_blocks(replay(write_pcap(tmp_path / "one.pcap", frames), speed=None)))
    decided = threading.Event()
    rows = []
    line = _QuietLine(block, decided)
    live = LiveClassifier(Classifier.load(run[0]), lambda row: (rows.append(row), decided.set()), after=6,
                          backend=backend)
    live.run(line)
    assert line.waited is True  # the row came while capture still waited on the line
    assert len(rows) == 1 and rows[0]["trigger"] == "after"

"""Session assembly on its own (flows/): what each packet does to the session it joins, TCP
ranges and reordering, bounded state (eviction, idle flush), and the order sessions end in.
Values are worked out by hand from the packets built here."""

from __future__ import annotations

import pytest

from captures import CLIENT, SERVER, tcp_frame, udp_frame
from trafficlens.capture import RawPacket, decode
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.sessions.assembler import SessionAssembler
from trafficlens.prep.sessions.session import Session


def packets(frames):
    return [decode(RawPacket(ts, frame, len(frame), 1)) for ts, frame in frames]


def assemble(frames, **settings):
    ended: list[Session] = []
    assembler = SessionAssembler(PrepConfig(**settings), ended.append)
    for p in packets(frames):
        assembler.add(p)
    assembler.close()
    return ended, assembler


C = dict(src=CLIENT, dst=SERVER, sport=40000, dport=443)
S = dict(src=SERVER, dst=CLIENT, sport=443, dport=40000)


def test_a_session_s_packets_sizes_directions_and_flags():
    frames = [(1.0, tcp_frame(seq=9, flags="S", **C)), (1.5, tcp_frame(seq=99, ack=10, flags="SA", **S)),
              (2.0, tcp_frame(seq=10, ack=100, flags="A", **C)),  # pure ACK: dropped, counted
              (2.5, tcp_frame(b"abc", seq=10, ack=100, flags="PA", **C)),
              (3.0, tcp_frame(b"defgh", seq=100, ack=13, flags="PA", **S))]
    (s,), a = assemble(frames)
    assert (s.client, s.server) == ((bytes([10, 1, 1, 1]), 40000), (bytes([10, 2, 2, 2]), 443))
    assert (s.proto, s.version, s.ts_start, s.ts_last) == (6, 4, 1.0, 3.0)
    assert list(s.times) == [1.0, 1.5, 2.5, 3.0] and list(s.sizes) == [40, 40, 43, 45]
    assert list(s.dirs) == [0, 1, 0, 1] and list(s.flags) == [0x02, 0x12, 0x18, 0x18]
    assert s.payload_bytes == 8 and a.pure_ack_packets == 1 and a.sessions_started == 1
    assert [(ts, d, rel) for ts, d, rel, _, _ in s.stored] == [(1.0, 0, None), (1.5, 1, None), (2.5, 0, 0), (3.0, 1, 0)]
    assert [offset for *_, offset in s.stored] == [54] * 4  # payload at 14 + 20 + 20 in the `all` view


def test_tcp_ranges_tell_retransmissions_from_gaps_filled():
    s = Session(("k",), packets([(0.0, tcp_frame(b"x", seq=1000, flags="PA", **C))])[0], True)
    assert s.tcp_segment(0, 1000, 100) == (False, 0)
    assert s.tcp_segment(0, 1100, 50) == (False, 100)  # in order
    assert s.tcp_segment(0, 1200, 100) == (False, 200) and s.out_of_order is False  # a gap before it
    assert s.ranges[0] == [[0, 150], [200, 300]]
    assert s.tcp_segment(0, 1150, 50) == (False, 150) and s.out_of_order is True  # fills the gap
    assert s.ranges[0] == [[0, 300]]
    assert s.tcp_segment(0, 1020, 30) == (True, 20)  # inside what was seen: a retransmission
    assert s.tcp_segment(0, 1290, 20) == (False, 290) and s.ranges[0] == [[0, 310]]  # overlaps, not inside
    assert s.tcp_segment(0, 990, 5) == (False, -10)  # before the first segment seen
    assert s.tcp_segment(1, 7, 10) == (False, 0) and s.seq_base == [1000, 7]  # each direction its own base
    wrapped = Session(("k",), packets([(0.0, tcp_frame(b"x", seq=1000, flags="PA", **C))])[0], True)
    assert wrapped.tcp_segment(0, 2**32 - 10, 10) == (False, 0) and wrapped.tcp_segment(0, 0, 10) == (False, 10)


def test_out_of_order_segments_take_the_time_slots_in_sequence_order():
    frames = [(0.0, tcp_frame(seq=9, flags="S", **C)),
              (0.1, tcp_frame(b"C" * 10, seq=30, flags="PA", **C)),
              (0.2, tcp_frame(b"R" * 5, seq=500, ack=40, flags="PA", **S)),
              (0.3, tcp_frame(b"A" * 10, seq=10, flags="PA", **C)),
              (0.4, tcp_frame(b"B" * 10, seq=20, flags="PA", **C))]
    (s,), _ = assemble(frames, layer="payload", mask="none")
    assert s.out_of_order and s.order() == [2, 1, 3, 0]  # stored: C, R, A, B (the SYN has no payload view)
    assert [(ts, d, bytes(v)) for ts, d, v in s.ordered_views()] == [
        (0.1, 0, b"A" * 10), (0.2, 1, b"R" * 5), (0.3, 0, b"B" * 10), (0.4, 0, b"C" * 10)]


def test_new_sessions_on_syn_after_fin_or_rst_and_after_the_idle_timeout():
    frames = [(0.0, tcp_frame(seq=1, flags="S", **C)), (0.1, tcp_frame(b"a", seq=2, flags="PA", **C)),
              (0.2, tcp_frame(seq=3, flags="FA", **C)),
              (0.3, tcp_frame(seq=5, ack=3, flags="SA", **S)),  # a SYN-ACK after the FIN: same session
              (0.4, tcp_frame(seq=10, flags="S", **C)),  # a SYN after it: a new one
              (0.5, tcp_frame(b"b", seq=11, flags="PA", **C)), (0.6, tcp_frame(seq=12, flags="RA", **C)),
              (0.7, tcp_frame(seq=20, flags="S", **C)),  # after the RST
              (10.0, tcp_frame(b"c", seq=21, flags="PA", **C)),  # within the timeout
              (20.1, tcp_frame(b"d", seq=22, flags="PA", **C))]  # 10.1 s of silence: a new session
    ended, a = assemble(frames, idle_timeout=10.0)
    assert [(s.ts_start, len(s.times)) for s in ended] == [(0.0, 4), (0.4, 3), (0.7, 2), (20.1, 1)]
    assert a.sessions_started == 4 and [s.closing for s in ended] == [True, True, False, False]


def test_unit_flow_keeps_directions_apart():
    frames = [(0.0, udp_frame(b"q")), (0.1, udp_frame(b"answer", src=SERVER, dst=CLIENT, sport=53, dport=5353)),
              (0.2, udp_frame(b"q2"))]
    sessions, _ = assemble(frames)
    assert [(len(s.times), list(s.dirs)) for s in sessions] == [(3, [0, 1, 0])]
    flows, _ = assemble(frames, unit="flow")
    assert sorted((s.client[1], len(s.times), list(s.dirs)) for s in flows) == [(53, 1, [0]), (5353, 2, [0, 0])]


def test_a_capture_starting_at_the_syn_ack_names_the_client():
    frames = [(0.0, tcp_frame(seq=5, ack=1, flags="SA", **S)), (0.1, tcp_frame(b"hi", seq=1, ack=6, flags="PA", **C))]
    (s,), _ = assemble(frames)
    assert s.client == (bytes([10, 1, 1, 1]), 40000) and list(s.dirs) == [1, 0]


def test_stored_views_stop_after_the_packets_and_bytes_the_tensors_need():
    frames = [(i * 0.1, udp_frame(bytes([i + 1]) * 100)) for i in range(20)]
    (s,), _ = assemble(frames, packets=3, image_bytes=300, packet_bytes=50)
    # 3 + 4 packets (a margin for reordering) and 300 bytes: 154-byte `all` views (14 + 20 + 8 + 12 + 100)
    assert len(s.stored) == 7 and s.stored_bytes == 7 * 154 and {len(v) for _, _, _, v, _ in s.stored} == {154}
    (s,), _ = assemble(frames, packets=1, image_bytes=2000, packet_bytes=50)
    assert len(s.stored) == 13 and s.stored_bytes == 13 * 154  # until 2000 bytes are stored
    (s,), _ = assemble(frames, packets=1, image_bytes=100, packet_bytes=60)
    assert len(s.stored) == 5 and {len(v) for _, _, _, v, _ in s.stored} == {100}  # views cut to the image
    assert len(s.times) == 20  # every packet counts towards the statistics


def test_eviction_ends_the_least_recently_active_tenth():
    ended: list[Session] = []
    a = SessionAssembler(PrepConfig(), ended.append, max_sessions=20)
    for i, p in enumerate(packets([(i * 0.01, udp_frame(b"x", sport=1000 + i)) for i in range(25)])):
        a.add(p)
    # the 21st session evicts 2 (a tenth of 21, rounded down), leaving 19; the 22nd makes 20; ...
    assert [s.client[1] for s in ended] == [1000, 1001, 1002, 1003, 1004, 1005]
    assert a.evicted == 6 and len(a.sessions) == 19
    a.close()
    assert [s.client[1] for s in ended[6:]] == list(range(1006, 1025))  # the rest, oldest first


def test_idle_sessions_are_flushed_as_the_clock_advances():
    ended: list[Session] = []
    a = SessionAssembler(PrepConfig(idle_timeout=5.0), ended.append)
    for p in packets([(0.0, udp_frame(b"a", sport=1)), (3.0, udp_frame(b"b", sport=2)), (4.0, udp_frame(b"c", sport=1))]):
        a.add(p)
    a.flush_idle(8.5)  # session 2 silent since 3.0 (5.5 s), session 1 since 4.0 (4.5 s)
    assert [s.client[1] for s in ended] == [2]
    a.flush_idle(9.0)  # exactly 5 s: not yet
    assert [s.client[1] for s in ended] == [2]
    a.flush_idle(9.01)
    assert [s.client[1] for s in ended] == [2, 1] and not a.sessions


def test_watch_sees_every_kept_packet():
    seen = []
    a = SessionAssembler(PrepConfig(), lambda s: None, watch=lambda s: seen.append(len(s.times)))
    frames = [(0.0, tcp_frame(seq=1, flags="S", **C)), (0.1, tcp_frame(seq=2, ack=1, flags="A", **C)),
              (0.2, tcp_frame(b"x", seq=2, flags="PA", **C)), (0.3, tcp_frame(b"x", seq=2, flags="PA", **C))]
    for p in packets(frames):
        a.add(p)
    assert seen == [1, 2]  # neither the pure ACK nor the retransmission
    assert (a.pure_ack_packets, a.retransmission_packets) == (1, 1)


@pytest.mark.parametrize("mask,counted", [("strict", 1), ("paper", 0)])
def test_quic_short_headers_before_the_peer_s_long_header_are_counted(mask, counted):
    long = b"\xc3\x00\x00\x00\x01\x08" + bytes(range(1, 9)) + b"\x05" + bytes(range(9, 14)) + b"\x00\x40\x20" + bytes(32)
    frames = [(0.0, udp_frame(long, sport=50000, dport=443)),
              (0.1, udp_frame(b"\x41" + bytes(range(20, 60)), sport=50000, dport=443)),  # peer's ID length unknown yet
              (0.2, udp_frame(long, src=SERVER, dst=CLIENT, sport=443, dport=50000)),
              (0.3, udp_frame(b"\x41" + bytes(range(20, 60)), sport=50000, dport=443))]  # now known: 5
    (s,), a = assemble(frames, mask=mask)
    assert a.quic_short_unmasked == counted
    if mask == "strict":
        assert s.quic and s.cids == [5, 5]
        assert s.stored[3][3][54 + 1 : 54 + 6] == bytes(5) and s.stored[1][3][54 + 1 : 54 + 6] == bytes(range(20, 25))


def test_eviction_at_small_caps_ends_the_least_recently_active_not_the_lowest_key():
    """max_sessions is a cap reached, not exceeded; a tenth of the sessions, at least one, go;
    the order is by last activity (the ports fall as time goes on, so key order would differ)."""
    ended: list[Session] = []
    a = SessionAssembler(PrepConfig(), ended.append, max_sessions=3)
    frames = [(i * 0.01, udp_frame(b"x", sport=2000 - i)) for i in range(3)]
    for p in packets(frames):
        a.add(p)
    assert not ended and len(a.sessions) == 3 and a.evicted == 0  # at the cap: nothing evicted
    a.add(packets([(0.5, udp_frame(b"y", sport=2000))])[0])  # the oldest is active again
    a.add(packets([(0.6, udp_frame(b"z", sport=1500))])[0])  # a 4th session: one (4 // 10, at least 1) goes
    assert [s.client[1] for s in ended] == [1999] and a.evicted == 1 and len(a.sessions) == 3


def test_a_packet_exactly_the_idle_timeout_later_stays_in_its_session():
    frames = [(0.0, udp_frame(b"a")), (10.0, udp_frame(b"b")), (20.0 + 1e-6, udp_frame(b"c"))]
    ended, _ = assemble(frames, idle_timeout=10.0)
    assert [(s.ts_start, len(s.times)) for s in ended] == [(0.0, 2), (20.0 + 1e-6, 1)]


def test_idle_sessions_are_scanned_for_every_65536_packets():
    """Without flush_idle calls (prep of a file), a scan every _IDLE_SCAN_EVERY packets ends the
    sessions silent past the timeout: memory stays bounded on a long capture."""
    from trafficlens.prep.sessions.assembler import _IDLE_SCAN_EVERY

    ended: list[Session] = []
    a = SessionAssembler(PrepConfig(idle_timeout=5.0), ended.append)
    busy = packets([(0.0, udp_frame(b"b", sport=2))])[0]
    t = 10.0
    for silent_port, silent_ts in ((1, 0.0), (3, None)):
        a.add(packets([(t if silent_ts is None else silent_ts, udp_frame(b"a", sport=silent_port))])[0])
        for _ in range(_IDLE_SCAN_EVERY - 2):  # the scan's packets but one
            t += 1e-4
            a.add(busy._replace(ts=t))
        assert silent_port not in [s.client[1] for s in ended]  # no scan yet
        t += 1e-4
        a.add(busy._replace(ts=t))  # the scan's packet: the silent session ends, the busy one stays
        assert [s.client[1] for s in ended][-1] == silent_port and len(a.sessions) == 1
    assert [s.client[1] for s in ended] == [1, 3]


def test_ecn_flags_are_kept_whole():
    (s,), _ = assemble([(0.0, tcp_frame(seq=1, flags=0xC2, **C))])  # SYN with ECE and CWR: over 127
    assert list(s.flags) == [0xC2]


def test_stored_views_are_capped_per_session():
    """256 stored packets at most, whatever the settings ask; and storing stops once both the
    packets and the bytes the tensors need are there, also when the bytes are met exactly."""
    frames = [(i * 0.001, udp_frame(bytes([i % 250 + 1]))) for i in range(300)]
    (s,), _ = assemble(frames, layer="payload", image_bytes=1225, packets=6, packet_bytes=96)
    assert len(s.stored) == 256 and s.stored_bytes == 256 and len(s.times) == 300
    frames = [(i * 0.1, udp_frame(bytes([i + 1]) * 60)) for i in range(10)]
    (s,), _ = assemble(frames, layer="payload", image_bytes=300, packets=1, packet_bytes=50)
    assert len(s.stored) == 5 and s.stored_bytes == 300  # 1 + 4 packets, exactly 300 bytes


def test_out_of_order_server_segments_are_reordered_too():
    frames = [(0.0, tcp_frame(b"q" * 4, seq=10, **C)),
              (0.1, tcp_frame(b"Y" * 6, seq=106, **S)),  # the server's second segment first
              (0.2, tcp_frame(b"X" * 6, seq=100, **S)),
              (0.3, tcp_frame(b"r" * 4, seq=14, **C))]
    (s,), _ = assemble(frames, layer="payload", mask="none")
    assert s.out_of_order
    assert [(d, bytes(v)) for _, d, v in s.ordered_views()] == [(0, b"q" * 4), (1, b"X" * 6), (1, b"Y" * 6), (0, b"r" * 4)]


@pytest.mark.parametrize("direction", ["client", "server"])
def test_a_hello_longer_than_the_stored_view_is_masked_across_its_segments(direction):
    """A hello cut into a first segment longer than what a view keeps (`image_bytes` here): the
    first segment is stored whole, so the hello is masked on the stream, and the bytes of its key
    share in the second segment are zeroed, in either direction."""
    from test_strict_mask import HOST, client_hello, fill, server_hello
    from trafficlens.prep.tensors.tls import mask_hello

    if direction == "client":
        hello = client_hello(HOST, fill(32, 1), fill(32, 2), [(29, fill(32, 3)), (0x11EC, fill(1216, 4))])
        me, first_seq = C, 1000
    else:
        hello = server_hello(fill(32, 1), fill(32, 2), fill(1120, 3))
        me, first_seq = S, 5000
    cut = 600
    frames = [(0.0, tcp_frame(seq=999, flags="S", **C)), (0.1, tcp_frame(hello[:cut], seq=first_seq, **me)),
              (0.2, tcp_frame(hello[cut:], seq=first_seq + cut, **me))]
    (s,), _ = assemble(frames, layer="payload", mask="strict", image_bytes=400, packets=6, packet_bytes=96)
    masked = bytearray(hello)
    assert mask_hello(masked) > 1000  # the key share runs on into the second segment
    views = [bytes(v) for _, d, v in s.ordered_views() if d == (0 if direction == "client" else 1) and v]
    assert len(views) == 2 and len(views[0]) == cut  # stored whole, past the 400 bytes a view keeps
    assert views[1] == bytes(masked[cut:]) and views[1] != hello[cut:]

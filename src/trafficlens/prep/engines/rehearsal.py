"""A rehearsal of a session engine on a small synthetic capture, before live traffic arrives.

The compiled engine's kernels load lazily from numba's disk cache: live capture's first blocks
waited 44 and 17 ms for them, and the first table growth and arena compaction for theirs
(measured on the live benchmark's capture), and at 100 k packets/s the packets queued behind
those stalls made the first ~200 decisions 100-200 ms late. `rehearse` runs a throwaway engine
of the same kind and settings through every path live traffic takes (triggers at the M-th
packet, ends on FIN and at close, tables grown, the arena compacted) and returns the sessions
it handed over, for the caller to run through its model as well.
"""

from __future__ import annotations

from typing import Any

from trafficlens.capture import build
from trafficlens.capture.linktypes import ETHERNET
from trafficlens.capture.reader import RawPacket
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.engines import make_engine, resolve_backend
from trafficlens.prep.engines.base import EngineSink
from trafficlens.prep.engines.blocks import packet_blocks

SESSIONS = 24  # per protocol: past the tiny engine's tables, so that each grows more than once
PACKETS = 8  # per session: past the usual trigger (the papers decide on the first 6)


def rehearsal_packets(sessions: int = SESSIONS, packets: int = PACKETS) -> list[RawPacket]:
    """TCP sessions (handshake, data both ways, FIN) and UDP flows, interleaved, one ms apart."""
    frames: list[bytes] = []
    for i in range(sessions):
        client, server, sport = f"10.9.{i // 200}.{i % 200 + 1}", "10.9.255.1", 40000 + i
        seq = {client: 1000, server: 5000}

        def segment(src: str, dst: str, flags: str, payload: bytes = b"") -> bytes:
            ports = (sport, 443) if src == client else (443, sport)
            ack = seq[dst]
            out = build.tcp(payload, *ports, seq=seq[src], ack=ack, flags=flags, src=src, dst=dst)
            seq[src] += len(payload) + (1 if "S" in flags or "F" in flags else 0)
            return build.ethernet(build.ipv4(out, src=src, dst=dst, proto=6))

        frames += [segment(client, server, "S"), segment(server, client, "SA")]
        for k in range(packets):
            src, dst = (client, server) if k % 2 == 0 else (server, client)
            frames.append(segment(src, dst, "PA", bytes([k + 1]) * (40 + 17 * k)))
        frames += [segment(client, server, "FA"), segment(server, client, "FA")]
        for k in range(packets if i % 2 else 1):  # half of the UDP flows end only at close
            src, dst = (client, "10.9.255.2") if k % 2 == 0 else ("10.9.255.2", client)
            udp = build.udp(bytes([k + 2]) * (30 + 11 * k), sport if src == client else 53,
                            53 if src == client else sport, src=src, dst=dst)
            frames.append(build.ethernet(build.ipv4(udp, src=src, dst=dst, proto=17)))
    return [RawPacket(1.0 + i / 1000, frame, len(frame), ETHERNET) for i, frame in enumerate(frames)]


def rehearse(backend: str | None, config: PrepConfig, after: int) -> list[Any]:
    """The `ExampleBatch`es a fresh engine (`backend`, `config`, live with `after` when > 0)
    hands over for `rehearsal_packets`; the compiled engine starts with tiny tables here, so
    that growing them and compacting its arena run (and load) too."""
    batches: list[Any] = []
    sink = EngineSink(lambda batch, trigger, times: batches.append(batch))
    if resolve_backend(backend) == "numba":
        from trafficlens.prep.engines.compiled import CompiledEngine

        class Tiny(CompiledEngine):
            INITIAL_SLOTS, INITIAL_NODES, INITIAL_ARENA = 2, 4, 0

        engine = Tiny(config, "rehearsal", sink, after=after)
    else:
        engine = make_engine(backend, config, "rehearsal", sink, after=after)
    for block in packet_blocks(rehearsal_packets(), size=64):
        engine.feed(block)
    engine.close()
    return batches

"""The one interface of prep's two session engines: packets in, sessions with tensors out.

    engine = make_engine("numba", config, "x.pcap", sink, label_of=label_of)
    for block in engine.blocks(reader):      # the engine's own way of reading a capture
        engine.feed(block)
    engine.close()

An engine decodes packets, assembles them into sessions with the papers' cleaning rules (drop
retransmissions and pure ACKs, reorder, end on FIN/RST and idle timeout), masks the layer view
and builds tensors and statistics. `ReferenceEngine` does it in plain Python, packet by packet,
and is the test oracle; `CompiledEngine` does it in numba kernels over blocks of packets. Both
give byte-identical output (tests/test_fast_backend.py), so a caller picks one with
`make_engine(backend, ...)` and never looks at which it got.

Output goes to an `EngineSink`: sessions that pass the filters as `ExampleBatch`es, in the
order they finished, and rejected sessions one by one. Prep hands over every session at its
end; live decisions (`after=M`) hand a session over at its M-th kept packet, with exactly the
packets it had then (trigger "after"), or at its end when it never got there (trigger "end").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from trafficlens.prep.config import PrepConfig


class PacketBlock(NamedTuple):
    """Packets side by side: record i is data[offsets[i] : offsets[i] + caplens[i]]."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64
    caplens: np.ndarray  # int64: bytes captured
    lengths: np.ndarray  # int64: bytes on the wire
    times: np.ndarray  # float64: seconds since the epoch
    linktypes: np.ndarray  # int64: LINKTYPE_* per packet

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class EngineSink:
    """Where an engine's sessions go.

    `sessions(batch, trigger, trigger_times)`: sessions that pass the filters (labels applied),
    `trigger` "end" (or "after" in live mode), `trigger_times` the capture time of each one's
    trigger packet (its last kept packet at "end"). `reject(meta, reason, trigger)`: a session
    a filter dropped (`reason` is a key of `filters.REJECTS`), when given.
    """

    sessions: Callable[[Any, str, np.ndarray], None]
    reject: Callable[[dict[str, Any], str, str], None] | None = None


@dataclass
class EngineCounts:
    """What an engine counted while it worked, for the file's report."""

    skipped: dict[str, int] = field(default_factory=dict)  # packets not assembled, by reason
    dropped: dict[str, int] = field(default_factory=dict)  # sessions rejected, by reason
    retransmission_packets: int = 0
    pure_ack_packets: int = 0
    fragments_kept: int = 0  # first IP fragments kept (their payload is partial)
    quic_short_unmasked: int = 0  # QUIC short headers whose connection ID length was unknown
    evicted: int = 0  # live: sessions ended early to keep under max_sessions


class SessionEngine(ABC):
    """Sessions of one source (a capture file, an interface), fed block by block.

    `label_of(meta)` gives a session's label (prep); `after` > 0 switches to live decisions;
    `max_sessions` caps the sessions held at once, ending the least recently active.
    """

    def __init__(self, config: PrepConfig, source: str, sink: EngineSink, *, label_of=None, after: int = 0,
                 max_sessions: int | None = None):
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        self.config = config
        self.source = source
        self.sink = sink
        self.label_of = label_of
        self.after = after
        self.max_sessions = max_sessions

    @abstractmethod
    def blocks(self, reader) -> Iterator[PacketBlock]:
        """The packets of an open `capture.CaptureReader`, as this engine reads them fastest."""

    @abstractmethod
    def feed(self, block: PacketBlock) -> None:
        """Decode and assemble one block; hand over the sessions it finished."""

    @abstractmethod
    def flush_idle(self, now: float) -> None:
        """End the sessions silent for longer than the idle timeout at capture time `now`."""

    @abstractmethod
    def close(self) -> None:
        """End of input: every session still held, oldest first."""

    @property
    @abstractmethod
    def counts(self) -> EngineCounts:
        """The counters so far."""

    @property
    @abstractmethod
    def tracked(self) -> int:
        """Sessions held now."""

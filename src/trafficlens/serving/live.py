"""Live classification: decide a session as soon as it has the packets the model needs.

Packets come from an interface (libpcap through pcapy-ng, whose wheel bundles libpcap) or from
a capture replayed at its recorded pace. A session is decided when its `after`-th packet is
kept (the papers classify on the first 6 packets), or when it ends or idles out if it never
gets that far. State is bounded: sessions expire after the model's idle timeout, and past
`max_sessions` the least recently active are evicted (and counted).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from trafficlens.capture.decode import decode
from trafficlens.capture.reader import CaptureReader, RawPacket
from trafficlens.errors import CaptureError
from trafficlens.features.tensors import Example, Featurizer
from trafficlens.flows.assembler import SessionAssembler
from trafficlens.serving.classifier import _REASONS, Classifier


def replay(path: str | os.PathLike, speed: float | None = 1.0) -> Iterator[RawPacket]:
    """The packets of a capture, released at their recorded pace (`speed` x); None: at once."""
    start_wall = start_ts = None
    for packet in CaptureReader(path):
        if speed is not None:
            if start_wall is None:
                start_wall, start_ts = time.perf_counter(), packet.ts
            wait = (packet.ts - start_ts) / speed - (time.perf_counter() - start_wall)
            if wait > 0:
                time.sleep(wait)
        yield packet


def interface(name: str, snaplen: int = 65535, bpf: str | None = None) -> Iterator[RawPacket]:
    """Packets captured on a network interface (needs root or CAP_NET_RAW)."""
    try:
        import pcapy
    except ImportError:
        raise CaptureError("live capture needs pcapy-ng: pip install 'trafficlens[live]'") from None
    try:
        handle = pcapy.open_live(name, snaplen, True, 100)
        if bpf:
            handle.setfilter(bpf)
    except pcapy.PcapError as exc:
        text = str(exc)
        if "permission" in text.lower() or "not permitted" in text.lower():
            raise CaptureError(
                f"capturing on {name} is not permitted: run as root, or grant the capability once with "
                f"'sudo setcap cap_net_raw,cap_net_admin+eip $(readlink -f $(which python3))'"
            ) from None
        raise CaptureError(f"cannot capture on {name}: {text}") from None
    linktype = handle.datalink()
    while True:
        header, data = handle.next()
        if header is None:
            continue  # read timeout with no packet: poll again
        sec, usec = header.getts()
        yield RawPacket(sec + usec * 1e-6, bytes(data), header.getlen(), linktype)


@dataclass
class LiveStats:
    packets: int = 0
    decisions: int = 0
    decided_early: int = 0
    evicted: int = 0
    delays_ms: list[float] = field(default_factory=list)  # M-th packet kept -> decision written

    def summary(self) -> dict[str, Any]:
        delays = sorted(self.delays_ms)
        pick = (lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]) if delays else (lambda q: None)
        return {"packets": self.packets, "decisions": self.decisions, "decided_after_m": self.decided_early,
                "evicted_sessions": self.evicted, "delay_ms_median": pick(0.5), "delay_ms_p99": pick(0.99)}


class LiveClassifier:
    """Feed packets, get one decision row per session through `sink` as soon as possible."""

    def __init__(self, clf: Classifier, sink: Callable[[dict[str, Any]], None], *, after: int = 6,
                 max_sessions: int = 100_000, top_k: int = 1, min_confidence: float = 0.0, name: str = "live"):
        self.clf = clf
        self.sink = sink
        self.after = after
        self.top_k = top_k
        self.min_confidence = min_confidence
        self.stats = LiveStats()
        self._decided: set[int] = set()
        self._examples: list[Example] = []
        self._rejected: list[dict[str, Any]] = []
        self._featurizer = Featurizer(clf.prep_config, name, None, self._examples.append, self._on_reject)
        self._assembler = SessionAssembler(clf.prep_config, self._on_end, watch=self._on_packet, max_sessions=max_sessions)

    def _on_reject(self, meta: dict[str, Any], reason: str) -> None:
        self._rejected.append(meta | {"reason": reason})

    def _decide(self, s, trigger: str, started: float) -> None:
        self._featurizer(s)
        self._featurizer.flush()
        if self._examples:
            row = self.clf._rows_for(self._examples, self.top_k, self.min_confidence)[0]
        else:
            meta = self._rejected[0]
            row = {k: meta.get(k) for k in ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                                             "ts_start", "ts_end", "packets", "bytes")}
            row.update(label=None, confidence=None, top_k=[], status="not_judged",
                       reason=_REASONS.get(meta["reason"], meta["reason"]))
        self._examples.clear()
        self._rejected.clear()
        delay = (time.perf_counter() - started) * 1000
        row.update(trigger=trigger, delay_ms=delay)
        row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
        self.stats.decisions += 1
        if trigger == "after":
            self.stats.decided_early += 1
            self.stats.delays_ms.append(delay)
        self.sink(row)

    def _on_packet(self, s) -> None:
        if len(s.times) == self.after and id(s) not in self._decided:
            self._decided.add(id(s))
            self._decide(s, "after", time.perf_counter())

    def _on_end(self, s) -> None:
        if id(s) in self._decided:
            self._decided.discard(id(s))
        elif s.times:
            self._decide(s, "end", time.perf_counter())

    def run(self, packets: Iterable[RawPacket]) -> LiveStats:
        """Consume packets until the source ends (or Ctrl-C), then decide what is left."""
        try:
            for raw in packets:
                self.stats.packets += 1
                packet = decode(raw)
                if type(packet) is not str:
                    self._assembler.add(packet)
        except KeyboardInterrupt:
            pass
        finally:
            self._assembler.close()
            self.stats.evicted = self._assembler.evicted
        return self.stats

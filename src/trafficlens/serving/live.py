"""Live classification: decide a session as soon as it has the packets the model needs.

Packets come from an interface (libpcap through pcapy-ng, whose wheel bundles libpcap) or from
a capture replayed at its recorded pace. A session is decided when its `after`-th packet is
kept (the papers classify on the first 6 packets), or when it ends or idles out if it never
gets that far. State is bounded: sessions expire after the model's idle timeout, and past
`max_sessions` the least recently active are evicted (and counted).
"""

from __future__ import annotations

import copy
import os
import queue
import select
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from trafficlens.capture.decode import decode
from trafficlens.capture.reader import CaptureReader, RawPacket
from trafficlens.errors import CaptureError
from trafficlens.features.tensors import Example, Featurizer
from trafficlens.flows.assembler import SessionAssembler
from trafficlens.flows.session import Session
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


# libpcap's pcap_activate error codes (pcap/pcap.h)
_ACTIVATE_ERRORS = {-5: "no such device", -8: "permission denied (not permitted)", -7: "not up",
                    -4: "not supported: rfmon", -6: "rfmon not supported", -11: "promiscuous mode not permitted"}


class Interface:
    """Packets captured on a network interface (needs root or CAP_NET_RAW), read in batches.

    pcapy-ng's `next_batch` hands over up to 512 packets per call, so the C -> Python
    boundary is crossed once per batch, not per packet; a large kernel buffer absorbs bursts
    while a decision batch runs. A read timeout yields `None`: a heartbeat that lets the
    consumer flush waiting decisions when traffic pauses. `stats()` gives libpcap's counters
    (received, dropped by the kernel buffer, dropped by the interface).
    """

    def __init__(self, name: str, snaplen: int = 65535, bpf: str | None = None, buffer_bytes: int = 64 << 20,
                 timeout_ms: int = 1, idle_exit: float | None = None):
        try:
            import pcapy
        except ImportError:
            raise CaptureError("live capture needs pcapy-ng: pip install 'trafficlens[live]'") from None
        self.name = name
        self.idle_exit = idle_exit
        try:
            handle = pcapy.create(name)
            handle.set_snaplen(snaplen)
            handle.set_promisc(1)
            handle.set_timeout(timeout_ms)
            handle.set_buffer_size(buffer_bytes)
            status = handle.activate()  # pcapy-ng returns libpcap's status instead of raising
            if isinstance(status, int) and status < 0:
                raise pcapy.PcapError(_ACTIVATE_ERRORS.get(status, f"pcap_activate failed ({status})"))
            if bpf:
                handle.setfilter(bpf)
        except pcapy.PcapError as exc:
            text = str(exc)
            if "permission" in text.lower() or "not permitted" in text.lower():
                raise CaptureError(
                    f"capturing on {name} is not permitted: run as root, or grant the capability once with "
                    f"'sudo setcap cap_net_raw,cap_net_admin+eip $(readlink -f $(which python3))'"
                ) from None
            raise CaptureError(f"cannot capture on {name}: {text.strip() or 'no such device'}") from None
        self._handle = handle
        self.linktype = handle.datalink()

    def stats(self) -> dict[str, int]:
        received, dropped, if_dropped = self._handle.stats()
        return {"received": int(received), "dropped": int(dropped), "if_dropped": int(if_dropped)}

    def __iter__(self) -> Iterator[RawPacket | None]:
        handle, linktype = self._handle, self.linktype
        batched = hasattr(handle, "next_batch")
        if batched:
            # Blocking reads never time out while the line is silent (TPACKET_V3), so read
            # non-blocking and wait on the descriptor ourselves.
            handle.setnonblock(1)
            fd = handle.getfd()
        last = time.monotonic()
        while True:
            if batched:
                data, meta = handle.next_batch(512)
                records = memoryview(meta).cast("I") if len(meta) else ()
                for i in range(0, len(records), 4):
                    sec, usec, offset, caplen = records[i:i + 4]
                    yield RawPacket(sec + usec * 1e-6, bytes(data[offset:offset + caplen]), caplen, linktype)
                got = bool(records)
                if not got:
                    got = bool(select.select([fd], [], [], 0.01)[0])
                    if got:
                        continue
            else:
                header, data = handle.next()
                got = header is not None
                if got:
                    sec, usec = header.getts()
                    yield RawPacket(sec + usec * 1e-6, bytes(data), header.getlen(), linktype)
            now = time.monotonic()
            if got:
                last = now
            else:
                if self.idle_exit is not None and now - last > self.idle_exit:
                    return
                yield None


def interface(name: str, snaplen: int = 65535, bpf: str | None = None) -> Iterator[RawPacket | None]:
    """Packets captured on a network interface; see `Interface` for the counters and options."""
    return iter(Interface(name, snaplen, bpf))


def _snapshot(s: Session) -> Session:
    """A copy of a session as it is now: deciding in batches must not see packets that came later."""
    snap = copy.copy(s)
    snap.times, snap.sizes = array("d", s.times), array("l", s.sizes)
    snap.dirs, snap.flags, snap.stored = array("B", s.dirs), array("B", s.flags), list(s.stored)
    return snap


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
    """Feed packets, get one decision row per session through `sink` as soon as possible.

    Two threads share the work: the caller's thread reads packets, assembles sessions and
    builds the tensors of sessions that are ready (M-th packet, end, idle-out, eviction); a
    worker thread runs inference and writes rows, so capture never waits for the model
    (PyTorch releases the GIL while it computes). Ready sessions are handed over together:
    at once when the worker is idle and the oldest has waited `max_wait_ms`, or as soon as
    `max_batch` are waiting; at most two batches are queued, so memory stays bounded and a
    model slower than the traffic shows up as capture drops, not as a growing backlog. A
    session is frozen at its trigger, so a batch decides exactly the packets it had then.
    Delays are measured from the trigger packet's timestamp when `clock="capture"` (the
    kernel's, for an interface: time queued in the capture buffer counts) or from when it was
    read (`"arrival"`, for replays) to its row handed to `sink` (called from the worker thread).
    For small batches on CPU, one intra-op thread (`torch.set_num_threads(1)`) is fastest;
    the `live` command sets it.
    """

    def __init__(self, clf: Classifier, sink: Callable[[dict[str, Any]], None], *, after: int = 6,
                 max_sessions: int = 100_000, top_k: int = 1, min_confidence: float = 0.0, name: str = "live",
                 max_batch: int = 256, max_wait_ms: float = 1.0, clock: str = "arrival"):
        if clock not in ("arrival", "capture"):
            raise ValueError(f"clock must be 'arrival' or 'capture', got {clock!r}")
        self.clf = clf
        self.sink = sink
        self.after = after
        self.top_k = top_k
        self.min_confidence = min_confidence
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.clock = clock
        self.stats = LiveStats()
        self._decided: set[int] = set()
        self._ready: list[tuple[Session, str, float]] = []  # (frozen session, trigger, stamp)
        self._stamp = 0.0  # wall time of the packet being added
        self._examples: list[Example] = []
        self._rejected: list[dict[str, Any]] = []
        self._featurizer = Featurizer(clf.prep_config, name, None, self._examples.append, self._on_reject)
        self._assembler = SessionAssembler(clf.prep_config, self._on_end, watch=self._on_packet, max_sessions=max_sessions)
        self._jobs: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None

    def _on_reject(self, meta: dict[str, Any], reason: str) -> None:
        self._rejected.append(meta | {"reason": reason})

    def _on_packet(self, s) -> None:
        if len(s.times) == self.after and id(s) not in self._decided:
            self._decided.add(id(s))
            self._ready.append((_snapshot(s), "after", self._stamp))

    def _on_end(self, s) -> None:
        if id(s) in self._decided:
            self._decided.discard(id(s))
        elif s.times:
            self._ready.append((s, "end", time.time()))

    def _dispatch(self) -> None:
        """Build the tensors of every ready session and queue them for the worker."""
        ready, self._ready = self._ready, []
        accepted, rejected = [], []  # (trigger, stamp) aligned with the examples / rejections
        for s, trigger, stamp in ready:
            before = len(self._rejected)
            self._featurizer(s)
            (rejected if len(self._rejected) > before else accepted).append((trigger, stamp))
        self._featurizer.flush()
        job = (list(self._examples), accepted, list(self._rejected), rejected)
        self._examples.clear()
        self._rejected.clear()
        self._jobs.put(job)  # blocks while two batches wait: backpressure
        if self._error is not None:
            raise self._error

    def _decide(self, examples: list[Example], accepted: list, rejected_meta: list[dict[str, Any]], rejected: list) -> None:
        rows = self.clf._rows_for(examples, self.top_k, self.min_confidence) if examples else []
        for meta in rejected_meta:
            row = {k: meta.get(k) for k in ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                                             "ts_start", "ts_end", "packets", "bytes")}
            row.update(label=None, confidence=None, top_k=[], status="not_judged",
                       reason=_REASONS.get(meta["reason"], meta["reason"]))
            rows.append(row)
        now = time.time()
        for row, (trigger, stamp) in zip(rows, accepted + rejected):
            delay = (now - stamp) * 1000
            row.update(trigger=trigger, delay_ms=delay)
            row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
            self.stats.decisions += 1
            if trigger == "after":
                self.stats.decided_early += 1
                self.stats.delays_ms.append(delay)
            self.sink(row)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    self._decide(*job)
            except BaseException as exc:  # handed to the reading thread, which raises it
                self._error = exc
            finally:
                self._jobs.task_done()

    def run(self, packets: Iterable[RawPacket | None]) -> LiveStats:
        """Consume packets until the source ends (or Ctrl-C), then decide what is left.

        `None` items are heartbeats from a quiet source: they only hand over waiting sessions.
        """
        capture_clock = self.clock == "capture"
        worker = threading.Thread(target=self._work, name="trafficlens-live-inference", daemon=True)
        worker.start()
        jobs = self._jobs
        try:
            for raw in packets:
                if raw is not None:
                    self.stats.packets += 1
                    self._stamp = raw.ts if capture_clock else time.time()
                    packet = decode(raw)
                    if type(packet) is not str:
                        self._assembler.add(packet)
                if self._ready and (raw is None or len(self._ready) >= self.max_batch or (
                        jobs.unfinished_tasks == 0 and time.time() - self._ready[0][2] >= self.max_wait)):
                    self._dispatch()
        except KeyboardInterrupt:
            pass
        finally:
            self._assembler.close()
            self.stats.evicted = self._assembler.evicted
            if self._ready and self._error is None:
                self._dispatch()
            jobs.put(None)
            worker.join()
        if self._error is not None:
            raise self._error
        return self.stats

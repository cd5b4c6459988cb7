"""Live classification: decide a session as soon as it has the packets the model needs.

Packets come from an interface (libpcap through pcapy-ng, whose wheel bundles libpcap) or from
a capture replayed at its recorded pace. A session is decided when its `after`-th packet is
kept (the papers classify on the first 6 packets), or when it ends or idles out if it never
gets that far. State is bounded: sessions expire after the model's idle timeout, and past
`max_sessions` the least recently active are evicted (and counted). Sessions are assembled by
one of prep's session engines (`prep.engines`: the compiled one by default, the Python
reference with `backend="python"`) in blocks of packets, in live mode (`after=M`).
"""

from __future__ import annotations

import gc
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from trafficlens.capture.bpf import PacketFilter
from trafficlens.capture.reader import CaptureReader, RawPacket
from trafficlens.errors import CaptureError
from trafficlens.inference.classifier import Classifier, rejected_row
from trafficlens.inference.groups import GroupConfig, GroupDecisions, decision_setup
from trafficlens.inference.open_set import load_bank
from trafficlens.prep.engines import make_engine
from trafficlens.prep.engines.base import EngineSink
from trafficlens.prep.engines.blocks import block_from_pcapy, packet_blocks
from trafficlens.prep.engines.rehearsal import rehearse
from trafficlens.prep.hosts import HostAddresses
from trafficlens.prep.tensors.examples import metas_of


def replay(path: str | os.PathLike, speed: float | None = 1.0, heartbeats: bool = False,
           packet_filter: PacketFilter | None = None) -> Iterator[RawPacket | None]:
    """The packets of a capture ("-": standard input), released at their recorded pace (`speed`
    x); None: at once. `heartbeats`: a `None` before each pause, as an interface's read timeout
    gives, so that a consumer working in blocks hands over what it has instead of waiting for
    more. `packet_filter`: only the packets it matches (as `Interface(bpf=...)` does)."""
    start_wall = start_ts = None
    for packet in CaptureReader(path):
        if packet_filter is not None and not packet_filter.matches(packet.data, packet.linktype):
            continue
        if speed is not None:
            if start_wall is None:
                start_wall, start_ts = time.perf_counter(), packet.ts
            wait = (packet.ts - start_ts) / speed - (time.perf_counter() - start_wall)
            if wait > 0:
                if heartbeats:
                    yield None
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
    consumer end idle sessions when traffic pauses. `stats()` gives libpcap's counters
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
        """libpcap's counters: packets received, dropped by the kernel buffer, dropped by the interface."""
        received, dropped, if_dropped = self._handle.stats()
        return {"received": int(received), "dropped": int(dropped), "if_dropped": int(if_dropped)}

    def _batches(self) -> Iterator[tuple[bytes, bytes] | None]:
        """pcapy-ng's batches (data, uint32 records); `None` when the line is quiet. Blocking
        reads never time out while the line is silent (TPACKET_V3), so read non-blocking and
        wait on the descriptor ourselves."""
        handle = self._handle
        handle.setnonblock(1)
        fd = handle.getfd()
        last = time.monotonic()
        while True:
            data, meta = handle.next_batch(512)
            if len(meta):
                last = time.monotonic()
                yield data, meta
                continue
            if select.select([fd], [], [], 0.01)[0]:
                continue
            if self.idle_exit is not None and time.monotonic() - last > self.idle_exit:
                return
            yield None

    def blocks(self) -> Iterator[tuple[np.ndarray, ...] | None]:
        """libpcap's batches as arrays for the compiled engine (data, offsets, caplens, lengths,
        times, link types), without a Python object per packet; `None` when the line is quiet."""
        if not hasattr(self._handle, "next_batch"):  # an old pcapy: packet by packet
            yield from packet_blocks(self)
            return
        for batch in self._batches():
            yield None if batch is None else block_from_pcapy(*batch, self.linktype)

    def __iter__(self) -> Iterator[RawPacket | None]:
        handle, linktype = self._handle, self.linktype
        if hasattr(handle, "next_batch"):
            for batch in self._batches():
                if batch is None:
                    yield None
                    continue
                data, meta = batch
                records = memoryview(meta).cast("I")
                for i in range(0, len(records), 4):
                    sec, usec, offset, caplen = records[i:i + 4]
                    yield RawPacket(sec + usec * 1e-6, bytes(data[offset:offset + caplen]), caplen, linktype)
            return
        last = time.monotonic()
        while True:
            header, data = handle.next()
            if header is not None:
                last = time.monotonic()
                sec, usec = header.getts()
                yield RawPacket(sec + usec * 1e-6, bytes(data), header.getlen(), linktype)
            else:
                if self.idle_exit is not None and time.monotonic() - last > self.idle_exit:
                    return
                yield None


def interface(name: str, snaplen: int = 65535, bpf: str | None = None) -> Iterator[RawPacket | None]:
    """Packets captured on a network interface; see `Interface` for the counters and options."""
    return iter(Interface(name, snaplen, bpf))


@dataclass
class LiveStats:
    """What a `LiveClassifier.run` did: packets read, decisions, evictions, decision delays."""

    packets: int = 0
    decisions: int = 0
    decided_early: int = 0
    evicted: int = 0
    delays_ms: list[float] = field(default_factory=list)  # M-th packet kept -> decision written
    hosts: dict[str, int] | None = None  # by host: events printed, hosts evicted (cap) and expired (idle)

    def summary(self) -> dict[str, Any]:
        """The counts and the median and 99th-percentile delay (ms), as `live` prints them."""
        delays = sorted(self.delays_ms)
        pick = (lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]) if delays else (lambda q: None)
        out = {"packets": self.packets, "decisions": self.decisions, "decided_after_m": self.decided_early,
               "evicted_sessions": self.evicted, "delay_ms_median": pick(0.5), "delay_ms_p99": pick(0.99)}
        if self.hosts is not None:
            out["hosts"] = dict(self.hosts)
        return out


@dataclass
class _Ready:
    """Sessions waiting for the model: an ExampleBatch or rejected rows; one trigger ("after" /
    "end") and one stamp per session."""

    kind: str  # "batch" or "rejected"
    items: Any
    triggers: list[str]
    stamps: list[float]
    macs: list[str | None] | None = None  # by host with MAC keys: each session's initiator MAC


class LiveClassifier:
    """Feed packets, get one decision row per session through `sink` as soon as possible.

    Two threads share the work: the caller's thread reads packets, assembles sessions and
    builds the tensors of sessions that are ready (M-th packet, end, idle-out, eviction); a
    worker thread runs inference and writes rows, so capture never waits for the model
    (PyTorch and the compiled kernels release the GIL while they compute). The worker takes
    every ready session the moment it is free, once the oldest has waited `max_wait_ms` or
    `max_batch` are waiting: while it decides, the next ones gather, so the batch grows with
    the backlog (a burst is absorbed, and the model catches up with bigger, cheaper batches).
    Past `max_backlog` waiting sessions capture waits for the model: memory stays bounded, and
    a model slower than the traffic for long shows up as capture drops. A session is decided
    on exactly the packets it had at its trigger.
    Delays are measured from the trigger packet's timestamp when `clock="capture"` (the
    kernel's, for an interface: time queued in the capture buffer counts) or from when its
    block was read (`"arrival"`, for replays) to its row handed to `sink` (called from the worker
    thread; `flush`, when given, after each batch of rows).

    `backend`: the session engine (`prep.engines.make_engine`): "numba" (the default when
    installed) or "python", the reference; both give the same rows. For small batches on CPU,
    one intra-op thread (`torch.set_num_threads(1)`) is fastest; the `live` command sets it.

    `groups` (a `GroupConfig`, by="host"): instead of one row per session, a rolling decision per
    host (`inference.groups`); a row (`event`) when a host's confidence first reaches
    `groups.min_confidence` ("confident"), whenever another label reaches it after that ("changed"),
    when it is dropped (past `groups.max_groups` hosts, "evicted"; `host_idle` seconds of capture
    time without a session, "expired") and for every host held when live stops ("final").
    """

    def __init__(self, clf: Classifier, sink: Callable[[dict[str, Any]], None], *, after: int = 6,
                 max_sessions: int = 100_000, top_k: int = 1, min_confidence: float = 0.0, name: str = "live",
                 max_batch: int = 256, max_wait_ms: float = 1.0, clock: str = "arrival", backend: str | None = None,
                 flush: Callable[[], None] | None = None, max_backlog: int = 50_000,
                 groups: GroupConfig | None = None, host_idle: float = 600.0):
        if clock not in ("arrival", "capture"):
            raise ValueError(f"clock must be 'arrival' or 'capture', got {clock!r}")
        if after < 1:
            raise ValueError(f"after must be >= 1, got {after}")
        self.clf = clf
        self.sink = sink
        self.top_k = top_k
        self.min_confidence = min_confidence
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.max_wait = max_wait_ms / 1000
        self.clock = clock
        self.flush = flush
        self.stats = LiveStats()
        self._ready: list[_Ready] = []  # taken by the worker, under `_handover`
        self._ready_count = 0
        self._handover = threading.Condition()
        self._closing = False  # input ended: the worker decides what is left, then stops
        self._ready_since = 0.0  # wall time the oldest waiting part came
        self._stamp = 0.0  # wall time of the block being added
        self._error: BaseException | None = None
        self._last_ts: float | None = None  # capture time of the latest packet
        self._groups = self._bank = None
        if groups is not None:
            groups, learned = decision_setup(clf.bundle.path, groups, len(clf.labels))
            self._groups = GroupDecisions(clf.labels, groups, learned)
            self._bank = load_bank(clf.bundle.path, groups)  # the embedding-distance open-set fit's, else None
        self._hosts = HostAddresses() if groups is not None and groups.host_key == "mac" else None
        self.host_idle = host_idle
        if groups is not None:
            if groups.by != "host":
                raise ValueError(f"live decides per session or per host, not by {groups.by!r}")
            self.stats.hosts = {"events": 0, "evicted": 0, "expired": 0}
        self._backend = backend
        self._engine = make_engine(backend, clf.prep_config, name, EngineSink(self._on_sessions, self._on_reject),
                                   after=after, max_sessions=max_sessions)

    def __repr__(self) -> str:
        return (f"LiveClassifier({self.clf!r}, after={self._engine.after}, tracked={self.tracked_sessions}, "
                f"decisions={self.stats.decisions})")

    @property
    def tracked_sessions(self) -> int:
        """Sessions held now (bounded by `max_sessions`)."""
        return self._engine.tracked

    def _add(self, part: _Ready) -> None:
        if part.triggers:
            with self._handover:
                if not self._ready:
                    self._ready_since = time.time()
                self._ready.append(part)
                self._ready_count += len(part.triggers)
                self._handover.notify()

    # -- the engine's callbacks ----------------------------------------------------------------
    def _stamps(self, trigger: str, trigger_ts: list[float]) -> list[float]:
        """Where each session's delay counts from: its trigger packet's capture time, or when that
        packet's block was read (arrival clock); a session's end counts from now."""
        if trigger == "after":
            return trigger_ts if self.clock == "capture" else [self._stamp] * len(trigger_ts)
        return [time.time()] * len(trigger_ts)

    def _on_sessions(self, batch, trigger: str, trigger_ts: np.ndarray) -> None:
        macs = None
        if self._hosts is not None:  # here, in the reading thread, while the frames are the latest seen
            macs = [self._hosts.mac_of(m) for m in metas_of(batch.rows(np.arange(len(batch)), tensors=False)[0])]
        self._add(_Ready("batch", batch, [trigger] * len(batch), self._stamps(trigger, trigger_ts.tolist()), macs))

    def _on_reject(self, meta: dict[str, Any], reason: str, trigger: str) -> None:
        if self._groups is not None:  # a session the model cannot judge tells nothing about its host
            return
        stamps = self._stamps(trigger, [meta["ts_end"]])  # ts_end: the trigger packet's time
        self._add(_Ready("rejected", [rejected_row(meta, reason)], [trigger], stamps))

    # -- hand-over and decisions -----------------------------------------------------------------
    def _take(self) -> list[_Ready] | None:
        """The worker's next job: every ready session, once due; None when input has ended and all
        are decided. Handing over from the worker's side saves the wait for capture's next block
        that a hand-over from capture's side cost after every batch."""
        with self._handover:
            while True:
                wait = None
                if self._ready:  # the oldest stamp may be a packet's, from a clock ahead of ours: bounded by arrival
                    now = time.time()
                    wait = self.max_wait - max(now - min(part.stamps[0] for part in self._ready), now - self._ready_since)
                    if self._closing or self._ready_count >= self.max_batch or wait <= 0:
                        job, self._ready, self._ready_count = self._ready, [], 0
                        self._handover.notify_all()  # capture may be waiting for room
                        return job
                elif self._closing:
                    return None
                self._handover.wait(wait)

    def _wait_for_room(self) -> None:
        """Capture's side: raise what the worker raised; past `max_backlog` waiting sessions, wait
        for the model (backpressure)."""
        if self._ready_count >= self.max_backlog:
            with self._handover:
                while self._ready_count >= self.max_backlog and self._error is None:
                    self._handover.wait(0.1)
        if self._error is not None:
            raise self._error

    def _decide(self, parts: list[_Ready]) -> None:
        if self._groups is not None:
            self._decide_hosts(parts)
            return
        batches = [p.items for p in parts if p.kind == "batch"]
        rows = self.clf.rows_for_batches(batches, self.top_k, self.min_confidence) if batches else []
        rows += [row for p in parts if p.kind == "rejected" for row in p.items]
        order = [p for kind in ("batch", "rejected") for p in parts if p.kind == kind]
        marks = [(t, s) for p in order for t, s in zip(p.triggers, p.stamps)]
        now = time.time()
        for row, (trigger, stamp) in zip(rows, marks):
            delay = (now - stamp) * 1000
            row.update(trigger=trigger, delay_ms=delay)
            row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
            self.stats.decisions += 1
            if trigger == "after":
                self.stats.decided_early += 1
                self.stats.delays_ms.append(delay)
            self.sink(row)
        if self.flush is not None:
            self.flush()

    def _decide_hosts(self, parts: list[_Ready]) -> None:
        """Add the sessions to their hosts; print what changed (see the class doc)."""
        groups, threshold = self._groups, self._groups.config.min_confidence
        metas, proba, distances = self.clf.session_evidence([p.items for p in parts], self._bank)
        macs = [m for p in parts for m in p.macs] if self._hosts is not None else None
        self.stats.decisions += len(metas)
        events = []
        # One session at a time, in order of start: a row shows the host as it stood when its label
        # changed, however many sessions the worker took together (a backlog batches them).
        for i in sorted(range(len(metas)), key=lambda j: float(metas[j].get("ts_start") or 0.0)):
            for key in groups.add(metas[i:i + 1], proba[i:i + 1], macs[i:i + 1] if macs is not None else None,
                                  distances[i:i + 1] if distances is not None else None):
                state, row = groups.state(key), groups.row(key)
                top = row["top_k"][0][0]
                if row["confidence"] < threshold or top == state.announced:
                    continue  # only a confident label is printed, and only once until it changes
                events.append(("confident" if state.announced is None else "changed", row))
                state.announced = top
        evicted = groups.pop_evicted()
        expired = groups.expire(max(m["ts_end"] for m in metas), self.host_idle) if metas else []
        self.stats.hosts["evicted"] += len(evicted)
        self.stats.hosts["expired"] += len(expired)
        self._emit(events + [("evicted", r) for r in evicted] + [("expired", r) for r in expired])

    def _emit(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for event, row in events:
            row = dict(row, event=event)
            row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
            self.stats.hosts["events"] += 1
            self.sink(row)
        if events and self.flush is not None:
            self.flush()

    def _work(self) -> None:
        while (job := self._take()) is not None:
            try:
                if self._error is None:
                    self._decide(job)
            except BaseException as exc:  # handed to the reading thread, which raises it
                self._error = exc
                with self._handover:
                    self._handover.notify_all()

    def run(self, packets: Iterable[RawPacket | None] | Interface,
            on_ready: Callable[[], None] | None = None) -> LiveStats:
        """Consume packets until the source ends (or Ctrl-C), then decide what is left.

        `None` items are heartbeats from a quiet source: they end the sessions idle past the
        timeout. `on_ready` is called once everything is loaded, before the first packet is read
        (an interface buffers what arrives before).
        """
        self._rehearse()
        # A full collection walked the ~260 k objects that torch, numba and the model leave for 70-115 ms
        # (measured), stalling decisions; frozen, it walks only what live traffic allocates. (A heap
        # someone else froze stays as they left it.)
        frozen_here = not gc.get_freeze_count()
        gc.collect()
        gc.freeze()
        worker = threading.Thread(target=self._work, name="trafficlens-live-inference", daemon=True)
        worker.start()
        try:
            if on_ready is not None:
                on_ready()
            self._run_blocks(packets)
        except KeyboardInterrupt:
            pass
        finally:
            self._finish()
            worker.join()
            if frozen_here:
                gc.unfreeze()
        if self._error is not None:
            raise self._error
        if self._groups is not None:
            self._emit([("final", row) for row in self._groups.rows()])
        return self.stats

    def _rehearse(self) -> None:
        """Before the first packet: the model's export (`warm_up`), then a small synthetic capture through
        an engine of this one's kind and the model (`prep.engines.rehearsal`), so that the first blocks
        and decisions do not wait for kernels to load or the runtime's first run."""
        self.clf.warm_up()
        batches = rehearse(self._backend, self.clf.prep_config, self._engine.after)
        if not batches:
            return
        if self._groups is not None:
            self.clf.session_evidence(batches, self._bank)
        else:
            self.clf.rows_for_batches(batches, self.top_k, self.min_confidence)

    def _run_blocks(self, source) -> None:
        engine = self._engine
        blocks = source.blocks() if isinstance(source, Interface) else packet_blocks(source)
        quiet_since = flushed = None
        for block in blocks:
            if block is None:  # a quiet line: end what idled out (capture time goes on with the wall clock)
                now = time.monotonic()
                quiet_since = quiet_since or now
                if self._last_ts is not None and now - (flushed or quiet_since) >= 1.0:
                    engine.flush_idle(self._last_ts + (now - quiet_since))
                    flushed = now
            else:
                quiet_since = flushed = None
                self.stats.packets += len(block)
                self._stamp = time.time()
                if len(block):
                    self._last_ts = float(block.times[-1])
                if self._hosts is not None:
                    self._hosts.watch(block)
                engine.feed(block)
            self._wait_for_room()

    def _finish(self) -> None:
        """End of input: every session still held is decided, then the worker stops."""
        try:
            self._engine.close()
            self.stats.evicted = self._engine.counts.evicted
        finally:
            with self._handover:
                self._closing = True
                self._handover.notify_all()

"""One capture file through a session engine: what every prep driver (local, Dask) runs per file."""

from __future__ import annotations

from pathlib import Path

from trafficlens.capture import CaptureReader
from trafficlens.capture.bpf import PacketFilter
from trafficlens.capture.formats import is_stdin
from trafficlens.errors import CaptureError
from trafficlens.files import sha256_file
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.engines import make_engine, resolve_backend
from trafficlens.prep.engines.base import EngineSink
from trafficlens.prep.engines.blocks import filter_block
from trafficlens.prep.report import FileReport, file_warnings


def prepare_capture(path: Path, relative: str, config: PrepConfig, labeler, sink: EngineSink,
                    backend: str | None = None, packet_filter: PacketFilter | None = None, watch=None) -> FileReport:
    """Read one capture into `sink` (its sessions, as `ExampleBatch`es); never raises for a bad
    file: an unreadable one is the report's `error`, a damaged one its `warnings`.
    `packet_filter`: only the packets it matches are read (the others are counted as skipped,
    `filtered_out`). `watch(block)` sees each packet block the engine gets, before it does
    (`prep.hosts.HostAddresses.watch`)."""
    report = FileReport(str(path), relative, capture_size(path))
    label_of = labeler.bind(path, relative) if labeler is not None else None
    if backend is None:  # one capture on its own (predict): a small file skips loading the kernels
        backend = resolve_backend(None, None if is_stdin(path) else report.size)
    engine = make_engine(backend, config, relative, sink, label_of=label_of)
    reader = None
    filtered = 0
    try:
        reader = CaptureReader(path, digest=True)  # an unreadable file is this file's error, not the run's
        for block in engine.blocks(reader):
            if packet_filter is not None:
                kept = filter_block(block, packet_filter)
                filtered += len(block) - len(kept)
                block = kept
            if watch is not None:
                watch(block)
            engine.feed(block)
    except CaptureError as exc:
        report.error = str(exc)
    except OSError as exc:
        report.error = f"{path}: {exc.strerror or exc}"
    counts = engine.counts
    skipped = report.skipped_packets
    skipped.update(counts.skipped)
    if counts.fragments_kept:
        skipped["ip_fragment_first_kept"] = counts.fragments_kept
    if filtered:
        skipped["filtered_out"] = filtered
    if reader is not None:
        report.format = reader.format
        report.packets = reader.packets
        if is_stdin(path) and reader.stored_bytes is not None:
            report.size = reader.stored_bytes  # known once the stream ended
    report.warnings = file_warnings(path, reader.warnings if reader is not None else [], skipped)
    engine.close()
    counts = engine.counts
    report.dropped = dict(counts.dropped)
    report.dropped["retransmission_packets"] = counts.retransmission_packets
    report.dropped["pure_ack_packets"] = counts.pure_ack_packets
    if config.mask == "strict":
        report.unmasked["quic_short_dcid"] = counts.quic_short_unmasked
    report.sha256 = (reader.sha256 if reader is not None else None) or ("" if is_stdin(path) else file_digest(path))
    return report


def capture_size(path: Path) -> int:
    """Bytes of a capture file as stored; 0 for standard input (not known before it ends)."""
    return 0 if is_stdin(path) else path.stat().st_size


def file_digest(path: Path) -> str:
    """The manifest's SHA-256 of an input; "" when it cannot be read (its error says why)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""

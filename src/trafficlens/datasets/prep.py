"""`prep`: captures in, one dataset directory out.

Each capture is read, decoded, assembled into sessions and featurised on its own (so files
run in parallel worker processes), and the main process appends the results, in input order,
to one `DatasetWriter`. Files too large to hold one file's results in memory are streamed
straight into the writer by the main process instead.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from trafficlens.capture.reader import GZIP_MAGIC, PCAP_MAGICS, PCAPNG_MAGIC
from trafficlens.datasets.config import PrepConfig, default_workers
from trafficlens.datasets.labels import Labeler
from trafficlens.datasets.writer import DatasetWriter
from trafficlens.errors import CaptureError, ConfigError
from trafficlens.features.stats import STATS_NAMES
from trafficlens.files import sha256_file
from trafficlens.fast import resolve_backend
from trafficlens.features.tensors import Example, ExampleBatch, Featurizer

CAPTURE_MAGICS = (*PCAP_MAGICS, PCAPNG_MAGIC)  # a gzip file is taken too (GZIP_MAGIC)
STREAM_INLINE_BYTES = 256 << 20  # larger files are streamed by the main process


@dataclass
class FileReport:
    """What happened to one capture file."""

    path: str
    relative: str
    size: int
    sha256: str = ""
    format: str = ""
    packets: int = 0
    sessions: int = 0
    skipped_packets: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    unmasked: dict[str, int] = field(default_factory=dict)  # values the mask could not reach, counted
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def looks_like_capture(path: Path) -> bool:
    """Whether the first bytes are a pcap, pcapng or gzip magic (names are not trusted)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in CAPTURE_MAGICS or head[:2] == GZIP_MAGIC


def discover(inputs: Iterable[str | os.PathLike]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Capture files under the inputs as (path, name relative to its input root), and skipped names.

    An explicitly named file is always taken; in directories, files that do not start like a
    capture (READMEs, label lists) are skipped and listed.
    """
    files: list[tuple[Path, str]] = []
    skipped: list[str] = []
    for item in inputs:
        root = Path(item)
        if root.is_file():
            files.append((root, root.name))
        elif root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = path.relative_to(root).as_posix()
                if any(part.startswith(".") for part in path.relative_to(root).parts):
                    continue
                if looks_like_capture(path):
                    files.append((path, relative))
                else:
                    skipped.append(relative)
        else:
            raise ConfigError(f"{root}: no such file or directory")
    return files, skipped


def prepare_capture(
    path: Path,
    relative: str,
    config: PrepConfig,
    labeler: Labeler | None,
    emit: Callable[[Example], None],
    on_reject: Callable[[dict[str, Any], str], None] | None = None,
    emit_batch: Callable[[ExampleBatch], None] | None = None,
    backend: str | None = None,
) -> FileReport:
    """Read one capture and emit its examples; never raises for a bad file (see `error`).

    `backend` "numba" (the default when installed, see `trafficlens.fast`) gives the same
    examples as "python", the reference; it hands them to `emit_batch` in batches when given.
    """
    if resolve_backend(backend) == "numba":
        from trafficlens.fast.engine import prepare_capture_fast

        return prepare_capture_fast(path, relative, config, labeler, emit, on_reject, emit_batch)
    from trafficlens.capture import CaptureReader, decode
    from trafficlens.flows.assembler import SessionAssembler

    report = FileReport(str(path), relative, path.stat().st_size)
    label_of = labeler.bind(path, relative) if labeler is not None else None
    featurizer = Featurizer(config, relative, label_of, emit, on_reject)
    assembler = SessionAssembler(config, featurizer)
    skipped = report.skipped_packets
    add = assembler.add
    reader = None
    try:
        reader = CaptureReader(path)  # an unreadable file is this file's error, not the run's
        for raw in reader:
            packet = decode(raw)
            if type(packet) is str:
                skipped[packet] = skipped.get(packet, 0) + 1
                continue
            if packet.fragmented:
                skipped["ip_fragment_first_kept"] = skipped.get("ip_fragment_first_kept", 0) + 1
            add(packet)
    except CaptureError as exc:
        report.error = str(exc)
    except OSError as exc:
        report.error = f"{path}: {exc.strerror or exc}"
    if reader is not None:
        report.format = reader.format
        report.packets = reader.packets
    report.warnings = file_warnings(path, reader.warnings if reader is not None else [], skipped)
    assembler.close()
    featurizer.flush()
    report.dropped = dict(featurizer.dropped)
    report.dropped["retransmission_packets"] = assembler.retransmission_packets
    report.dropped["pure_ack_packets"] = assembler.pure_ack_packets
    if config.mask == "strict":
        report.unmasked["quic_short_dcid"] = assembler.quic_short_unmasked
    report.sha256 = file_digest(path)
    return report


def file_digest(path: Path) -> str:
    """The manifest's SHA-256 of an input; "" when it cannot be read (its error says why)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


# -- worker processes ------------------------------------------------------------------------
def file_warnings(path: Path, warnings: list[str], skipped: dict[str, int]) -> list[str]:
    """One line per damaged file: the reader's (record damage) with the packet-level count."""
    warnings = list(warnings)
    bad = {k: skipped[k] for k in ("malformed", "truncated") if skipped.get(k)}
    if bad:
        detail = " and ".join(f"{v} {k}" for k, v in bad.items()) + " packets skipped"
        if warnings:
            warnings[-1] += f"; {detail}"
        else:
            warnings.append(f"{path}: {detail}")
    return warnings


_worker_state: dict[str, Any] = {}


def _init_worker(config: PrepConfig, labeler: Labeler | None, backend: str | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    _worker_state["config"] = config
    _worker_state["labeler"] = labeler
    _worker_state["backend"] = backend


def _worker(job: tuple[Path, str]) -> tuple[FileReport, list[Example]]:
    examples: list[Example] = []
    report = prepare_capture(job[0], job[1], _worker_state["config"], _worker_state["labeler"], examples.append,
                             emit_batch=examples.append, backend=_worker_state.get("backend"))
    return report, examples


# -- the whole run -----------------------------------------------------------------------------
def prep(
    inputs: list[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    config: PrepConfig | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
    backend: str | None = None,
) -> Path:
    """Turn captures into a dataset directory at `out`; returns its path.

    >>> prep(["captures/"], "ds/x", PrepConfig(labels="dir"))
    """
    config = config or PrepConfig()
    config.require_current_mask()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    labeler = Labeler(config.labels, config.label_column) if config.labels else None
    files, not_captures = discover(inputs)
    if not files:
        raise ConfigError(f"no capture files found in {', '.join(map(str, inputs))}")
    label_warnings = labeler.check(files, inputs) if labeler is not None else []
    for message in label_warnings:
        if on_warning:
            on_warning(message)
    workers = workers or default_workers()
    backend = resolve_backend(backend)  # a bad name or a missing numba fails here, before any work
    writer = DatasetWriter(
        out,
        config.to_dict(),
        image_bytes=config.image_bytes,
        packets=config.packets,
        packet_bytes=config.packet_bytes,
        sequence_length=config.sequence_length,
        stats_names=STATS_NAMES,
        extra_columns=labeler.extra_columns if labeler else (),
        deduplicate=config.deduplicate,
        overwrite=overwrite,
    )
    extra_of = labeler.extra if labeler is not None and labeler.extra_columns else None

    def write(example: Example | ExampleBatch) -> None:
        if isinstance(example, ExampleBatch):  # the numba backend's output
            if extra_of is not None and len(example):
                example.extra = extra_of(example.meta(0))  # preset columns: per file, not per session
            writer.add_batch(example)
            return
        meta = example.meta
        if extra_of is not None:
            meta.update(extra_of(meta))
        writer.add(meta, example.image, example.packets, example.sequence, example.stats)

    reports: list[FileReport] = []
    bar = _progress(sum(p.stat().st_size for p, _ in files), progress)

    def done(report: FileReport) -> None:
        reports.append(report)
        for message in report.warnings:
            if on_warning:
                on_warning(message)
        if report.error and on_warning:
            on_warning(report.error)
        bar.update(report.size)

    writer.open()
    pool = None
    try:
        small = [job for job in files if job[0].stat().st_size <= STREAM_INLINE_BYTES]
        if workers > 1 and len(small) > 1:
            ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
            if backend == "numba" and ctx.get_start_method() == "fork":
                from trafficlens.fast.engine import warm_up

                warm_up()  # forked workers inherit the loaded kernels instead of each loading them
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(config, labeler, backend))
            results = pool.imap(_worker, small, chunksize=1)
        else:
            results = None
        for job in files:
            if results is not None and job[0].stat().st_size <= STREAM_INLINE_BYTES:
                report, examples = next(results)
                for example in examples:
                    write(example)
            else:
                report = prepare_capture(job[0], job[1], config, labeler, write, emit_batch=write, backend=backend)
            done(report)
        if pool is not None:
            pool.close()
            pool.join()
        unlabeled = sum(r.dropped.get("unlabeled", 0) for r in reports)
        if unlabeled and not writer.n and not label_warnings and on_warning:
            on_warning(f"--labels {config.labels} gave no label to any session: all {unlabeled} were dropped "
                       "as unlabeled, and the dataset is empty")
        if config.max_per_class:
            writer.limit_per_class(config.max_per_class)
        # Absolute input roots: what `audit` re-prepares from under another mask.
        sources = [str(Path(item).resolve()) for item in inputs]
        writer.finish(sources=sources, **_summary(reports, writer, not_captures))
    except BaseException:
        if pool is not None:
            pool.terminate()
        writer.abort()
        raise
    finally:
        bar.close()
    return Path(out)


def _summary(reports: list[FileReport], writer: DatasetWriter, not_captures: list[str]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    skipped: dict[str, int] = {}
    unmasked: dict[str, int] = {}
    for report in reports:
        for total, counts in ((dropped, report.dropped), (skipped, report.skipped_packets), (unmasked, report.unmasked)):
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
    dropped["duplicate_sessions"] = writer.duplicates
    if writer.sampled_out:
        dropped["max_per_class"] = writer.sampled_out
    errors = [{"file": r.relative, "kind": "unreadable", "message": r.error} for r in reports if r.error]
    errors += [
        {"file": r.relative, "kind": "damaged", "message": message} for r in reports for message in r.warnings
    ]
    return {
        "inputs": [
            {"path": r.relative, "bytes": r.size, "sha256": r.sha256, "format": r.format, "packets": r.packets}
            for r in reports
        ],
        "packets_read": sum(r.packets for r in reports),
        "dropped": dict(sorted(dropped.items())),
        "skipped_packets": dict(sorted(skipped.items())),
        "unmasked": dict(sorted(unmasked.items())),
        "errors": errors,
        "not_captures": not_captures,
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prep", dynamic_ncols=True)

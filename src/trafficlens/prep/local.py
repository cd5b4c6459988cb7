"""`prep`: captures in, one dataset directory out (this machine's processes; `dask.py` for a cluster).

Each capture is read, decoded, assembled into sessions and featurised on its own (so files
run in parallel worker processes, one engine each), and the main process appends the results,
in input order, to one `DatasetWriter`. Files too large to hold one file's results in memory are
streamed straight into the writer by the main process instead.
"""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path
from typing import Any, Callable

from trafficlens.capture.bpf import PacketFilter
from trafficlens.capture.formats import discover, is_stdin
from trafficlens.datasets.writer import DatasetWriter
from trafficlens.errors import ConfigError
from trafficlens.prep.capture_file import capture_size, prepare_capture
from trafficlens.prep.config import PrepConfig
from trafficlens.system import cores
from trafficlens.prep.engines import resolve_backend
from trafficlens.progress import byte_bar
from trafficlens.prep.engines.base import EngineSink
from trafficlens.prep.labels import Labeler
from trafficlens.prep.report import FileReport, summarize
from trafficlens.prep.tensors.examples import ExampleBatch
from trafficlens.prep.tensors.statistics import STATS_NAMES

STREAM_INLINE_BYTES = 256 << 20  # larger files are streamed by the main process


def dataset_writer(out, config: PrepConfig, labeler: Labeler | None, **options) -> DatasetWriter:
    """The writer of a dataset made with `config` (local and Dask drivers alike)."""
    return DatasetWriter(out, config.to_dict(), image_bytes=config.image_bytes, packets=config.packets,
                         packet_bytes=config.packet_bytes, sequence_length=config.sequence_length,
                         stats_names=STATS_NAMES, extra_columns=labeler.extra_columns if labeler else (),
                         deduplicate=config.deduplicate, **options)


def batch_writer(writer: DatasetWriter, labeler: Labeler | None) -> EngineSink:
    """A sink appending an engine's sessions to `writer`, with a preset's constant extra columns."""
    extra_of = labeler.extra if labeler is not None and labeler.extra_columns else None

    def write(batch: ExampleBatch, trigger: str = "end", times=None) -> None:
        if extra_of is not None and len(batch):
            batch.extra = extra_of(batch.meta(0))  # preset columns: per file, not per session
        writer.add_batch(batch)

    return EngineSink(write)


# -- worker processes ------------------------------------------------------------------------
_worker_state: dict[str, Any] = {}


def _init_worker(config: PrepConfig, labeler: Labeler | None, backend: str, packet_filter: PacketFilter | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    _worker_state.update(config=config, labeler=labeler, backend=backend, packet_filter=packet_filter)


def _worker(job: tuple[Path, str]) -> tuple[FileReport, list[ExampleBatch]]:
    batches: list[ExampleBatch] = []
    report = prepare_capture(job[0], job[1], _worker_state["config"], _worker_state["labeler"],
                             EngineSink(lambda batch, *_: batches.append(batch)), _worker_state["backend"],
                             _worker_state["packet_filter"])
    return report, batches


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
    bpf: str | None = None,
) -> Path:
    """Turn captures into a dataset directory at `out`; returns its path. `bpf`: a BPF
    expression (tcpdump's); only the packets it matches are read. "-" reads standard input.

    >>> prep(["captures/"], "ds/x", PrepConfig(labels="dir"))
    >>> prep(["-"], "ds/cam", PrepConfig(labels="name:camera"), bpf="tcp port 443")
    """
    packet_filter = PacketFilter(bpf) if bpf is not None else None  # a bad expression fails before any work
    config = config or PrepConfig()
    config.require_current_mask()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    labeler = Labeler(config.labels, config.label_column) if config.labels else None
    files, not_captures = discover(inputs)
    if not files:
        raise ConfigError(f"no capture files found in {', '.join(map(str, inputs))}")
    label_warnings = labeler.check(files, inputs) if labeler is not None else []
    for message in label_warnings:
        if on_warning:
            on_warning(message)
    workers = workers or cores()
    total = sum(capture_size(p) for p, _ in files)  # standard input counts as large, below; a bad backend fails here
    backend = resolve_backend(backend, None if any(is_stdin(p) for p, _ in files) else total)
    writer = dataset_writer(out, config, labeler, overwrite=overwrite)
    sink = batch_writer(writer, labeler)
    reports: list[FileReport] = []
    bar = byte_bar(total, progress)

    def done(report: FileReport) -> None:
        reports.append(report)
        for message in report.warnings + ([report.error] if report.error else []):
            if on_warning:
                on_warning(message)
        bar.update(report.size)

    writer.open()
    pool = None
    try:
        pool, results = _start_pool(files, workers, config, labeler, backend, packet_filter)
        for job in files:
            if results is not None and _to_worker(job[0]):
                report, batches = next(results)
                for batch in batches:
                    sink.sessions(batch)
            else:
                report = prepare_capture(job[0], job[1], config, labeler, sink, backend, packet_filter)
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
        sources = [str(item) if is_stdin(item) else str(Path(item).resolve()) for item in inputs]
        # the packet filter decided what was read: a dataset names it beside its sources
        extra = {"packet_filter": bpf} if bpf is not None else {}
        writer.finish(sources=sources, **extra, **summarize(reports, writer.duplicates, writer.sampled_out, not_captures))
    except BaseException:
        if pool is not None:
            pool.terminate()
        writer.abort()
        raise
    finally:
        bar.close()
    return Path(out)


def _to_worker(path: Path) -> bool:
    """Whether a worker process reads this capture and hands its results back whole: not a large
    file (streamed by the main process instead), nor standard input (the main process's)."""
    return not is_stdin(path) and path.stat().st_size <= STREAM_INLINE_BYTES


def _start_pool(files, workers: int, config: PrepConfig, labeler, backend: str, packet_filter: PacketFilter | None):
    """Worker processes for the files small enough to hand back whole, and their results in order."""
    small = [job for job in files if _to_worker(job[0])]
    if workers <= 1 or len(small) <= 1:
        return None, None
    import multiprocessing as mp  # here: a one-worker prep (most small ones) never loads it

    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
    if backend == "numba" and ctx.get_start_method() == "fork":
        from trafficlens.prep.engines.compiled import warm_up

        warm_up()  # forked workers inherit the loaded kernels instead of each loading them
    # Forked workers must never collect what this process holds: a destructor that waits for threads
    # the fork did not copy (an ONNX Runtime session a Classifier left, say) hangs the worker for good.
    gc.freeze()
    try:
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(config, labeler, backend, packet_filter))
    finally:
        gc.unfreeze()
    return pool, pool.imap(_worker, small, chunksize=1)

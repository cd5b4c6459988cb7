"""`prep --engine dask`: captures to a sharded dataset on a Dask cluster.

    prep_dask(["captures/"], "ds/big", PrepConfig(labels="dir"))                  # a LocalCluster
    prep_dask(["s3://bucket/captures"], "/nfs/ds/big", config, scheduler="tcp://host:8786")

A task takes consecutive whole capture files (about `task_bytes`, 64 MiB by default, and at
least 2 tasks per worker when there are enough files). A file is never split by byte ranges: a
pcap record header carries no marker to resynchronise on (a guessed boundary can parse payload
bytes as a header), and a session crossing a boundary would need its halves re-assembled, so the
smallest unit of work is the file. Each task runs the same `prepare_capture` as the local engine
and writes its own shard, a complete version-1 dataset directory, straight to the output
storage; only small per-file reports go back through the scheduler. `merge` then removes
duplicates across shards and sums the counts, reading keys and labels only, and the compaction
of shards that lose rows runs as tasks again, next to the data. The result equals the local
engine's on the same input: same sessions in the same order, same tensors, same counts.

Failed tasks are resubmitted up to `retries` times and listed in the manifest
(`engine.retried`); a task that still fails stops the run with an error naming its files,
and nothing that looks like a finished dataset is left.

Inputs may be fsspec URLs (`s3://`, `gcs://`, `file://`, ...; the filesystem's package must be
installed): each task copies its file to local temporary storage first. The output must be a
path that the client and every worker see (local disk for a LocalCluster; NFS or another shared
mount for a real cluster), since shards are memory-mapped files.

The core of trafficlens does not import this module; it needs `pip install trafficlens[dask]`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from trafficlens.prep.config import PrepConfig
from trafficlens.system import cores
from trafficlens.datasets.schema import MANIFEST, SHARDS_DIR
from trafficlens.errors import ConfigError, DatasetError


def _require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ConfigError("--engine dask needs Dask: pip install 'trafficlens[dask]'") from None
    return distributed


def is_url(item: str | os.PathLike) -> bool:
    return isinstance(item, str) and "://" in item


# -- discovery ---------------------------------------------------------------------------------
def discover_any(inputs: list[str | os.PathLike]) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Capture files as (local path or URL, name relative to its input root, bytes), and skipped names."""
    from trafficlens.capture.formats import discover, sniff

    files: list[tuple[str, str, int]] = []
    skipped: list[str] = []
    for item in inputs:
        if not is_url(item):
            found, not_captures = discover([item])
            # Absolute for workers with another cwd, but symlinks kept: messages then name the
            # file as the local engine does.
            files += [(str(path) if path.is_absolute() else os.path.abspath(path), relative, path.stat().st_size)
                      for path, relative in found]
            skipped += not_captures
            continue
        try:
            import fsspec
        except ImportError:
            raise ConfigError(f"{item}: URLs need fsspec (pip install 'trafficlens[dask]')") from None
        try:
            fs, root = fsspec.core.url_to_fs(item)
            if fs.isfile(root):
                files.append((item, PurePosixPath(root).name, int(fs.size(root))))
                continue
            if not fs.isdir(root):
                raise ConfigError(f"{item}: no such file or directory")
            for path, info in sorted(fs.find(root, detail=True).items()):
                relative = path[len(root.rstrip("/")) + 1:]
                if any(part.startswith(".") for part in PurePosixPath(relative).parts):
                    continue
                with fs.open(path, "rb") as fh:
                    head = fh.read(4)
                if sniff(head):
                    files.append((fs.unstrip_protocol(path), relative, int(info.get("size") or 0)))
                else:
                    skipped.append(relative)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{item}: cannot list ({exc})") from None
    return files, skipped


# -- tasks -------------------------------------------------------------------------------------
def group_files(sizes: list[int], task_bytes: int, workers: int) -> list[list[int]]:
    """Consecutive files per task: about `task_bytes` each, but at least 2 tasks per worker
    when there are enough files (load balance), and a file is never split."""
    total = sum(sizes)
    target = max(1, min(task_bytes, total // max(1, 2 * workers)))
    groups: list[list[int]] = [[]]
    size = 0
    for i, n in enumerate(sizes):
        if groups[-1] and size + n > target:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


def _localize(source: str, tmp: str) -> Path:
    """A local copy of a URL's file, under its parent folder's name (`--labels dir` reads it)."""
    import fsspec

    url_path = PurePosixPath(fsspec.core.url_to_fs(source)[1])
    path = Path(tmp) / (url_path.parent.name or "_") / url_path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(source, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return path


def prepare_shard(jobs: list[tuple[str, str]], config: dict[str, Any], labeler, shard_dir: str,
                  backend: str | None = None) -> dict[str, Any]:
    """Prep consecutive captures (path or URL, relative name) into one shard; returns the small reports.

    Inside a shard the writer deduplicates across its files in order, as the local engine does;
    duplicates across shards are the merge's job.
    """
    from trafficlens.datasets.merge import write_duplicates
    from trafficlens.prep.capture_file import prepare_capture
    from trafficlens.prep.local import batch_writer, dataset_writer
    from trafficlens.prep.report import summarize

    cfg = PrepConfig.from_dict(config)
    if labeler is not None:
        # The scattered labeler is shared by a worker's threads and `bind` sets the current file:
        # each task binds its own shallow copy (the label tables stay shared, read-only).
        labeler = copy.copy(labeler)
    # overwrite: a retried task replaces what an earlier try left
    writer = dataset_writer(shard_dir, cfg, labeler, overwrite=True, record_keys=True)
    sink = batch_writer(writer, labeler)
    reports = []
    writer.open()
    try:
        for source, relative in jobs:
            if not is_url(source):
                reports.append(prepare_capture(Path(source), relative, cfg, labeler, sink, backend))
                continue
            tmp = tempfile.mkdtemp(prefix="trafficlens-")
            try:
                path = _localize(source, tmp)
                report = prepare_capture(path, relative, cfg, labeler, sink, backend)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            report.path = source  # messages name the file as the user gave it
            report.warnings = [w.replace(str(path), source) for w in report.warnings]
            report.error = report.error.replace(str(path), source) if report.error else None
            reports.append(report)
        if writer.dropped_keys:
            write_duplicates(writer.partial, writer.dropped_keys)
        writer.finish(**summarize(reports, writer.duplicates, writer.sampled_out, []))
    except BaseException:
        writer.abort()
        raise
    return {"reports": [asdict(r) for r in reports], "rows": writer.n, "shard": shard_dir}


def compact_task(shard: str, drop) -> int:
    from trafficlens.datasets.merge import compact_shard

    return compact_shard(shard, drop)


# -- the whole run (the client) ----------------------------------------------------------------
def prep_dask(
    inputs: list[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    config: PrepConfig | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client=None,
    retries: int = 2,
    task_bytes: int = 64 << 20,
    overwrite: bool = False,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
    backend: str | None = None,
) -> Path:
    """Prep on a Dask cluster into a sharded dataset at `out`; returns its path.

    `client`: an existing `distributed.Client`; else `scheduler` (an address) is connected to,
    else a LocalCluster of `workers` single-threaded processes (default: all cores) is started
    and shut down afterwards. `task_bytes`: capture bytes per task (consecutive whole files;
    smaller when needed to give every worker at least 2 tasks), one shard per task.
    """
    _require_dask()
    from trafficlens.datasets.writer import output_paths, publish, remove_partial, start_partial
    from trafficlens.prep.engines import resolve_backend
    from trafficlens.prep.labels import Labeler
    from trafficlens.progress import byte_bar

    config = config or PrepConfig()
    config.require_current_mask()
    backend = resolve_backend(backend)  # decided here, named to every task
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    labeler = Labeler(config.labels, config.label_column) if config.labels else None
    files, not_captures = discover_any(list(inputs))
    if not files:
        raise ConfigError(f"no capture files found in {', '.join(map(str, inputs))}")
    if labeler is not None and on_warning:
        for message in labeler.check([(source, relative) for source, relative, _ in files], list(inputs)):
            on_warning(message)
    if is_url(str(out)):
        raise ConfigError(f"{out}: the output of --engine dask must be a path every worker sees (a shared mount), not a URL")
    out, partial = output_paths(Path(out).resolve(), overwrite)
    start_partial(out, partial)
    (partial / SHARDS_DIR).mkdir()
    bar = byte_bar(sum(size for _, _, size in files), progress)
    try:
        with _Cluster(client, scheduler, workers) as client:
            tasks = _ShardTasks(client, files, config, labeler, backend, partial, task_bytes)
            results, retried = tasks.run(retries, bar, on_warning)
            _merge(client, tasks, results, config, partial, retries, not_captures,
                   {"sources": [item if is_url(item) else str(Path(item).resolve()) for item in map(str, inputs)],
                    "engine": {"name": "dask", "scheduler": scheduler or "LocalCluster", "workers": tasks.n_workers,
                               "tasks": len(tasks.groups), "task_bytes": task_bytes, "retried": retried,
                               "task_seconds": round(tasks.seconds, 3)}})
        publish(partial, out)
    except BaseException:
        remove_partial(partial)
        raise
    finally:
        bar.close()
    return out


class _Cluster:
    """The `distributed.Client` to run on: the one given, one connected to `scheduler`, or one of
    a LocalCluster of `workers` processes started (and shut down) here."""

    def __init__(self, client, scheduler: str | None, workers: int | None):
        self.client, self.scheduler, self.workers = client, scheduler, workers
        self.own, self.cluster = client is None, None

    def __enter__(self):
        from distributed import Client, LocalCluster

        if self.client is not None:
            return self.client
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"--scheduler {self.scheduler}: cannot connect ({exc})") from None
            return self.client
        import logging

        # Our own cluster's shutdown chatter ("worker still alive, killing") is not the user's concern.
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=self.workers or cores(), threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc) -> None:
        if self.own and self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class _ShardTasks:
    """One task per group of consecutive files, each writing its own shard; failed tasks resubmitted."""

    def __init__(self, client, files, config: PrepConfig, labeler, backend: str, partial: Path, task_bytes: int):
        self.client, self.files, self.backend = client, files, backend
        self.n_workers = len(client.scheduler_info().get("workers", {}))
        self.groups = group_files([size for _, _, size in files], task_bytes, self.n_workers or 1)
        width = max(5, len(str(len(self.groups) - 1)))
        self.shard_dirs = [partial / SHARDS_DIR / f"part-{i:0{width}d}" for i in range(len(self.groups))]
        self.labeler_ref = client.scatter(labeler, broadcast=True) if labeler is not None else None
        self.cfg = config.to_dict()
        self.group_bytes = [sum(files[j][2] for j in group) for group in self.groups]
        self.names = [files[g[0]][1] + (f" (+{len(g) - 1} more)" if len(g) > 1 else "") for g in self.groups]
        self.seconds = 0.0

    def submit(self, i: int):
        jobs = [(self.files[j][0], self.files[j][1]) for j in self.groups[i]]
        # Largest tasks first: they bound the run's length.
        return self.client.submit(prepare_shard, jobs, self.cfg, self.labeler_ref, str(self.shard_dirs[i]),
                                  self.backend, pure=False, priority=self.group_bytes[i],
                                  key=f"prep-shard-{i}-{os.urandom(4).hex()}")

    def run(self, retries: int, bar, on_warning) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every task's result, in shard order, and the retries made; DatasetError if one keeps failing."""
        from distributed import as_completed

        started = time.perf_counter()
        futures = [self.submit(i) for i in range(len(self.groups))]
        index_of = {future.key: i for i, future in enumerate(futures)}
        attempts = [1] * len(self.groups)
        results: list[dict[str, Any] | None] = [None] * len(self.groups)
        retried: list[dict[str, Any]] = []
        failed: list[str] = []
        pending = as_completed(futures)
        del futures  # as_completed holds them; finished ones are released as they are read
        for future in pending:
            i = index_of.pop(future.key)
            if future.status == "finished":
                results[i] = future.result()
                for report in results[i]["reports"]:
                    for message in report["warnings"] + ([report["error"]] if report["error"] else []):
                        if on_warning:
                            on_warning(message)
                bar.update(self.group_bytes[i])
                continue
            error = _describe(future)
            if attempts[i] > retries:
                failed.append(f"{self.names[i]} ({error})")
                continue
            attempts[i] += 1
            if on_warning:
                on_warning(f"{self.names[i]}: task failed ({error}); retry {attempts[i] - 1} of {retries}")
            retried.append({"files": [self.files[j][1] for j in self.groups[i]], "attempt": attempts[i] - 1,
                            "error": error})
            again = self.submit(i)
            index_of[again.key] = i
            pending.add(again)
        if failed:
            raise DatasetError(f"{len(failed)} of {len(self.groups)} prep task(s) failed after {retries} retries: "
                               + "; ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))
        self.seconds = time.perf_counter() - started
        return results, retried


def _merge(client, tasks: _ShardTasks, results, config: PrepConfig, partial: Path, retries: int,
           not_captures: list[str], extra: dict[str, Any]) -> None:
    """Remove duplicates across shards and write the top manifest: keys and labels only come to
    this process; the compaction of shards that lose rows runs on the workers."""
    from trafficlens.datasets.merge import plan_merge, write_manifest
    from trafficlens.prep.report import FileReport, summarize

    plan = plan_merge(tasks.shard_dirs, config.deduplicate, config.max_per_class)
    to_compact = [(str(tasks.shard_dirs[i]), drop) for i, drop in enumerate(plan.drops) if len(drop) and plan.kept(i)]
    if to_compact:
        client.gather([client.submit(compact_task, shard, drop, pure=False, retries=retries) for shard, drop in to_compact])
    template = json.loads((tasks.shard_dirs[0] / MANIFEST).read_text())
    reports = [FileReport(**r) for result in results for r in result["reports"]]
    extra.update(summarize(reports, plan.duplicates, plan.sampled_out, not_captures))
    extra["engine"] = extra.pop("engine")  # after the summary, as before
    write_manifest(partial, plan, template, extra)


def _describe(future) -> str:
    try:
        exc = future.exception()
    except Exception as other:  # the future itself is gone (cancelled, lost)
        exc = other
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")

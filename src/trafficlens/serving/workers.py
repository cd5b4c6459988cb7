"""Classifier processes for `serve`: loaded and warmed up once, killed when a job runs too long.

A thread cannot be stopped in Python, and a capture that inflates to gigabytes reads for a minute
without handing back a batch; a process can be killed. Each worker loads the bundle, compiles or
loads the prep kernels and builds the inference model at start, so a request only pays for its
own capture. A worker killed on a timeout (or lost to a crash) is replaced in the background.

    pool = WorkerPool("runs/cnn", workers=2).start()
    rows = pool.classify("upload.pcap", Job(top_k=3), timeout_s=60)
    pool.close()
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trafficlens.capture import CaptureReader
from trafficlens.errors import BundleError, CaptureError, ConfigError, TrafficlensError
from trafficlens.serving.limits import UploadTooLarge, check_upload

log = logging.getLogger("trafficlens.serve")
# What the fork server imports before forking workers: the heavy modules, and the prep kernels
# (loaded by importing forkserver_preload). A module that fails to import is skipped.
_PRELOAD = ["torch", "onnxruntime", "trafficlens.inference.classifier", "trafficlens.training.bundle",
            "trafficlens.inference.runtime", "trafficlens.serving.forkserver_preload"]
_START_TIMEOUT_S = 300.0  # imports, bundle, kernels and the ONNX export of one worker on a busy machine


@dataclass(frozen=True)
class Job:
    """What a worker needs besides the upload: output options and the upload's limits."""

    top_k: int = 1
    min_confidence: float = 0.0
    max_capture_bytes: int = 512 << 20
    max_packets: int = 2_000_000
    group: Any = None  # an inference.groups.GroupConfig: one row per host (or capture, window) instead of per session


class WorkTimeout(TrafficlensError):
    """The job ran past its time; its worker was killed."""


class PoolBusy(TrafficlensError):
    """No worker became free in time."""


class WorkFailed(TrafficlensError):
    """The worker died during the job (killed from outside, out of memory) or raised a bug."""


class WorkerPool:
    """`workers` classifier processes; `classify` is blocking and thread-safe (call it from threads).

    Each worker gets `threads` CPU threads for inference (default: the cores divided among the
    workers, at least one), so that busy workers do not fight over the same cores.
    """

    def __init__(self, run: str | os.PathLike, *, device: str = "auto", workers: int = 2, threads: int | None = None,
                 trusted_keys: tuple[str, ...] = ()):
        if workers < 1:
            raise ConfigError(f"workers={workers}: a pool needs at least one worker")
        self.run = os.fspath(run)
        self.trusted_keys = tuple(trusted_keys)  # each worker verifies the bundle's signature again
        self.device = device
        self.workers = workers
        self.threads = threads or max(1, len(os.sched_getaffinity(0)) // workers)
        # Never fork this process: its torch and runtime threads would be missing in the child. A
        # fork server (one single-threaded process) imports the heavy modules and loads the prep
        # kernels once; workers fork from it, so a replacement is ready in 1-2 s and 0.6 CPU-s
        # instead of 10 s and 5 CPU-s from scratch (measured on the 2-core VM).
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> "WorkerPool":
        """Start every worker and wait until each has loaded and warmed up the model."""
        started = [self._spawn() for _ in range(self.workers)]
        try:
            for worker in started:
                self._wait_ready(worker)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.stop()

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers alive now (tests and benchmarks watch them)."""
        with self._lock:
            return sorted(w.process.pid for w in self._all if w.process.pid is not None)

    def _spawn(self) -> "_Worker":
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve_jobs, args=(child, self.run, self.device, self.threads, self.trusted_keys),
                                    name="trafficlens-serve-worker", daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent)
        with self._lock:
            if self._closed:
                worker.stop()
                raise PoolBusy("the pool is closed")
            self._all.add(worker)
        return worker

    def _wait_ready(self, worker: "_Worker") -> None:
        if not worker.conn.poll(_START_TIMEOUT_S):
            worker.stop()
            raise BundleError(f"{self.run}: a serve worker did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            kind, message = worker.conn.recv()
        except (EOFError, OSError):
            kind, message = "failed", f"exit code {worker.process.exitcode}"
        if kind != "ready":
            worker.stop()
            raise BundleError(f"{self.run}: a serve worker could not load the model ({message})")

    def _replace(self, worker: "_Worker") -> None:
        """Kill `worker` now; start its successor in the background (it joins the idle queue when warm)."""
        worker.stop(kill=True)
        with self._lock:
            self._all.discard(worker)
            if self._closed:
                return

        def respawn() -> None:
            try:
                fresh = self._spawn()
                self._wait_ready(fresh)
            except TrafficlensError as exc:
                if not self._closed:
                    log.error("serve worker not replaced: %s", exc)
                return
            self._idle.put(fresh)

        threading.Thread(target=respawn, name="trafficlens-serve-respawn", daemon=True).start()

    # -- jobs ----------------------------------------------------------------------------------
    def classify(self, upload: str | os.PathLike, job: Job, *, timeout_s: float,
                 wait_s: float | None = None) -> list[dict[str, Any]]:
        """Rows for the sessions of one uploaded capture.

        Waits up to `wait_s` (default `timeout_s`) for a free worker (`PoolBusy`), then gives the
        job `timeout_s`: past it the worker is killed (`WorkTimeout`), so nothing of the job keeps
        running. Raises `UploadTooLarge` past the job's limits and `CaptureError` for a body that
        is not a capture, with the upload's path replaced by "upload". A decompressed copy is
        written beside the upload as `<upload>.raw`; the caller deletes both."""
        deadline = time.monotonic() + (timeout_s if wait_s is None else wait_s)
        while True:
            try:
                worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise PoolBusy(f"no classifier free within {timeout_s if wait_s is None else wait_s:g} s") from None
            if worker.process.is_alive():
                break
            self._replace(worker)  # died while idle (killed from outside): try the next one
        try:
            worker.conn.send((os.fspath(upload), job))
            if not worker.conn.poll(timeout_s):
                self._replace(worker)
                raise WorkTimeout(f"classification took longer than {timeout_s:g} s (--timeout)")
            kind, value = worker.conn.recv()
        except (EOFError, OSError) as exc:
            self._replace(worker)
            raise WorkFailed(f"the classifier process stopped during the job ({exc or 'exited'})") from None
        self._idle.put(worker)
        if kind == "ok":
            return value
        raise {"too_large": UploadTooLarge, "capture": CaptureError}.get(kind, WorkFailed)(value)


class _Worker:
    def __init__(self, process, conn):
        self.process = process
        self.conn = conn

    def stop(self, kill: bool = False) -> None:
        if self.process.is_alive():
            self.process.kill() if kill else self.process.terminate()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


# -- the worker process ------------------------------------------------------------------------
def _serve_jobs(conn, run: str, device: str, threads: int, trusted_keys: tuple[str, ...] = ()) -> None:
    """Load the bundle and warm everything up, say "ready", then answer jobs until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle: it closes the pool
    try:
        import torch

        from trafficlens.inference.classifier import Classifier

        torch.set_num_threads(threads)
        clf = Classifier.load(run, device=device, trusted_keys=trusted_keys).warm_up()  # ONNX Runtime takes torch's thread count now
        try:
            from trafficlens.prep.engines.compiled import warm_up as load_kernels

            load_kernels()  # inherited from the fork server already: then this takes a millisecond
        except ImportError:  # numba not installed: the Python backend needs no warming
            pass
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which refuses to start)
        conn.send(("failed", str(exc) or type(exc).__name__))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            upload, job = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_run_job(clf, upload, job))


def _run_job(clf, upload: str, job: Job) -> tuple[str, Any]:
    raw = upload + ".raw"

    def public(message: str) -> str:  # never show server paths to the client
        return message.replace(raw, "upload").replace(upload, "upload")

    try:
        size = check_upload(upload, raw, max_bytes=job.max_capture_bytes, max_packets=job.max_packets)
        CaptureReader(size.path)  # a body that is no capture at all is a bad request, not an empty answer
        if job.group is not None:
            batches = clf.iter_group_predictions([size.path], job.group)
        else:
            batches = clf.iter_predictions([size.path], top_k=job.top_k, min_confidence=job.min_confidence)
        rows = [row for batch in batches for row in batch]
    except UploadTooLarge as exc:
        return "too_large", str(exc)
    except (CaptureError, ConfigError) as exc:
        return "capture", public(str(exc))
    except Exception:  # noqa: BLE001  (a bug: the parent logs it and answers 500)
        return "error", public(traceback.format_exc())
    finally:
        Path(raw).unlink(missing_ok=True)
    for row in rows:
        row["capture"] = "upload"
        row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
    return "ok", rows

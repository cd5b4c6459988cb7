"""Scaling out: prep on Dask with 1 and 2 workers, scheduler overhead per task, and training
samples/s with 1 and 2 torch.distributed processes (issue 7).

    PYTHONPATH=src python benchmarks/scale.py                            # ../shared/data/iot-sentinel
    PYTHONPATH=src python benchmarks/scale.py --captures DIR --model chen-cnn --repeat 2

Prep: the local engine (`--workers 1` and `2`, fork pool) is the baseline of the same run; the
Dask rows time `prep_dask` on an already started LocalCluster of single-threaded worker
processes (cluster start-up is listed on its own row), merge and manifest included. Scheduler
overhead: wall time per task of `--noop-tasks` empty tasks on the 2-worker cluster. Training:
one epoch of `trafficlens train` on the Dask-made (sharded) dataset, as one process and under
torchrun with 2 processes (gloo on CPU); samples/s is training rows / the epoch's training
seconds as the trainer records them (history.json), so process start-up and validation are not
counted. Needs `pip install 'trafficlens[dask]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "iot-sentinel"


def _noop(i: int) -> int:
    return i


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", default=str(DEFAULT))
    parser.add_argument("--labels", default="dir")
    parser.add_argument("--model", default="chen-cnn")
    parser.add_argument("--repeat", type=int, default=1, help="runs per prep row; the fastest is reported")
    parser.add_argument("--noop-tasks", type=int, default=2000)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from trafficlens.datasets import Dataset
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.dask import discover_any, prep_dask
    from trafficlens.prep.local import prep

    files, _ = discover_any([args.captures])
    total_mb = sum(size for _, _, size in files) / 1e6
    config = PrepConfig(labels=args.labels)
    work = Path(tempfile.mkdtemp(prefix="tl-scale-"))
    print(f"captures {args.captures}: {len(files)} files, {total_mb:.1f} MB; cores {len(os.sched_getaffinity(0))}; "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    try:
        for workers in (1, 2):
            out = work / f"local{workers}"
            seconds = best(lambda: prep([args.captures], out, config, workers=workers, overwrite=True), args.repeat)
            rows.append((f"local engine, {workers} process(es)", seconds, len(Dataset.open(out))))
        baseline = rows[-1][1]
        overhead = None
        for workers in (1, 2):
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            client.wait_for_workers(workers)
            startup = time.perf_counter() - t0
            out = work / f"dask{workers}"
            seconds = best(lambda: prep_dask([args.captures], out, config, client=client, overwrite=True), args.repeat)
            ds = Dataset.open(out)
            engine = ds.manifest["engine"]
            rows.append((f"dask, {workers} worker(s), {engine['tasks']} tasks of <= 64 MiB, {len(ds.shards)} shards",
                         seconds, len(ds)))
            rows.append((f"  (LocalCluster start, {workers} worker(s))", startup, None))
            if workers == 2:
                per_file = work / "dask-per-file"
                seconds = best(lambda: prep_dask([args.captures], per_file, config, client=client, overwrite=True,
                                                 task_bytes=1), args.repeat)
                ds = Dataset.open(per_file)
                rows.append((f"dask, 2 workers, one task per file ({ds.manifest['engine']['tasks']} tasks, "
                             f"{len(ds.shards)} shards)", seconds, len(ds)))
                task_s = ds.manifest["engine"]["task_seconds"]
                client.gather(client.map(_noop, range(100), pure=False))  # warm
                t0 = time.perf_counter()
                client.gather(client.map(_noop, range(args.noop_tasks), pure=False))
                overhead = (time.perf_counter() - t0) / args.noop_tasks
            client.close()
            cluster.close()

        print(f"\nprep of {total_mb:.1f} MB ({len(files)} files), fastest of {args.repeat}:")
        print("| run | seconds | MB/s | sessions | vs local 2 processes |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, n in rows:
            if n is None:
                print(f"| {name} | {seconds:.1f} | | | |")
            else:
                print(f"| {name} | {seconds:.1f} | {total_mb / seconds:.1f} | {n:,} | {baseline / seconds:.2f}x |")
        print(f"\nscheduler overhead: {overhead * 1e3:.2f} ms per empty task ({args.noop_tasks} tasks, 2 workers); "
              f"one task per file, 2 workers: {len(files)} tasks in {task_s:.1f} s "
              f"({task_s / len(files) * 1e3:.1f} ms of wall time per task, before the merge)")

        if args.skip_train:
            return
        dataset = work / "dask2"
        train = ["train", str(dataset), "--model", args.model, "--epochs", "1", "--split", "random", "--quiet",
                 "--overwrite"]
        env = {**os.environ}
        env.pop("WORLD_SIZE", None)
        results = []
        for nproc, threads in ((1, None), (1, 1), (2, None)):
            out = work / f"run{nproc}-{threads}"
            if nproc == 1:
                command = [sys.executable, "-m", "trafficlens", *train, "-o", str(out)]
                command += ["--threads", str(threads)] if threads else []
            else:
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "trafficlens", *train, "-o", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            epoch = json.loads((out / "history.json").read_text())["epochs"][0]
            metrics = json.loads((out / "metrics.json").read_text())
            cores = len(os.sched_getaffinity(0))
            label = f"{nproc} x {threads or max(1, cores // nproc)} thread(s)"
            results.append((label, epoch["train_samples"] / epoch["train_seconds"], epoch["train_seconds"],
                            epoch.get("val_accuracy"), metrics.get("accuracy")))
        print(f"\ntraining {args.model}, 1 epoch on the sharded dataset ({len(Dataset.open(dataset)):,} sessions):")
        print("| processes x threads | samples/s | epoch training seconds | val accuracy | test accuracy | vs 1 x all cores |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, rate, seconds, val, test in results:
            print(f"| {label} | {rate:,.0f} | {seconds:.1f} | {val:.4f} | {test:.4f} | {rate / results[0][1]:.2f}x |")
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

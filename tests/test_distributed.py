"""Issue 7: prep on Dask into sharded datasets, reading shards, and torch.distributed training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from captures import tcp_session, write_pcap
from trafficlens.datasets import Dataset
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.errors import DatasetError

distributed = pytest.importorskip("distributed", reason="Dask is an extra: pip install 'trafficlens[dask]'")

TENSOR_NAMES = ("image", "packets", "sequence", "stats")
# Keys that differ by construction between a local and a Dask run of the same input.
ENGINE_KEYS = {"created", "format_version", "shards", "engine"}


def assert_same_dataset(local: Dataset, sharded: Dataset) -> None:
    """Same sessions in the same order, same tensors, same counts."""
    assert sharded.sharded and not local.sharded
    assert len(local) == len(sharded)
    assert local.table.equals(sharded.table)
    for name in TENSOR_NAMES:
        assert np.array_equal(local.tensor(name), sharded.tensor(name)[:]), name
    keys = set(local.manifest) | set(sharded.manifest)
    differ = sorted(k for k in keys - ENGINE_KEYS if local.manifest.get(k) != sharded.manifest.get(k))
    assert differ == [], differ


@pytest.fixture(scope="module")
def threads_client():
    """A Dask cluster of 2 thread workers in this process (fast to start; monkeypatching reaches it)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def _session(payload: bytes, sport: int, t0: float, client="10.0.0.1"):
    return tcp_session(client=client, sport=sport, t0=t0, requests=(payload,), responses=(b"ok" + payload[:3],))


def write_duplicates_corpus(root):
    """Captures where the same session (after strict masking) recurs within and across files,
    under the same and under other labels: what the cross-shard merge must count like one writer."""
    common = b"GET /common HTTP/1.1\r\n\r\n"
    write_pcap(root / "alpha" / "a1.pcap", _session(common, 40000, 0.0) + _session(b"A" * 70, 40001, 300.0)
               + _session(common, 40002, 600.0, client="10.0.0.7"))           # duplicate inside the file
    write_pcap(root / "alpha" / "a2.pcap", _session(common, 40003, 0.0) + _session(b"A" * 71, 40004, 300.0))
    write_pcap(root / "beta" / "b1.pcap", _session(common, 40005, 0.0)        # duplicate, other label
               + _session(b"B" * 80, 40006, 300.0) + _session(b"B" * 80, 40007, 600.0)
               + _session(b"B" * 81, 40008, 900.0))
    write_pcap(root / "beta" / "b2.pcap", _session(b"B" * 80, 40009, 0.0) + _session(b"B" * 82, 40010, 300.0))
    write_pcap(root / "beta" / "empty.pcap", [])                                # a file without sessions
    (root / "README.txt").write_text("not a capture")
    return root


@pytest.mark.parametrize("settings,task_bytes", [({}, 1), ({}, 3000), ({"max_per_class": 2}, 1),
                                                 ({"deduplicate": False}, 1)])
def test_dask_prep_equals_local_prep_with_duplicates_across_shards(tmp_path, threads_client, settings, task_bytes):
    from trafficlens.prep.dask import prep_dask

    caps = write_duplicates_corpus(tmp_path / "caps")
    config = PrepConfig(labels="dir", **settings)
    local = Dataset.open(prep([caps], tmp_path / "local", config, workers=1))
    sharded = Dataset.open(prep_dask([caps], tmp_path / "dask", config, client=threads_client, task_bytes=task_bytes))
    assert_same_dataset(local, sharded)
    if not settings:
        dup = local.manifest["duplicates"]
        assert dup["dropped"] >= 4 and dup["conflicting_labels"] >= 1  # the corpus exercises both
    tasks = sharded.manifest["engine"]["tasks"]
    assert tasks == 5 if task_bytes == 1 else 1 < tasks < 5  # one file per task, or whole files grouped
    assert len(sharded.shards) >= 2 and sum(len(s["inputs"]) for s in sharded.manifest["shards"]) <= 5
    for shard in sharded.shards:  # each shard is a version-1 dataset of its own
        part = Dataset.open(shard)
        assert not part.sharded and len(part) == len(part.table)


def test_files_are_grouped_whole_in_input_order():
    from trafficlens.prep.dask import group_files

    pairs = [[i, i + 1] for i in range(0, 16, 2)]
    assert group_files([10] * 16, task_bytes=25, workers=1) == pairs
    assert group_files([10] * 4, task_bytes=1000, workers=1) == [[0, 1], [2, 3]]  # >= 2 tasks per worker
    assert group_files([5] * 8, task_bytes=1 << 30, workers=2) == pairs[:4]
    assert group_files([100, 1, 1, 1], task_bytes=50, workers=1) == [[0], [1, 2, 3]]  # a big file is never split


def test_failed_tasks_are_retried_and_reported(tmp_path, threads_client, monkeypatch):
    from trafficlens.prep import dask as engine

    caps = write_duplicates_corpus(tmp_path / "caps")
    real = engine.prepare_shard
    marker = tmp_path / "failed-once"  # a file: Dask pickles the task, so in-memory state would not persist

    def flaky(jobs, *args):
        if jobs[0][1].endswith("b1.pcap") and not marker.exists():
            marker.touch()
            raise OSError("worker lost its scratch disk")
        return real(jobs, *args)

    monkeypatch.setattr(engine, "prepare_shard", flaky)
    warnings: list[str] = []
    config = PrepConfig(labels="dir")
    ds = Dataset.open(engine.prep_dask([caps], tmp_path / "dask", config, client=threads_client,
                                       on_warning=warnings.append, task_bytes=1))
    assert ds.manifest["engine"]["retried"] == [
        {"files": ["beta/b1.pcap"], "attempt": 1, "error": "OSError: worker lost its scratch disk"}]
    assert any("beta/b1.pcap: task failed" in w for w in warnings)
    assert_same_dataset(Dataset.open(prep([caps], tmp_path / "local", config, workers=1)), ds)

    def broken(jobs, *args):
        if jobs[0][1].endswith("a2.pcap"):
            raise OSError("always")
        return real(jobs, *args)

    monkeypatch.setattr(engine, "prepare_shard", broken)
    with pytest.raises(DatasetError, match=r"1 of 5 prep task\(s\) failed after 1 retries: alpha/a2.pcap \(OSError: always\)"):
        engine.prep_dask([caps], tmp_path / "failed", config, client=threads_client, retries=1, task_bytes=1)
    assert not (tmp_path / "failed").exists() and not (tmp_path / "failed.partial").exists()


def test_fsspec_url_inputs(tmp_path, threads_client):
    from trafficlens.prep.dask import prep_dask

    caps = write_duplicates_corpus(tmp_path / "caps")
    config = PrepConfig(labels="dir")
    ds = Dataset.open(prep_dask([f"file://{caps}"], tmp_path / "dask", config, client=threads_client, task_bytes=1))
    local = Dataset.open(prep([caps], tmp_path / "local", config, workers=1))
    assert ds.manifest.pop("sources") == [f"file://{caps}"]  # the input as given; the rest is equal
    local.manifest.pop("sources")
    for error in ds.manifest["errors"]:  # messages name the file as given: here, by its URL
        assert error["message"].startswith("file://")
        error["message"] = error["message"][len("file://"):]
    assert_same_dataset(local, ds)


def test_sharded_tensor_indexing_matches_numpy(tmp_path, threads_client):
    from trafficlens.prep.dask import prep_dask

    caps = write_duplicates_corpus(tmp_path / "caps")
    ds = Dataset.open(prep_dask([caps], tmp_path / "dask", PrepConfig(labels="dir"), client=threads_client, task_bytes=1))
    tensor = ds.tensor("packets")
    full = np.asarray(tensor)
    assert full.shape == tensor.shape == (len(ds), 6, 96) and len(ds.shards) >= 3
    rows = np.array([len(ds) - 1, 0, 2, 2, -1])
    assert np.array_equal(tensor[rows], full[rows])
    assert np.array_equal(tensor[1:4], full[1:4]) and np.array_equal(tensor[::-2], full[::-2])
    assert np.array_equal(tensor[3], full[3]) and np.array_equal(tensor[rows, 1, :8], full[rows, 1, :8])
    mask = np.arange(len(ds)) % 2 == 0
    assert np.array_equal(tensor[mask], full[mask])
    with pytest.raises(IndexError):
        tensor[np.array([len(ds)])]
    shutil.rmtree(ds.shards[-1])
    with pytest.raises(DatasetError, match="shard .* is missing"):
        Dataset.open(tmp_path / "dask")


def test_cli_engine_dask_and_errors(tmp_path):
    from click.testing import CliRunner

    from trafficlens.cli import cli

    caps = write_duplicates_corpus(tmp_path / "caps")
    runner = CliRunner()
    result = runner.invoke(cli, ["prep", str(caps), "-o", str(tmp_path / "ds"), "--labels", "dir", "--engine", "local",
                                 "--scheduler", "tcp://127.0.0.1:1", "--quiet"])
    assert result.exit_code != 0 and "--scheduler is for --engine dask" in str(result.exception)
    result = runner.invoke(cli, ["prep", str(tmp_path / "nope"), "-o", str(tmp_path / "ds"), "--engine", "dask"])
    assert result.exit_code != 0 and "no such file or directory" in str(result.exception)


@pytest.mark.shared_data
@pytest.mark.slow
def test_local_cluster_of_two_workers_preps_iot_sentinel_like_the_local_engine(shared_data, tmp_path):
    """The issue's bar: a LocalCluster of 2 worker processes, the real captures, the same result."""
    from distributed import Client, LocalCluster

    from trafficlens.prep.dask import prep_dask

    source = shared_data / "iot-sentinel"
    config = PrepConfig(labels="dir")
    local = Dataset.open(prep([source], tmp_path / "local", config))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        sharded = Dataset.open(prep_dask([source], tmp_path / "dask", config, client=client))
    assert_same_dataset(local, sharded)
    assert sharded.manifest["engine"]["workers"] == 2
    assert len(sharded) > 5000 and sharded.manifest["duplicates"]["dropped"] > 0


# -- training ----------------------------------------------------------------------------------
def write_learnable_corpus(root, per_class=24):
    """Three classes whose request bytes differ; several captures per class."""
    rng = np.random.default_rng(0)
    for c, (label, byte) in enumerate((("alpha", 65), ("beta", 66), ("gamma", 67))):
        for f in range(4):
            frames = []
            for i in range(per_class // 4):
                body = bytes([byte]) * int(rng.integers(40, 120)) + rng.bytes(int(rng.integers(0, 30)))
                frames += _session(body, 40000 + 100 * c + 10 * f + i, 400.0 * i)
            write_pcap(root / label / f"{label}{f}.pcap", frames)
    return root


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path, threads_client):
    """`torchrun --nproc-per-node 2 -m trafficlens train` on CPU (gloo), one epoch, on a sharded
    dataset: the gathered metrics equal single-process training on the same seed within tolerance."""
    from trafficlens.prep.dask import prep_dask

    caps = write_learnable_corpus(tmp_path / "caps")
    ds_path = prep_dask([caps], tmp_path / "ds", PrepConfig(labels="dir", image_bytes=64), client=threads_client, task_bytes=1)
    args = ["train", str(ds_path), "--model", "chen-gru", "--epochs", "1", "--batch-size", "10", "--lr", "0.01",
            "--split", "random", "--set", "hidden=16", "--set", "max_tokens=32", "--quiet", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, "-m", "trafficlens", *args, "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "trafficlens", *args, "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 processes" in two.stderr and two.stdout.count("wrote") == 1  # rank 0 reports, once
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())["epochs"][0]
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())["epochs"][0]
    assert h1["train_samples"] == h2["train_samples"]  # every training row seen once over the ranks
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-3)
    assert h2["val_accuracy"] == pytest.approx(h1["val_accuracy"], abs=0.02)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert m2["accuracy"] == pytest.approx(m1["accuracy"], abs=0.02)
    assert m2["macro_f1"] == pytest.approx(m1["macro_f1"], abs=0.02)
    # The bundle of the 2-process run serves predictions like any other, from the sharded dataset.
    from trafficlens.serving import Classifier

    out = Classifier.load(tmp_path / "two", device="cpu").predict_sessions(ds_path)
    assert len(out) == len(Dataset.open(ds_path))


def test_only_rank_zero_probes_the_run_directory(monkeypatch):
    """Every rank of `--nproc` used to probe the output directory (make it, remove it) at once, and
    4 of 8 launches failed with "File exists" (`train --nproc 2 --overwrite`); rank 0 alone probes it now."""
    from trafficlens.training.torchrun import main_process

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert main_process()  # alone: RANK means nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not main_process()
    monkeypatch.setenv("RANK", "0")
    assert main_process()

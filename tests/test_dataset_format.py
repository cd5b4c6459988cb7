"""The dataset directory: incremental writing, reading back, interruption, undersampling."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from trafficlens.datasets import Dataset, DatasetWriter
from trafficlens.datasets.npy_stream import NpyAppender
from trafficlens.errors import DatasetError


def _meta(i, label):
    return dict(capture=f"c{i % 4}.pcap", src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1000 + i, dst_port=443,
                protocol="TCP", ts_start=float(i), ts_end=float(i) + 1, packets=3, bytes=300, payload_bytes=100,
                packets_fwd=2, packets_bwd=1, label=label)


def _write(path, n, labels=("a", "b", "c"), dup_every=0, **kw):
    writer = DatasetWriter(path, {"setting": 1}, stats_names=["x", "y"], **kw)
    with writer:
        for i in range(n):
            image = np.zeros(784, np.uint8)
            key = i - 1 if dup_every and i % dup_every == 0 and i else i
            image[:4] = np.frombuffer(np.uint32(key).tobytes(), np.uint8)
            writer.add(_meta(i, labels[i % len(labels)]), image, np.full((6, 96), key % 256, np.uint8),
                       np.full((32, 2), i, np.float32), np.array([i, -i], np.float32))
    return writer


def test_npy_appender_roundtrip(tmp_path):
    app = NpyAppender(tmp_path / "x.npy", np.float32, (3, 2))
    app.append(np.ones((5, 3, 2)))
    app.append(np.arange(12).reshape(2, 3, 2))
    app.close()
    data = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert data.shape == (7, 3, 2)
    assert data[5].ravel().tolist() == list(range(6))


def test_written_dataset_reads_back_row_aligned(tmp_path):
    _write(tmp_path / "ds", 5000)  # more than one flush block
    ds = Dataset.open(tmp_path / "ds")
    assert len(ds) == 5000
    assert ds.image_side == 28
    stats = ds.tensor("stats")
    assert isinstance(stats, np.memmap)
    ids = ds.column("id")
    assert (ids == np.arange(5000)).all()
    # row i of every tensor belongs to row i of the table
    assert (stats[:, 0] == ds.column("ts_start")).all()
    assert ds.tensor("sequence")[4321, 0, 0] == 4321
    assert ds.labels[:4].tolist() == ["a", "b", "c", "a"]
    assert ds.manifest["classes"] == {"a": 1667, "b": 1667, "c": 1666}
    assert pq.read_table(tmp_path / "ds" / "sessions.parquet").num_rows == 5000


def test_pandas_polars_pyarrow_and_numpy_open_it_directly(tmp_path):
    """README: the table and tensors open in pandas, polars, pyarrow and NumPy without trafficlens."""
    pl = pytest.importorskip("polars")
    pd = pytest.importorskip("pandas")
    _write(tmp_path / "ds", 300)
    expected = Dataset.open(tmp_path / "ds").table.to_pylist()
    table = tmp_path / "ds" / "sessions.parquet"
    assert pq.read_table(table).to_pylist() == expected
    assert pd.read_parquet(table).to_dict("records") == expected
    frame = pl.read_parquet(table)
    assert frame.to_dicts() == expected and frame["label"].value_counts().sort("label")["count"].to_list() == [100] * 3
    stats = np.load(tmp_path / "ds" / "stats.npy", mmap_mode="r")
    assert stats.shape == (300, 2) and (stats[:, 0] == frame["ts_start"].to_numpy()).all()  # row i is table row i
    assert np.load(tmp_path / "ds" / "image.npy", mmap_mode="r")[7, :4].tolist() == [7, 0, 0, 0]


def test_duplicates_dropped_and_conflicts_counted(tmp_path):
    writer = _write(tmp_path / "ds", 100, dup_every=10)
    ds = Dataset.open(tmp_path / "ds")
    assert len(ds) == 91
    assert ds.manifest["duplicates"]["dropped"] == 9
    # the duplicate i has label i%3, its original i-1 has another: all conflict
    assert ds.manifest["duplicates"]["conflicting_labels"] == 9
    assert writer.duplicates == 9


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(tmp_path / "ds", {}, stats_names=["x"]) as writer:
            writer.add(_meta(0, "a"), np.zeros(784, np.uint8), np.zeros((6, 96), np.uint8),
                       np.zeros((32, 2), np.float32), np.zeros(1, np.float32))
            raise KeyboardInterrupt
    assert not (tmp_path / "ds").exists()
    assert not (tmp_path / "ds.partial").exists()
    with pytest.raises(DatasetError, match="no such dataset"):
        Dataset.open(tmp_path / "ds")


def test_open_rejects_incomplete_and_foreign_versions(tmp_path):
    _write(tmp_path / "ds", 10)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="format version 99"):
        Dataset.open(tmp_path / "ds")
    (tmp_path / "other.partial").mkdir()
    with pytest.raises(DatasetError, match="incomplete"):
        Dataset.open(tmp_path / "other")


def test_existing_output_needs_overwrite(tmp_path):
    _write(tmp_path / "ds", 3)
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(tmp_path / "ds", {})
    _write(tmp_path / "ds", 4, overwrite=True)
    assert len(Dataset.open(tmp_path / "ds")) == 4


def test_overwrite_deletes_only_what_trafficlens_wrote(tmp_path):
    """--overwrite replaces a dataset or an empty folder, never anything else; a stale .partial is
    removed only when trafficlens left it (the marker the writer drops in at creation)."""
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"meow")
    (tmp_path / "notes.txt").write_text("mine")
    for target, what in ((precious, "is a directory"), (tmp_path / "notes.txt", "is a file")):
        with pytest.raises(DatasetError, match=f"{what} but not a trafficlens dataset; --overwrite replaces only datasets"):
            DatasetWriter(target, {}, overwrite=True)
    assert (precious / "cat.jpg").read_bytes() == b"meow" and (tmp_path / "notes.txt").read_text() == "mine"
    # someone else's folder where the writer would put its .partial: refused, untouched
    (tmp_path / "ds.partial").mkdir()
    (tmp_path / "ds.partial" / "draft.txt").write_text("mine too")
    with pytest.raises(DatasetError, match="ds.partial: is in the way and was not left by trafficlens prep"):
        DatasetWriter(tmp_path / "ds", {})
    assert (tmp_path / "ds.partial" / "draft.txt").read_text() == "mine too"
    (tmp_path / "ds.partial" / "draft.txt").unlink()
    # an interrupted run's .partial is trafficlens' own: removed without --overwrite
    writer = DatasetWriter(tmp_path / "ds", {}, stats_names=["x", "y"]).open()
    writer._table.close()  # a crash: the partial stays
    assert (tmp_path / "ds.partial" / ".trafficlens-partial").is_file()
    _write(tmp_path / "ds", 3)
    assert len(Dataset.open(tmp_path / "ds")) == 3 and not (tmp_path / "ds.partial").exists()
    assert not (tmp_path / "ds" / ".trafficlens-partial").exists()
    # an empty folder holds nothing to lose
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", 2, overwrite=True)
    assert len(Dataset.open(tmp_path / "empty")) == 2


def test_open_checks_every_file_against_the_manifest(tmp_path):
    """Shapes, row counts and readability from headers, sizes and the Parquet footer."""
    _write(tmp_path / "ds", 10)
    Dataset.open(tmp_path / "ds")
    image = (tmp_path / "ds" / "image.npy").read_bytes()
    for damaged, message in ((image[:-1], "image.npy: 7967 bytes where its header promises 7968"),
                             (image + b"\0", "image.npy: 7969 bytes where its header promises 7968"),
                             (image.replace(b"(10, 784)", b"(10, 783)"), "holds 10x783 uint8 values, the manifest says 10x784"),
                             (image.replace(b"|u1", b"<f4"), "holds 10x784 float32 values"),
                             (b"\x93NUMPY\x01\x00" + b"\xff" * 40, "image.npy: not a readable .npy file"),
                             (b"", "image.npy: not a readable .npy file")):
        (tmp_path / "ds" / "image.npy").write_bytes(damaged)
        with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Dataset.open(tmp_path / "ds")
    (tmp_path / "ds" / "image.npy").write_bytes(image)
    table = (tmp_path / "ds" / "sessions.parquet").read_bytes()
    (tmp_path / "ds" / "sessions.parquet").write_bytes(table[:-10])
    with pytest.raises(DatasetError, match="sessions.parquet: unreadable"):
        Dataset.open(tmp_path / "ds")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    (tmp_path / "ds" / "sessions.parquet").write_bytes(table)
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(dict(manifest, n_sessions=11)))
    with pytest.raises(DatasetError, match="image.npy: holds 10x784 uint8 values, the manifest says 11x784"):
        Dataset.open(tmp_path / "ds")
    del manifest["tensors"]
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="incomplete manifest"):
        Dataset.open(tmp_path / "ds")


def test_limit_per_class_keeps_rows_aligned(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", {}, stats_names=["i"])
    writer.open()
    for i in range(300):
        label = "big" if i < 250 else "small"
        image = np.zeros(784, np.uint8)
        image[:4] = np.frombuffer(np.uint32(i).tobytes(), np.uint8)
        writer.add(_meta(i, label), image, np.zeros((6, 96), np.uint8), np.zeros((32, 2), np.float32),
                   np.array([i], np.float32))
    writer.limit_per_class(40)
    writer.finish()
    ds = Dataset.open(tmp_path / "ds")
    assert ds.manifest["classes"] == {"big": 40, "small": 40}
    original = ds.tensor("stats")[:, 0].astype(int)
    assert (ds.column("ts_start").astype(int) == original).all()
    assert (ds.tensor("image")[:, :4].copy().view(np.uint32).ravel() == original).all()
    assert (ds.column("id") == np.arange(80)).all()


@pytest.mark.parametrize("width", [1360, 37, 8])
def test_duplicate_keys_tell_every_one_byte_change_apart(width):
    from trafficlens.datasets.writer import blake2b_keys, multilinear_keys

    rng = np.random.default_rng(width)
    base = rng.integers(0, 256, width, dtype=np.uint8)
    rows = np.repeat(base[None], 2 * width + 2, axis=0)
    for j in range(width):  # every position changed twice: its lowest bit, then some higher bits
        rows[2 * j, j] ^= 1
        rows[2 * j + 1, j] ^= rng.integers(2, 256)
    for keys_of in (multilinear_keys, blake2b_keys):
        keys = keys_of(rows)
        assert len(keys) == len(rows) and all(len(k) == 16 for k in keys)
        assert len(set(keys)) == 2 * width + 1  # the last two rows are the unchanged base
        assert keys[-1] == keys[-2] == keys_of(base[None])[0]


def test_columns_built_from_buffers_match_arrow_s_own_conversion():
    """The writer builds Arrow arrays from NumPy buffers (pa.array imports pandas: 0.3 s of a
    small prep); unicode, empty strings, nulls and numbers must come out as pa.array's would."""
    import pyarrow as pa

    from trafficlens.datasets.writer import _arrow

    strings = ["c0.pcap", "", None, "ünïcode-日本", "10.0.0.1", None]
    assert _arrow(strings, pa.string()).equals(pa.array(strings, type=pa.string()))
    assert _arrow(np.array(strings, dtype=object), pa.string()).equals(pa.array(strings, type=pa.string()))
    assert _arrow([None, None], pa.string()).null_count == 2
    assert _arrow([443, 65535, 0], pa.int32()).equals(pa.array([443, 65535, 0], type=pa.int32()))
    assert _arrow([0.5, 1e9, -2.25], pa.float64()).equals(pa.array([0.5, 1e9, -2.25], type=pa.float64()))
    assert _arrow([1, None, 3], pa.int32()).equals(pa.array([1, None, 3], type=pa.int32()))


def test_writing_a_dataset_does_not_import_pandas(tmp_path):
    import subprocess
    import sys

    # and a batch of 5,000 sessions' strings (a prep's last harvest of a large capture) neither:
    # the pandas import (0.4-0.5 s) pays back only after millions of strings
    code = ("import sys\nsys.path.insert(0, %r)\nfrom test_dataset_format import _write\n_write(%r, 50)\n"
            "import pyarrow as pa\nfrom trafficlens.datasets.writer import _arrow\n"
            "column = _arrow(['10.0.0.%%d' %% (i %% 256) for i in range(5000)], pa.string())\n"
            "print('pandas' in sys.modules, column.to_pylist()[257])"
            % (str(__import__('pathlib').Path(__file__).parent), str(tmp_path / "ds")))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False 10.0.0.1"
    ds = Dataset.open(tmp_path / "ds")
    assert ds.table.column("capture").to_pylist()[:3] == ["c0.pcap", "c1.pcap", "c2.pcap"]
    assert ds.column("src_port").tolist()[:2] == [1000, 1001]


def test_duplicate_keys_tell_apart_rows_that_differ_in_high_bytes():
    """Rows that differ only in the top byte of 8-byte words: the case where 64-bit words gave a
    hash only 8 bits of change (and collisions); thousands of such rows, all keys distinct."""
    from trafficlens.datasets.writer import multilinear_keys

    width = 1224
    rows = np.zeros((width // 8 * 255 + 1, width), np.uint8)
    r = 1
    for word in range(width // 8):
        for value in range(1, 256):
            rows[r, word * 8 + 7] = value
            r += 1
    keys = multilinear_keys(rows)
    assert len(set(keys)) == len(rows) == 39_016

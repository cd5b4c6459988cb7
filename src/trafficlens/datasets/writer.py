"""Write a dataset directory incrementally, with bounded memory.

Rows are buffered in small blocks and appended to the `.npy` files and the Parquet table, so a
dataset of millions of sessions never sits in memory. Everything goes to `<out>.partial/`, and
`manifest.json` is written and the directory renamed only on success: an interrupted run leaves
nothing that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trafficlens import __version__
from trafficlens.datasets.npy_stream import NpyAppender
from trafficlens.datasets.schema import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PARTIAL_MARKER,
    PARTIAL_SUFFIX,
    KEYS,
    TABLE,
    TENSORS,
    session_schema,
)
from trafficlens.errors import DatasetError

_BLOCK = 2048


def blake2b_keys(rows: np.ndarray) -> list[bytes]:
    """The documented duplicate key (keys.npy of a shard): BLAKE2b-128 of each row's bytes."""
    n = len(rows)
    if not n:
        return []
    view = memoryview(np.ascontiguousarray(rows)).cast("B")
    width = len(view) // n
    blake2b = hashlib.blake2b
    return [blake2b(view[i * width : (i + 1) * width], digest_size=16).digest() for i in range(n)]


_MULTIPLIERS: dict[int, np.ndarray] = {}
_KEY_BLOCK = 2048  # rows widened to 64 bits at a time


def multilinear_keys(rows: np.ndarray) -> list[bytes]:
    """A 128-bit key per row from two multilinear hashes mod 2^64 of its 32-bit words, with fixed
    random odd 64-bit multipliers.

    Why not BLAKE2b everywhere: one matrix product over the rows is several times faster than a
    BLAKE2b call per row, which was a fifth of the compiled prep's time. Why 32-bit words: with
    64-bit words a change in a word's top byte moves a hash by (delta * m) << 56, only 8 bits
    of it, so rows differing there collided (4 pairs in 2,722 rows of test_dataset_format); a
    32-bit word's change moves it by at least 40 random bits. A difference in one word never
    cancels (odd multipliers). Used only for the in-memory duplicate check of a local prep;
    keys that are written (shards) stay BLAKE2b.
    """
    n = len(rows)
    if not n:
        return []
    rows = np.ascontiguousarray(rows.reshape(n, -1), dtype=np.uint8)
    pad = (-rows.shape[1]) % 4
    if pad:
        rows = np.pad(rows, ((0, 0), (0, pad)))
    words = rows.view("<u4")
    k = words.shape[1]
    if k not in _MULTIPLIERS:
        _MULTIPLIERS[k] = _splitmix64(0x7A11C1E5 + k, 2 * k).reshape(k, 2) | np.uint64(1)  # odd
    out = np.empty((n, 2), np.uint64)
    wide = np.empty((min(n, _KEY_BLOCK), k), np.uint64)  # one buffer, refilled: no page faults per call
    for start in range(0, n, _KEY_BLOCK):
        block = words[start : start + _KEY_BLOCK]
        np.copyto(wide[: len(block)], block)
        np.matmul(wide[: len(block)], _MULTIPLIERS[k], out=out[start : start + len(block)])
    return out.view("V16").ravel().tolist()


def _splitmix64(seed: int, n: int) -> np.ndarray:
    """n pseudo-random 64-bit words (SplitMix64): fixed multipliers without loading numpy.random,
    which costs a small prep 10 ms of start-up."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _arrow(values, kind: pa.DataType) -> pa.Array:
    """A column as an Arrow array built from its buffers: pa.array() imports pandas on its first
    call, about 0.3 s of a small prep's start-up. Strings and nulls too, when `kind` is a string."""
    if kind == pa.string():
        return _arrow_strings(values.tolist() if isinstance(values, np.ndarray) else list(values))
    values = np.asarray(values)
    dtype = _NUMPY_OF.get(kind)
    if values.dtype.kind not in "iuf" or dtype is None:  # None among numbers, or another type: Arrow's own
        return pa.array(values.tolist(), type=kind)
    # in the column's own type: no Arrow cast (which would load pyarrow.compute: 80 ms of start-up)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(np.ascontiguousarray(values, dtype))])


# Strings built from buffers per process before Arrow's own conversion takes over: that one is
# 0.11 us a string faster but imports pandas (0.4-0.5 s), which pays back after about 4.6 M strings
# (measured 2026-11-30: 0.25 against 0.14 us a string; a 1.2 M-packet prep paid 0.43 s for it).
_OWN_STRINGS_UP_TO = 5_000_000
_own_strings = [0]  # built so far in this process
_NUMPY_OF = {pa.int64(): np.int64, pa.int32(): np.int32, pa.float64(): np.float64, pa.float32(): np.float32}


def _arrow_strings(values: list) -> pa.Array:
    """str (or anything, by str()) and None as an Arrow string array; None is null.

    Built from buffers (no pandas import) until the process has built `_OWN_STRINGS_UP_TO` of
    them or pandas is loaded anyway; then by Arrow's own conversion, faster per string."""
    if _own_strings[0] > _OWN_STRINGS_UP_TO or "pandas" in sys.modules:
        return pa.array(values, type=pa.string())
    _own_strings[0] += len(values)
    texts = ["" if v is None else v if type(v) is str else str(v) for v in values]
    sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    data = "".join(texts).encode()
    if len(data) != int(sizes.sum()):  # not all ASCII (addresses and names mostly are): bytes per string
        encoded = [t.encode() for t in texts]
        sizes, data = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), b"".join(encoded)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] >= 2**31:  # more than int32 offsets address: Arrow's own conversion copes
        return pa.array(values, type=pa.string())
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    nulls = len(values) - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
                                 null_count=nulls)


class _ClosedTable:
    def close(self) -> None:
        pass


def per_class_keep(labels, limit: int, seed: int = 0) -> np.ndarray:
    """Which rows `--max-per-class` keeps: per label, a seeded random `limit` of them (bool mask).

    One function for the local writer and the distributed merge, so both choose the same rows.
    """
    labels = np.array(["\0" if x is None else x for x in labels], dtype=object)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) > limit:
            rows = rng.choice(rows, size=limit, replace=False)
        keep[rows] = True
    return keep


# -- where a dataset goes: trafficlens deletes only what it wrote ----------------------------------
def output_paths(out_dir: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """(dataset directory, its `.partial`) for a new dataset at `out_dir`, checked before any work.

    An existing `out_dir` is an error without `overwrite`, and with it unless it is a dataset
    (or an empty directory); an existing `.partial` that trafficlens did not make is an error.
    """
    text = os.fspath(out_dir)
    if not text.strip():
        raise DatasetError("-o is empty: name the dataset directory to create")
    out = Path(text)
    if out.name in ("", ".."):  # ".", "ds/..": the folder itself
        out = Path(os.path.abspath(text))
        if not out.name:
            raise DatasetError(f"{text}: cannot be a dataset directory; name a new folder")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    if out.is_symlink() or out.exists():
        if not overwrite:
            raise DatasetError(f"{out}: already exists (choose another -o or pass --overwrite)")
        if not _replaceable(out):
            what = "a file" if out.is_file() and not out.is_symlink() else "a directory" if out.is_dir() else "there"
            raise DatasetError(f"{out}: is {what} but not a trafficlens dataset; --overwrite replaces only datasets "
                               "(remove it yourself or choose another -o)")
    if (partial.is_symlink() or partial.exists()) and not _replaceable(partial):
        raise DatasetError(f"{partial}: is in the way and was not left by trafficlens prep "
                           "(remove it yourself or choose another -o)")
    return out, partial


def _replaceable(path: Path) -> bool:
    """Whether trafficlens wrote the directory `path` (a dataset's manifest, or the partial marker),
    or it is empty: only such directories are ever deleted."""
    if path.is_symlink() or not path.is_dir():
        return False
    if (path / PARTIAL_MARKER).is_file():
        return True
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return not any(path.iterdir())
    except OSError:
        return False


def start_partial(out: Path, partial: Path) -> None:
    """A fresh `partial` directory holding the marker (an earlier run's is removed: it is ours)."""
    if partial.is_symlink() or partial.exists():
        if not _replaceable(partial):  # checked by output_paths; checked again just before deleting
            raise DatasetError(f"{partial}: is in the way and was not left by trafficlens prep")
        shutil.rmtree(partial)
    try:
        partial.mkdir(parents=True)
        (partial / PARTIAL_MARKER).write_text("an unfinished dataset of trafficlens prep; safe to delete\n")
    except OSError as exc:
        raise DatasetError(f"{out}: cannot create the dataset there ({exc.strerror or exc})") from None


def publish(partial: Path, out: Path) -> None:
    """Move a finished `partial` into place, replacing a dataset at `out`."""
    (partial / PARTIAL_MARKER).unlink(missing_ok=True)
    if out.is_symlink() or out.exists():
        if not _replaceable(out):  # appeared since output_paths checked it
            raise DatasetError(f"{out}: is not a trafficlens dataset; not replaced (the new one is in {partial})")
        shutil.rmtree(out)
    os.replace(partial, out)


def remove_partial(partial: Path) -> None:
    """Delete an unfinished dataset, if it is ours."""
    if _replaceable(partial):
        shutil.rmtree(partial, ignore_errors=True)


class DatasetWriter:
    """Append sessions (metadata + tensors) to a new dataset directory.

    >>> with DatasetWriter("ds/x", config, stats_names=names) as w:
    ...     w.add(meta, image, packets, sequence, stats)
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        config: dict[str, Any],
        *,
        image_bytes: int = 784,
        packets: int = 6,
        packet_bytes: int = 96,
        sequence_length: int = 32,
        stats_names: list[str] | tuple[str, ...] = (),
        extra_columns: tuple[str, ...] = (),
        deduplicate: bool = True,
        overwrite: bool = False,
        record_keys: bool = False,
    ):
        self.out_dir, self.partial = output_paths(out_dir, overwrite)
        self.config = dict(config)
        self.stats_names = list(stats_names)
        self.extra_columns = tuple(extra_columns)
        self.deduplicate = deduplicate
        self.shapes = {
            "image": (int(image_bytes),),
            "packets": (int(packets), int(packet_bytes)),
            "sequence": (int(sequence_length), 2),
            "stats": (len(self.stats_names),),
        }
        self.n = 0
        self.classes: dict[str, int] = {}
        self.duplicates = 0
        self.duplicate_label_conflicts = 0
        self.sampled_out = 0
        self._labels: list[str | None] = []
        self._seen: dict[bytes, str | None] = {}
        self._rows: list[dict[str, Any]] = []
        self._blocks: dict[str, list[np.ndarray]] = {name: [] for name in TENSORS}
        self._chunks: list[pa.Table] = []  # table rows of add_batch (and of add before one), in order
        self._pending_batched = 0
        self._opened = False
        # Shards of a distributed prep keep each row's key (keys.npy) and the key and label of
        # every duplicate they dropped, so the merge can deduplicate across shards exactly.
        self.record_keys = record_keys and deduplicate
        self.dropped_keys: list[tuple[bytes, str | None]] = []
        self._keys: list[bytes] = []
        self._row_keys = blake2b_keys if self.record_keys else multilinear_keys

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> "DatasetWriter":
        start_partial(self.out_dir, self.partial)
        self._npy = {
            name: NpyAppender(self.partial / fname, dtype, self.shapes[name])
            for name, (fname, dtype) in TENSORS.items()
        }
        self._schema = session_schema(self.extra_columns)
        self._table = pq.ParquetWriter(self.partial / TABLE, self._schema, compression="zstd")
        if self.record_keys:
            self._npy["keys"] = NpyAppender(self.partial / KEYS, "uint8", (16,))
        self._opened = True
        return self

    def __enter__(self) -> "DatasetWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def abort(self) -> None:
        """Close and delete the partial directory."""
        if self._opened:
            for appender in self._npy.values():
                appender.close()
            self._table.close()
            self._opened = False
        remove_partial(self.partial)

    # -- rows --------------------------------------------------------------------------------
    def add(
        self,
        meta: dict[str, Any],
        image: np.ndarray,
        packets: np.ndarray,
        sequence: np.ndarray,
        stats: np.ndarray,
    ) -> bool:
        """Append one session; returns False (and counts it) when it duplicates an earlier one.

        Duplicates are sessions whose model inputs (`image` and `packets`) are byte-identical;
        an identical pair under another label is also counted as a label conflict.
        """
        label = meta.get("label")
        if self.deduplicate:
            key = self._row_keys(np.concatenate([image.reshape(-1), packets.reshape(-1)]).reshape(1, -1))[0]
            if key in self._seen:
                self.duplicates += 1
                if self._seen[key] != label:
                    self.duplicate_label_conflicts += 1
                if self.record_keys:
                    self.dropped_keys.append((key, label))
                return False
            self._seen[key] = label
            if self.record_keys:
                self._keys.append(key)
        row = dict(meta)
        row["id"] = self.n
        self._labels.append(label)
        row["start_time"] = row["ts_start"]
        self._rows.append(row)
        for name, value in (("image", image), ("packets", packets), ("sequence", sequence), ("stats", stats)):
            self._blocks[name].append(value)
        self.n += 1
        key_label = "<unlabeled>" if label is None else str(label)
        self.classes[key_label] = self.classes.get(key_label, 0) + 1
        if len(self._rows) >= _BLOCK:
            self._flush()
        return True

    def add_batch(self, batch) -> int:
        """`add` for many sessions at once (a `tensors.ExampleBatch`), in order; returns the rows kept.

        The same duplicate rule and counts as `add`; metadata, sequences and statistics are
        built only for the rows kept.
        """
        n = len(batch)
        image, packets, labels = batch.image, batch.packets, batch.labels
        keep = np.ones(n, dtype=bool)
        if self.deduplicate and n:
            both = getattr(batch, "both", None)  # the row of image + packets bytes that `add` keys on
            if both is None or not both.flags.c_contiguous:
                both = np.concatenate([image.reshape(n, -1), packets.reshape(n, -1)], axis=1)
            keys = self._row_keys(both)
            seen = self._seen
            get = seen.get
            missing = object()
            for i, key in enumerate(keys):
                label = labels[i]
                first = get(key, missing)
                if first is missing:
                    seen[key] = label
                    if self.record_keys:
                        self._keys.append(key)
                    continue
                keep[i] = False
                self.duplicates += 1
                if first != label:
                    self.duplicate_label_conflicts += 1
                if self.record_keys:
                    self.dropped_keys.append((key, label))
        idx = np.flatnonzero(keep)
        k = len(idx)
        if not k:
            return 0
        columns, sequence, stats = batch.rows(idx)
        self._rows_to_chunk()
        table = {}
        for field in self._schema:
            name = field.name
            if name == "id":
                table[name] = _arrow(np.arange(self.n, self.n + k, dtype=np.int64), field.type)
            else:
                value = columns.get("ts_start" if name == "start_time" else name)
                table[name] = pa.nulls(k, field.type) if value is None else _arrow(value, field.type)
        self._chunks.append(pa.table(table, schema=self._schema))
        kept_labels = [labels[i] for i in idx]
        self._labels.extend(kept_labels)
        for name, value in (("image", image[idx]), ("packets", packets[idx]), ("sequence", sequence), ("stats", stats)):
            self._blocks[name].append(value)
        self.n += k
        for label in kept_labels:
            key_label = "<unlabeled>" if label is None else str(label)
            self.classes[key_label] = self.classes.get(key_label, 0) + 1
        self._pending_batched += k
        if self._pending_batched >= _BLOCK:
            self._flush()
        return k

    def _rows_to_chunk(self) -> None:
        """Rows added one by one so far become one table chunk (keeps the order of add/add_batch)."""
        if self._rows:
            columns = {field.name: _arrow([row.get(field.name) for row in self._rows], field.type)
                       for field in self._schema}
            self._chunks.append(pa.table(columns, schema=self._schema))
            self._pending_batched += len(self._rows)
            self._rows.clear()

    def _flush(self) -> None:
        if not self._rows and not self._chunks:
            return
        for name, blocks in self._blocks.items():
            # `add` queues single rows, `add_batch` blocks of rows
            rank = len(self.shapes[name]) + 1
            self._npy[name].append(np.concatenate([b if b.ndim == rank else b[None] for b in blocks]))
            blocks.clear()
        if self._keys:
            self._npy["keys"].append(np.frombuffer(b"".join(self._keys), dtype=np.uint8).reshape(-1, 16))
            self._keys.clear()
        self._rows_to_chunk()
        if self._chunks:  # one row group per flush, however the rows came
            self._table.write_table(pa.concat_tables(self._chunks) if len(self._chunks) > 1 else self._chunks[0])
        self._chunks.clear()
        self._pending_batched = 0

    def limit_per_class(self, limit: int, seed: int = 0) -> None:
        """Keep at most `limit` sessions per label, a seeded random choice, rewriting the files.

        Rows are copied in blocks from the memory-mapped partial files, so memory stays bounded.
        """
        self._flush()
        keep = per_class_keep(self._labels, limit, seed)
        if keep.all():
            return
        chosen = np.flatnonzero(keep)
        for name, (fname, dtype) in TENSORS.items():
            self._npy[name].close()
            source = self.partial / fname
            staged = source.with_suffix(".sub")
            old = np.load(source, mmap_mode="r")
            appender = NpyAppender(staged, dtype, self.shapes[name])
            for start in range(0, len(chosen), 65536):
                appender.append(old[chosen[start : start + 65536]])
            appender.close()
            del old
            os.replace(staged, source)
        self._table.close()  # appenders above are closed too; their close() is idempotent
        table = pq.read_table(self.partial / TABLE).take(chosen)
        table = table.set_column(0, "id", pa.array(np.arange(len(chosen), dtype=np.int64)))
        pq.write_table(table, self.partial / TABLE, compression="zstd")
        self._table = _ClosedTable()
        self.sampled_out = self.n - len(chosen)
        self.n = len(chosen)
        self._labels = [self._labels[i] for i in chosen]
        self.classes = {}
        for label in self._labels:
            key = "<unlabeled>" if label is None else str(label)
            self.classes[key] = self.classes.get(key, 0) + 1

    # -- finish ------------------------------------------------------------------------------
    def finish(self, **manifest_extra: Any) -> Path:
        """Flush, write manifest.json and move the dataset into place. Returns its path."""
        self._flush()
        for appender in self._npy.values():
            appender.close()
        self._table.close()
        self._opened = False
        side = int(round(self.shapes["image"][0] ** 0.5))
        tensors = {
            name: {"file": fname, "dtype": dtype, "shape": list(self.shapes[name])}
            for name, (fname, dtype) in TENSORS.items()
        }
        tensors["image"]["square"] = side if side * side == self.shapes["image"][0] else None
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "trafficlens_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": self.config,
            "n_sessions": self.n,
            "classes": dict(sorted(self.classes.items())),
            "duplicates": {
                "dropped": self.duplicates,
                "conflicting_labels": self.duplicate_label_conflicts,
            },
            "tensors": tensors,
            "stats": {"names": self.stats_names},
            "table": {"file": TABLE, "extra_columns": list(self.extra_columns)},
        }
        manifest.update(manifest_extra)
        with open(self.partial / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=2)
        publish(self.partial, self.out_dir)
        return self.out_dir

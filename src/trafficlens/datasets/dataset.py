"""Open a dataset directory written by `trafficlens prep` (docs/dataset-format.md).

A dataset is one directory (format version 1) or a set of shards, each a version-1 directory of
its own, listed by a top-level manifest (version 2, written by `prep --engine dask`). Both read
the same way: `table` is the concatenated session table and `tensor()` an array-like that
reads rows from the shards' memory maps on demand.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.datasets.schema import (
    FORMAT,
    MANIFEST,
    PARTIAL_SUFFIX,
    READABLE_VERSIONS,
    TABLE,
    TENSORS,
)
from trafficlens.errors import DatasetError


class Dataset:
    """A prepared dataset: the session table plus memory-mapped tensors.

    >>> ds = Dataset.open("ds/iot")
    >>> ds.tensor("image").shape, ds.labels[:3]
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Dataset":
        """The dataset directory `path` (what `prep -o` wrote), checked: its manifest, format
        version and every tensor file's size; the table and tensors are read when first used.

        >>> ds = Dataset.open("ds/iot")
        >>> len(ds), ds.classes[:2], ds.tensor("image").shape
        (1680, ['Aria', 'D-LinkCam'], (1680, 784))
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            if path.with_name(path.name + PARTIAL_SUFFIX).exists():
                raise DatasetError(f"{path}: incomplete dataset (an interrupted prep left {path.name}{PARTIAL_SUFFIX}); run prep again")
            if not path.exists():
                raise DatasetError(f"{path}: no such dataset directory")
            raise DatasetError(f"{path}: not a trafficlens dataset (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{manifest_path}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path}: not a trafficlens dataset manifest")
        version = manifest.get("format_version")
        if version not in READABLE_VERSIONS:
            raise DatasetError(
                f"{path}: dataset format version {version}, this trafficlens reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}; re-run prep"
            )
        try:
            rows = int(manifest["n_sessions"])
            shapes = {name: tuple(int(n) for n in manifest["tensors"][name]["shape"]) for name in TENSORS}
            parts = [(path / shard["path"], int(shard["n_sessions"])) for shard in manifest["shards"]] \
                if "shards" in manifest else [(path, rows)]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{manifest_path}: incomplete manifest ({type(exc).__name__}: {exc}); re-run prep") from None
        if sum(n for _, n in parts) != rows:
            raise DatasetError(f"{path}: the shards hold {sum(n for _, n in parts)} sessions, the manifest says {rows}")
        for where, n in parts:
            if where != path and not (where / MANIFEST).is_file():
                raise DatasetError(f"{path}: shard {where.relative_to(path)} is missing")
            _check_files(where, n, shapes)
        return cls(path, manifest)

    def __len__(self) -> int:
        return int(self.manifest["n_sessions"])

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, sessions={len(self)}, classes={len(self.manifest['classes'])})"

    @property
    def config(self) -> dict[str, Any]:
        """The prep settings (layer, mask, sizes, ...) that produced the tensors."""
        return self.manifest["config"]

    @property
    def sharded(self) -> bool:
        """Whether the rows lie in shards (`prep --engine dask`) rather than one directory."""
        return "shards" in self.manifest

    @property
    def shards(self) -> list[Path]:
        """The directories holding the rows, in row order (the dataset itself when not sharded)."""
        if not self.sharded:
            return [self.path]
        return [self.path / shard["path"] for shard in self.manifest["shards"]]

    @cached_property
    def shard_offsets(self) -> np.ndarray:
        """First row of each shard, plus the total: shard i holds rows offsets[i]:offsets[i+1]."""
        if not self.sharded:
            return np.array([0, len(self)], dtype=np.int64)
        sizes = [int(shard["n_sessions"]) for shard in self.manifest["shards"]]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @cached_property
    def table(self):
        """The session table as a `pyarrow.Table` (shards concatenated; `id` is the global row)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        def read(directory: Path):
            try:
                return pq.read_table(directory / TABLE)
            except (pa.ArrowException, OSError) as exc:
                raise DatasetError(f"{directory / TABLE}: unreadable ({exc}); re-run prep") from None

        if not self.sharded:
            return read(self.path)
        if not self.shards:
            from trafficlens.datasets.schema import session_schema

            extra = tuple(self.manifest.get("table", {}).get("extra_columns", ()))
            return session_schema(extra).empty_table()
        table = pa.concat_tables([read(shard) for shard in self.shards])
        if table.num_rows != len(self):
            raise DatasetError(f"{self.path}: shard tables hold {table.num_rows} rows, manifest says {len(self)}")
        return table.set_column(0, "id", pa.array(np.arange(table.num_rows, dtype=np.int64)))

    def column(self, name: str) -> np.ndarray:
        """One column of the session table as a NumPy array (`ds.column("label")`)."""
        if name not in self.table.column_names:
            raise DatasetError(f"{self.path}: no column {name!r} (have {', '.join(self.table.column_names)})")
        return self.table.column(name).to_numpy(zero_copy_only=False)

    @cached_property
    def labels(self) -> np.ndarray:
        """Label per session (object array; None where unlabeled)."""
        return self.column("label")

    @property
    def classes(self) -> list[str]:
        """The class names, sorted (unlabeled sessions kept with --unlabeled keep are not a class)."""
        return sorted(k for k in self.manifest["classes"] if k != "<unlabeled>")

    @property
    def image_side(self) -> int | None:
        """The side of the square `image` tensor (28 for 784 bytes); None when not square."""
        return self.manifest["tensors"]["image"].get("square")

    @property
    def stats_names(self) -> list[str]:
        """The names of the `stats` tensor's columns, in order."""
        return list(self.manifest["stats"]["names"])

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as a read-only memory map: `image`, `packets`, `sequence` or `stats`."""
        if name not in TENSORS:
            raise DatasetError(f"unknown tensor {name!r}; choose from {', '.join(TENSORS)}")
        fname, dtype = TENSORS[name]
        if not self.sharded:
            array = np.load(self.path / fname, mmap_mode="r")
            if array.shape[0] != len(self):
                raise DatasetError(f"{self.path}: {fname} has {array.shape[0]} rows, manifest says {len(self)}")
            return array
        cache = self.__dict__.setdefault("_sharded_tensors", {})  # opening every shard's map once is enough
        if name in cache:
            return cache[name]
        parts = []
        for shard, start, stop in zip(self.shards, self.shard_offsets[:-1], self.shard_offsets[1:]):
            array = np.load(shard / fname, mmap_mode="r")
            if array.shape[0] != stop - start:
                raise DatasetError(f"{shard}: {fname} has {array.shape[0]} rows, the dataset manifest says {stop - start}")
            parts.append(array)
        row_shape = tuple(self.manifest["tensors"][name]["shape"])
        cache[name] = ShardedTensor(parts, np.dtype(dtype), row_shape)
        return cache[name]


def _check_files(path: Path, rows: int, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every tensor and the table of one directory are there, readable, and hold `rows` rows of
    the manifest's shapes: checked from the .npy headers, file sizes and the Parquet footer,
    without reading the data, so that a damaged dataset is refused at open, in one line."""
    for name, (fname, dtype) in TENSORS.items():
        _check_npy(path / fname, np.dtype(dtype), (rows, *shapes[name]))
    table = path / TABLE
    if not table.is_file():
        raise DatasetError(f"{path}: missing {TABLE}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        found = pq.read_metadata(table).num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{table}: unreadable ({exc}); re-run prep") from None
    if found != rows:
        raise DatasetError(f"{table}: {found} rows, the manifest says {rows}; re-run prep")


def _check_npy(file: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if not file.is_file():
        raise DatasetError(f"{file.parent}: missing {file.name}")
    fmt = np.lib.format
    try:
        with open(file, "rb") as fh:
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            found, fortran, found_dtype = read_header(fh)
            data_start, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except Exception as exc:  # NumPy's header parser fails in many ways (ValueError, SyntaxError, TokenError...)
        raise DatasetError(f"{file}: not a readable .npy file ({exc}); re-run prep") from None
    if found_dtype != dtype or fortran or tuple(found) != shape:
        raise DatasetError(f"{file}: holds {'x'.join(map(str, found))} {found_dtype} values, the manifest says "
                           f"{'x'.join(map(str, shape))} {dtype}; re-run prep")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise DatasetError(f"{file}: {size} bytes where its header promises {expected} (cut short or damaged); re-run prep")


class ShardedTensor:
    """Rows of one tensor spread over shards, indexed like a NumPy array along the first axis.

    Indexing (an int, a slice, an integer or boolean array, optionally followed by indices of
    the other axes) reads only the rows asked for, from each shard's memory map, and returns a
    NumPy array in the order asked. Training and prediction index batches of rows, so a
    dataset larger than memory streams through.
    """

    def __init__(self, parts: list[np.ndarray], dtype: np.dtype, row_shape: tuple[int, ...]):
        self.parts = parts
        self.dtype = dtype
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *row_shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        """Elements in all (NumPy's `size`)."""
        return int(np.prod(self.shape))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedTensor(shape={self.shape}, dtype={self.dtype}, shards={len(self.parts)})"

    def __getitem__(self, key):
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0] if key else slice(None)), key[1:]
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            s = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.parts[s][(i - self.offsets[s], *rest)]
        if isinstance(key, slice):
            rows = np.arange(*key.indices(n), dtype=np.int64)
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                if rows.shape != (n,):
                    raise IndexError(f"boolean index of shape {rows.shape} for {n} rows")
                rows = np.flatnonzero(rows)
            elif rows.dtype.kind not in "iu":
                raise IndexError(f"rows must be integers, got {rows.dtype}")
            rows = rows.astype(np.int64).ravel()
            rows = np.where(rows < 0, rows + n, rows)
            if len(rows) and (rows.min() < 0 or rows.max() >= n):
                raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            local = rows[where] - self.offsets[s]
            if len(local) > 1 and np.all(np.diff(local) == 1):
                out[where] = self.parts[s][local[0] : local[-1] + 1]  # a contiguous run: one read
            else:
                out[where] = self.parts[s][local]
        return out[(slice(None), *rest)] if rest else out

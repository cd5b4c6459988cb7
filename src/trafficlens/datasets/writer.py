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
    PARTIAL_SUFFIX,
    TABLE,
    TENSORS,
    session_schema,
)
from trafficlens.errors import DatasetError

_BLOCK = 2048


class _ClosedTable:
    def close(self) -> None:
        pass


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
    ):
        self.out_dir = Path(out_dir)
        self.partial = self.out_dir.with_name(self.out_dir.name + PARTIAL_SUFFIX)
        if self.out_dir.exists() and not overwrite:
            raise DatasetError(f"{self.out_dir}: already exists (choose another -o or pass --overwrite)")
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
        self._opened = False

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> "DatasetWriter":
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self._npy = {
            name: NpyAppender(self.partial / fname, dtype, self.shapes[name])
            for name, (fname, dtype) in TENSORS.items()
        }
        self._schema = session_schema(self.extra_columns)
        self._table = pq.ParquetWriter(self.partial / TABLE, self._schema, compression="zstd")
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
        shutil.rmtree(self.partial, ignore_errors=True)

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
            digest = hashlib.blake2b(image.tobytes(), digest_size=16)
            digest.update(packets.tobytes())
            key = digest.digest()
            if key in self._seen:
                self.duplicates += 1
                if self._seen[key] != label:
                    self.duplicate_label_conflicts += 1
                return False
            self._seen[key] = label
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

    def _flush(self) -> None:
        if not self._rows:
            return
        for name, blocks in self._blocks.items():
            self._npy[name].append(np.stack(blocks))
            blocks.clear()
        columns = {field.name: [row.get(field.name) for row in self._rows] for field in self._schema}
        self._table.write_table(pa.table(columns, schema=self._schema))
        self._rows.clear()

    def limit_per_class(self, limit: int, seed: int = 0) -> None:
        """Keep at most `limit` sessions per label, a seeded random choice, rewriting the files.

        Rows are copied in blocks from the memory-mapped partial files, so memory stays bounded.
        """
        self._flush()
        labels = np.array(["\0" if x is None else x for x in self._labels], dtype=object)
        rng = np.random.default_rng(seed)
        keep = np.zeros(self.n, dtype=bool)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            if len(rows) > limit:
                rows = rng.choice(rows, size=limit, replace=False)
            keep[rows] = True
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
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.partial, self.out_dir)
        return self.out_dir

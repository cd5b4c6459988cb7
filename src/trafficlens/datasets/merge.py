"""Merge dataset shards into one sharded dataset: duplicates across shards, counts, manifest.

A distributed `prep` writes one shard (a complete version-1 dataset directory) per capture
file. The merge then makes the result equal to what one process writing every file in input
order would have written:

1. `plan_merge` (wherever the merge runs, the client of a Dask run) reads only the small
   things of each shard: the 16-byte duplicate key of each row (`keys.npy`), the `label`
   column, and the key and label of each duplicate the shard already dropped
   (`duplicates.parquet`). A row is kept when it is the first with its key in input order,
   exactly the local writer's rule, then `--max-per-class` is applied to the kept rows with the
   local writer's own function. The result is a list of row positions to drop per shard.
2. `compact_shard` runs where the shard lives (a Dask task): it rewrites only shards that lose
   rows, copying tensors block by block from their memory maps. Tensors never leave the
   storage the shards are on.
3. `write_manifest` writes the top-level manifest (format version 2) listing the shards, with
   counts summed over files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.datasets.schema import (
    FORMAT,
    FORMAT_VERSION_SHARDED,
    KEYS,
    MANIFEST,
    TABLE,
    TENSORS,
)
from trafficlens.errors import DatasetError

DUPLICATES = "duplicates.parquet"  # key and label of each duplicate a shard dropped itself
_KEY = np.dtype([("a", "<u8"), ("b", "<u8")])  # a 16-byte key as two integers, sortable
_COPY_ROWS = 65536


@dataclass
class MergePlan:
    """What the merge decided: rows to drop per shard and the counts of the whole dataset."""

    shards: list[Path]
    sizes: list[int]  # rows per shard before the merge
    drops: list[np.ndarray]  # shard-local row positions to drop, per shard
    duplicates: int  # all duplicate sessions dropped (inside shards and across them)
    conflicting_labels: int
    sampled_out: int  # rows dropped by --max-per-class
    labels: np.ndarray  # label per kept row, in final row order (object; None = unlabeled)

    @property
    def n_sessions(self) -> int:
        return len(self.labels)

    def kept(self, i: int) -> int:
        return self.sizes[i] - len(self.drops[i])

    def classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for label in self.labels:
            key = "<unlabeled>" if label is None else str(label)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def write_duplicates(path: Path, dropped: list[tuple[bytes, str | None]]) -> None:
    """Record the duplicates a shard dropped itself (key, label) for the merge's counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"key": pa.array([k for k, _ in dropped], pa.binary(16)),
                      "label": pa.array([label for _, label in dropped], pa.string())})
    pq.write_table(table, path / DUPLICATES)


def _keys(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.uint8).reshape(-1, 16).view(_KEY).ravel()


def plan_merge(shards: list[Path], deduplicate: bool = True, max_per_class: int | None = None) -> MergePlan:
    """Decide which rows survive, reading keys and labels only (never tensors)."""
    import pyarrow.parquet as pq

    from trafficlens.datasets.writer import per_class_keep

    sizes: list[int] = []
    labels: list[Any] = []
    keys: list[np.ndarray] = []
    inner_keys: list[np.ndarray] = []
    inner_labels: list[Any] = []
    for shard in shards:
        try:
            n = int(json.loads((shard / MANIFEST).read_text())["n_sessions"])
            labels.extend(pq.read_table(shard / TABLE, columns=["label"]).column("label").to_pylist())
            if deduplicate:
                k = np.load(shard / KEYS)
                if len(k) != n:
                    raise DatasetError(f"{shard}: {KEYS} has {len(k)} rows, its manifest says {n}")
                keys.append(k)
                if (shard / DUPLICATES).is_file():
                    dup = pq.read_table(shard / DUPLICATES)
                    inner_keys.append(np.frombuffer(b"".join(dup.column("key").to_pylist()), dtype=np.uint8))
                    inner_labels.extend(dup.column("label").to_pylist())
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{shard}: unreadable shard ({exc})") from None
        sizes.append(n)
    total = sum(sizes)
    label_array = np.empty(total, dtype=object)
    label_array[:] = labels
    keep = np.ones(total, dtype=bool)
    duplicates = len(inner_labels)
    conflicts = 0
    if deduplicate and total:
        unique, first, inverse = np.unique(_keys(np.concatenate(keys)), return_index=True, return_inverse=True)
        firsts = first[inverse.ravel()]
        keep = firsts == np.arange(total)  # the first row with its key, in input order, stays
        later = np.flatnonzero(~keep)
        duplicates += len(later)
        conflicts += int(np.count_nonzero(label_array[later] != label_array[firsts[later]]))
        if inner_labels:
            # A duplicate a shard dropped is compared, like locally, with the first row of its key
            # in the whole input, which may sit in an earlier shard under another label.
            where = np.searchsorted(unique, _keys(np.concatenate(inner_keys)))
            theirs = np.empty(len(inner_labels), dtype=object)
            theirs[:] = inner_labels
            conflicts += int(np.count_nonzero(theirs != label_array[first[where]]))
    sampled_out = 0
    if max_per_class:
        rows = np.flatnonzero(keep)
        chosen = per_class_keep(label_array[rows], max_per_class)
        sampled_out = int(np.count_nonzero(~chosen))
        keep[rows[~chosen]] = False
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    drops = [np.flatnonzero(~keep[offsets[i] : offsets[i + 1]]) for i in range(len(shards))]
    return MergePlan(list(shards), sizes, drops, duplicates, conflicts, sampled_out, label_array[keep])


def compact_shard(shard: str | os.PathLike, drop: np.ndarray) -> int:
    """Remove rows `drop` (shard-local positions) from a shard in place; returns rows left.

    Files are rewritten next to the originals and swapped in one by one; the dataset is only
    declared complete by the top-level manifest, written after every shard is compacted, so a
    crash here leaves an incomplete `.partial` run, never a wrong dataset.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trafficlens.datasets.npy_stream import NpyAppender

    shard = Path(shard)
    manifest = json.loads((shard / MANIFEST).read_text())
    n = int(manifest["n_sessions"])
    if len(drop) == 0:
        return n
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(drop, dtype=np.int64)] = False
    rows = np.flatnonzero(keep)
    files = [fname for fname, _ in TENSORS.values()] + ([KEYS] if (shard / KEYS).is_file() else [])
    for fname in files:
        source = shard / fname
        old = np.load(source, mmap_mode="r")
        staged = source.with_suffix(".compact")
        appender = NpyAppender(staged, old.dtype, old.shape[1:])
        for start in range(0, len(rows), _COPY_ROWS):
            appender.append(old[rows[start : start + _COPY_ROWS]])
        appender.close()
        del old
        os.replace(staged, source)
    table = pq.read_table(shard / TABLE).take(pa.array(rows))
    table = table.set_column(0, "id", pa.array(np.arange(len(rows), dtype=np.int64)))
    staged = shard / (TABLE + ".compact")
    pq.write_table(table, staged, compression="zstd")
    os.replace(staged, shard / TABLE)
    classes: dict[str, int] = {}
    for label in table.column("label").to_pylist():
        key = "<unlabeled>" if label is None else str(label)
        classes[key] = classes.get(key, 0) + 1
    manifest["merge"] = {"rows_before": n, "rows_dropped": int(n - len(rows))}
    manifest["n_sessions"] = len(rows)
    manifest["classes"] = dict(sorted(classes.items()))
    (shard / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return len(rows)


def write_manifest(root: Path, plan: MergePlan, template: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Write `root/manifest.json` for the merged shards; drop shards left empty. Returns it.

    `template` is one shard's manifest (config, tensors, stats, table are the same in all);
    `extra` holds the summed per-file counts (inputs, dropped, skipped_packets, errors, ...).
    """
    from trafficlens import __version__

    listed = []
    for i, shard in enumerate(plan.shards):
        if plan.kept(i) == 0:
            shutil.rmtree(shard, ignore_errors=True)  # a file without sessions leaves no shard
            continue
        listed.append({"path": shard.relative_to(root).as_posix(), "n_sessions": plan.kept(i),
                       "inputs": shard_inputs(shard)})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION_SHARDED,
        "trafficlens_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": template["config"],
        "n_sessions": plan.n_sessions,
        "classes": plan.classes(),
        "duplicates": {"dropped": plan.duplicates, "conflicting_labels": plan.conflicting_labels},
        "tensors": template["tensors"],
        "stats": template["stats"],
        "table": template["table"],
    }
    manifest.update(extra)
    manifest["shards"] = listed
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def shard_inputs(shard: Path) -> list[str]:
    """The capture file(s) a shard was made from (from its own manifest)."""
    try:
        return [item["path"] for item in json.loads((shard / MANIFEST).read_text()).get("inputs", [])]
    except (OSError, ValueError):
        return []

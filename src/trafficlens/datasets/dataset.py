"""Open a dataset directory written by `trafficlens prep` (docs/dataset-format.md)."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.datasets.schema import FORMAT, FORMAT_VERSION, MANIFEST, PARTIAL_SUFFIX, TABLE, TENSORS
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
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{path}: dataset format version {version}, this trafficlens reads {FORMAT_VERSION}; re-run prep"
            )
        for name, (fname, _) in TENSORS.items():
            if not (path / fname).is_file():
                raise DatasetError(f"{path}: missing {fname}")
        if not (path / TABLE).is_file():
            raise DatasetError(f"{path}: missing {TABLE}")
        return cls(path, manifest)

    def __len__(self) -> int:
        return int(self.manifest["n_sessions"])

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, sessions={len(self)}, classes={len(self.manifest['classes'])})"

    @property
    def config(self) -> dict[str, Any]:
        """The prep settings (layer, mask, sizes, ...) that produced the tensors."""
        return self.manifest["config"]

    @cached_property
    def table(self):
        """The session table as a `pyarrow.Table`."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path / TABLE)

    def column(self, name: str) -> np.ndarray:
        if name not in self.table.column_names:
            raise DatasetError(f"{self.path}: no column {name!r} (have {', '.join(self.table.column_names)})")
        return self.table.column(name).to_numpy(zero_copy_only=False)

    @cached_property
    def labels(self) -> np.ndarray:
        """Label per session (object array; None where unlabeled)."""
        return self.column("label")

    @property
    def classes(self) -> list[str]:
        return sorted(k for k in self.manifest["classes"] if k != "<unlabeled>")

    @property
    def image_side(self) -> int | None:
        return self.manifest["tensors"]["image"].get("square")

    @property
    def stats_names(self) -> list[str]:
        return list(self.manifest["stats"]["names"])

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as a read-only memory map: `image`, `packets`, `sequence` or `stats`."""
        if name not in TENSORS:
            raise DatasetError(f"unknown tensor {name!r}; choose from {', '.join(TENSORS)}")
        array = np.load(self.path / TENSORS[name][0], mmap_mode="r")
        if array.shape[0] != len(self):
            raise DatasetError(f"{self.path}: {TENSORS[name][0]} has {array.shape[0]} rows, manifest says {len(self)}")
        return array

"""Train / validation / test splits over the sessions of a dataset.

- `random_split`: stratified 60/20/20 by session (the papers' protocol). Sessions of one
  capture land on both sides, so it measures memorisation of captures as much as
  generalisation.
- `capture_split`: whole capture files go to one side (StratifiedGroupKFold: 5 folds, one for
  test; of the rest, 4 folds, one for validation), stratified by label where the groups allow.
  Classes recorded in too few captures can be missing from a side; `Split.missing` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trafficlens.errors import ConfigError


@dataclass
class Split:
    kind: str
    train: np.ndarray  # row indices into the dataset, sorted
    val: np.ndarray
    test: np.ndarray
    missing: dict[str, list[int]] = field(default_factory=dict)  # side -> class ids absent there

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def assignment(self, n: int) -> np.ndarray:
        """int8 per dataset row: 0 train, 1 val, 2 test, -1 unused."""
        out = np.full(n, -1, dtype=np.int8)
        out[self.train], out[self.val], out[self.test] = 0, 1, 2
        return out


def _missing(split: Split, y: np.ndarray, rows: np.ndarray) -> Split:
    present = set(np.unique(y).tolist())
    lookup = np.full(rows.max() + 1 if len(rows) else 0, -1)
    lookup[rows] = y
    for side in ("train", "val", "test"):
        idx = getattr(split, side)
        absent = sorted(present - set(np.unique(lookup[idx]).tolist()))
        if absent:
            split.missing[side] = absent
    return split


def random_split(rows: np.ndarray, y: np.ndarray, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> Split:
    """Per class: shuffle, then round(0.2 n) to test, round(0.2 n) to validation, rest to train."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(y):
        members = rows[y == c][rng.permutation(int((y == c).sum()))]
        n_test = int(round(fractions[2] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        test.append(members[:n_test])
        val.append(members[n_test:n_test + n_val])
        train.append(members[n_test + n_val:])
    split = Split("random", *(np.sort(np.concatenate(p)).astype(np.int64) for p in (train, val, test)))
    return _missing(split, y, rows)


def capture_split(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> Split:
    """Group by capture: about 60/20/20 of the sessions, no capture on two sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 5:
        raise ConfigError(f"--split capture needs at least 5 capture files, the dataset has {n_groups}; use --split random")
    outer = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    rest, test = next(outer.split(rows, y, groups))
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
    tr, va = next(inner.split(rest, y[rest], groups[rest]))
    split = Split("capture", *(np.sort(rows[i]).astype(np.int64) for i in (rest[tr], rest[va], test)))
    return _missing(split, y, rows)


def column_split(rows: np.ndarray, y: np.ndarray, column: np.ndarray) -> Split:
    """Use a `split` column of the session table (values train / val / test)."""
    column = np.asarray(column, dtype=object)
    parts = [rows[column == name] for name in ("train", "val", "test")]
    if not len(parts[0]) or not len(parts[1]):
        raise ConfigError("the dataset's split column needs 'train' and 'val' rows (and 'test' for metrics)")
    split = Split("column", *(np.sort(p).astype(np.int64) for p in parts))
    return _missing(split, y, rows)

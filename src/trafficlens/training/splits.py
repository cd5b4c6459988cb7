"""Train / validation / test splits over the sessions of a dataset.

- `random_split`: stratified 60/20/20 by session (the papers' protocol). Sessions of one
  capture land on both sides, so it measures memorisation of captures as much as
  generalisation.
- `capture_split`: whole capture files go to one side (StratifiedGroupKFold: 5 folds, one for
  test; of the rest, 4 folds, one for validation), stratified by label where the groups allow.
  Classes recorded in too few captures can be missing from a side; `Split.missing` says which.
- `time_split`: the earliest 60% of the sessions (by start time) train, the next 20% validate,
  the latest 20% test; sessions with equal start times stay on one side, so every training
  session starts strictly before every validation and test session.
- `packet-leak` (see `make_split` in run.py): the random split with cross-side deduplication
  turned off, the papers' error kept on purpose as a demonstration: identical tensors (copies
  of one flow's packets) sit on both sides and are counted, not removed.
- `kfold_splits`: k folds for cross-validation (Chen 2023 Algorithm 1, with groups).

`deduplicate` then removes, from the later side, sessions whose tensors are byte-identical to a
session on an earlier side (train < val < test), so identical tensors are never on two sides;
removing never moves a capture, so the capture split stays grouped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trafficlens.errors import ConfigError

SIDES = ("train", "val", "test")


@dataclass
class Split:
    kind: str
    train: np.ndarray  # row indices into the dataset, sorted
    val: np.ndarray
    test: np.ndarray
    missing: dict[str, list[int]] = field(default_factory=dict)  # side -> class ids absent there
    dedup: dict[str, Any] = field(default_factory=dict)  # what `deduplicate` found and removed

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
    split.missing = {}
    for side in SIDES:
        idx = getattr(split, side)
        absent = sorted(present - set(np.unique(lookup[idx]).tolist()))
        if absent:
            split.missing[side] = absent
    return split


def _sorted(*parts: np.ndarray) -> list[np.ndarray]:
    return [np.sort(np.asarray(p)).astype(np.int64) for p in parts]


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
    split = Split("random", *_sorted(*(np.concatenate(p) for p in (train, val, test))))
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
    split = Split("capture", *_sorted(rows[rest[tr]], rows[rest[va]], rows[test]))
    return _missing(split, y, rows)


def _tie_cut(times_sorted: np.ndarray, k: int) -> int:
    """First position >= k that does not separate two equal times."""
    if k <= 0 or k >= len(times_sorted):
        return min(max(k, 0), len(times_sorted))
    return int(np.searchsorted(times_sorted, times_sorted[k - 1], side="right"))


def time_split(rows: np.ndarray, y: np.ndarray, times: np.ndarray, fractions=(0.6, 0.2, 0.2)) -> Split:
    """Earliest sessions train, later ones validate, the latest test (no time shared by two sides)."""
    times = np.asarray(times, dtype=np.float64)
    if not np.isfinite(times).all():
        raise ConfigError("--split time needs a start time for every session; the dataset's start_time column has gaps")
    order = np.argsort(times, kind="stable")
    t = times[order]
    n = len(t)
    a = _tie_cut(t, int(round(fractions[0] * n)))
    b = max(_tie_cut(t, int(round((fractions[0] + fractions[1]) * n))), a)
    if a == 0 or b == a:
        raise ConfigError(f"--split time: the {n} sessions share too few distinct start times "
                          f"({len(np.unique(t))}) to give both a training and a validation side; use --split capture")
    split = Split("time", *_sorted(rows[order[:a]], rows[order[a:b]], rows[order[b:]]))
    return _missing(split, y, rows)


def column_split(rows: np.ndarray, y: np.ndarray, column: np.ndarray) -> Split:
    """Use a `split` column of the session table (values train / val / test)."""
    column = np.asarray(column, dtype=object)
    parts = [rows[column == name] for name in SIDES]
    if not len(parts[0]) or not len(parts[1]):
        raise ConfigError("the dataset's split column needs 'train' and 'val' rows (and 'test' for metrics)")
    split = Split("column", *_sorted(*parts))
    return _missing(split, y, rows)


def kfold_splits(rows: np.ndarray, y: np.ndarray, k: int, groups: np.ndarray | None = None, seed: int = 0,
                 kind: str = "capture") -> list[Split]:
    """k folds, each the test side once; of the other folds, a quarter (by group) validates.

    With `groups` (captures) the folds are StratifiedGroupKFold: no capture in two folds, nor on
    two sides of one fold; without, StratifiedKFold by session.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise ConfigError(f"--folds must be >= 2, got {k}")
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < 2 * k:
            raise ConfigError(f"{k} folds by capture need at least {2 * k} capture files (a test and a validation "
                              f"share per fold), the dataset has {n_groups}; use fewer --folds or --split random")
        outer, inner = StratifiedGroupKFold(k, shuffle=True, random_state=seed), StratifiedGroupKFold(4, shuffle=True, random_state=seed)
    else:
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        if smallest < k:
            raise ConfigError(f"{k} stratified folds need at least {k} sessions per class, the smallest class has {smallest}; "
                              "use fewer --folds or raise --min-class-sessions")
        outer, inner = StratifiedKFold(k, shuffle=True, random_state=seed), StratifiedKFold(4, shuffle=True, random_state=seed)
    folds = []
    for rest, test in outer.split(rows, y, groups):
        inner_groups = None if groups is None else groups[rest]
        try:
            tr, va = next(inner.split(rest, y[rest], inner_groups))
        except ValueError as exc:  # StratifiedKFold on classes smaller than 4 in one fold's rest
            raise ConfigError(f"fold validation split: {exc}") from None
        folds.append(_missing(Split(kind, *_sorted(rows[rest[tr]], rows[rest[va]], rows[test])), y, rows))
    return folds


def deduplicate(split: Split, rows: np.ndarray, y: np.ndarray, keys: np.ndarray, remove: bool = True) -> Split:
    """Keep identical tensors on one side only: the earliest of train, val, test.

    `keys[i]` is the identity of row `rows[i]`'s tensors (a digest; equal keys = identical
    tensors), `y[i]` its class. Records in `split.dedup`: `duplicate_rows` (rows identical to
    another row of the selection), `conflict_groups` / `conflict_rows` (identical tensors with
    more than one label), `cross_side` (later-side rows identical to an earlier-side row, per
    side), and `removed` (the same rows when `remove`; nothing when not, as `packet-leak` does).
    """
    rows = np.asarray(rows, dtype=np.int64)
    _, ids = np.unique(np.asarray(keys), return_inverse=True)
    ids = ids.reshape(-1)
    n_keys = int(ids.max()) + 1 if len(ids) else 0
    side = np.full(len(rows), 3, dtype=np.int64)  # 3: in no side
    lookup = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=np.int64)
    lookup[rows] = np.arange(len(rows))
    for s, name in enumerate(SIDES):
        side[lookup[getattr(split, name)]] = s
    first_side = np.full(n_keys, 3, dtype=np.int64)
    np.minimum.at(first_side, ids, side)
    leaked = (side < 3) & (side > first_side[ids])
    y = np.asarray(y)
    lo, hi = np.full(n_keys, np.iinfo(np.int64).max), np.full(n_keys, np.iinfo(np.int64).min)
    np.minimum.at(lo, ids, y)
    np.maximum.at(hi, ids, y)
    conflict_key = lo != hi
    cross = {name: int((leaked & (side == s)).sum()) for s, name in enumerate(SIDES) if s > 0}
    split.dedup = {
        "key": "image+packets",
        "duplicate_rows": int(len(rows) - n_keys),
        "conflict_groups": int(conflict_key.sum()),
        "conflict_rows": int(conflict_key[ids].sum()),
        "cross_side": cross,
        "removed": cross if remove else {name: 0 for name in cross},
    }
    if remove and leaked.any():
        drop = rows[leaked]
        split.val = split.val[~np.isin(split.val, drop)]
        split.test = split.test[~np.isin(split.test, drop)]
        _missing(split, y, rows)
    return split


def tensor_keys(ds, rows: np.ndarray, names: tuple[str, ...] = ("image", "packets"), chunk: int = 8192) -> np.ndarray:
    """A 16-byte digest per row of the named tensors (the identity prep deduplicates on), read in chunks."""
    import hashlib

    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows), dtype="S16")
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        blocks = [np.ascontiguousarray(ds.tensor(n)[part]).reshape(len(part), -1) for n in names]
        for i in range(len(part)):
            h = hashlib.blake2b(digest_size=16)
            for block in blocks:
                h.update(block[i].tobytes())
            out[start + i] = h.digest()
    return out

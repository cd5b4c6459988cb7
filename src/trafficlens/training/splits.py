"""Train / validation / test splits over the sessions of a dataset.

- `random_split`: stratified 60/20/20 by session (the papers' protocol). Sessions of one
  capture land on both sides, so it measures memorisation of captures as much as
  generalisation.
- `capture_split`: whole capture files go to one side (`assign_groups`: a random deal per
  seed, stratified by label where whole captures allow). Classes recorded in too few captures
  can be missing from a side (`Split.missing`) or judged on one test capture
  (`Split.coverage`); both are logged and recorded.
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
from typing import Any, Sequence

import numpy as np

from trafficlens.errors import ConfigError

SIDES = ("train", "val", "test")
# How every model of trafficlens uses the sides (train, baseline, compare, cv, audit): one protocol,
# so that two numbers side by side were produced alike. `n_fit` and `n_select` in metrics.json count
# the sessions of the first two steps.
PROTOCOL = ("fit on the training side; select on the validation side (deep models: the early-stopping epoch; "
            "baselines: the --tune grid point); score on the test side; nothing is refitted on training + validation")


@dataclass
class Split:
    kind: str
    train: np.ndarray  # row indices into the dataset, sorted
    val: np.ndarray
    test: np.ndarray
    missing: dict[str, list[int]] = field(default_factory=dict)  # side -> class ids absent there
    dedup: dict[str, Any] = field(default_factory=dict)  # what `deduplicate` found and removed
    coverage: dict[str, Any] = field(default_factory=dict)  # capture splits: see `group_coverage`

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


def assign_groups(counts: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Side (index into `fractions`) per group, drawn anew for every seed, stratified by class
    as far as whole groups allow.

    `counts` is (groups, classes): sessions of each class in each group. Groups are visited in
    a random order and each joins the side where it most reduces the squared relative error
    between the side's class counts and its target share (`fractions` of each class); ties are
    drawn at random. Unlike StratifiedGroupKFold, which sorts groups by the spread of their class
    distribution and so keeps the same test captures across seeds wherever captures are few or
    unequal, the order itself is random. Every side with a positive fraction gets a group.
    """
    counts = np.asarray(counts, dtype=np.float64)
    fractions = np.asarray(fractions, dtype=np.float64)
    n_groups = len(counts)
    active = np.flatnonzero(fractions > 0)
    if n_groups < len(active):
        raise ConfigError(f"{len(active)} sides need at least {len(active)} groups, got {n_groups}")
    target = np.maximum(fractions[:, None] * counts.sum(0)[None, :], 1e-9)  # (sides, classes)
    current = np.zeros_like(target)
    side = np.full(n_groups, -1, dtype=np.int64)
    for g in rng.permutation(n_groups):
        c = counts[g]
        before = ((current - target) / target) ** 2
        after = ((current + c - target) / target) ** 2
        delta = (after - before).sum(1)
        delta[fractions <= 0] = np.inf
        best = np.flatnonzero(delta <= delta.min() + 1e-12)
        s = int(rng.choice(best))
        side[g] = s
        current[s] += c
    for s in active:  # a side left empty takes the group whose move costs least
        if (side == s).any():
            continue
        donors = [d for d in active if (side == d).sum() > 1]
        cost = np.full(n_groups, np.inf)
        for g in np.flatnonzero(np.isin(side, donors)):
            d = side[g]
            moved = current.copy()
            moved[d] -= counts[g]
            moved[s] += counts[g]
            cost[g] = (((moved - target) / target) ** 2).sum()
        g = int(np.argmin(cost))
        current[side[g]] -= counts[g]
        current[s] += counts[g]
        side[g] = s
    return side


def group_counts(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of each row as 0..G-1, (G, classes) session counts)."""
    _, gid = np.unique(np.asarray(groups), return_inverse=True)
    gid = gid.reshape(-1)
    _, yid = np.unique(np.asarray(y), return_inverse=True)
    counts = np.zeros((int(gid.max()) + 1 if len(gid) else 0, int(yid.max()) + 1 if len(yid) else 0), dtype=np.int64)
    np.add.at(counts, (gid, yid.reshape(-1)), 1)
    return gid, counts


def capture_split(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0,
                  fractions=(0.6, 0.2, 0.2)) -> Split:
    """Group by capture: about 60/20/20 of every class's sessions, no capture on two sides."""
    gid, counts = group_counts(y, groups)
    if len(counts) < 3:
        raise ConfigError(f"--split capture needs at least 3 capture files (one per side), the dataset has "
                          f"{len(counts)}; use --split random")
    side = assign_groups(counts, fractions, np.random.default_rng(seed))[gid]
    split = Split("capture", *_sorted(rows[side == 0], rows[side == 1], rows[side == 2]))
    split.coverage = group_coverage(split, rows, y, groups)
    return _missing(split, y, rows)


def group_coverage(split: Split, rows: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Classes a capture split cannot judge well, by class id: those with a single test capture
    (their test score is one capture's) and those whose captures all fall on one side."""
    where = np.full(int(rows.max()) + 1 if len(rows) else 0, -1)
    for s, side in enumerate(SIDES):
        where[getattr(split, side)] = s
    side_of = where[rows]
    groups = np.asarray(groups)
    single, one_side = [], {}
    for c in np.unique(y).tolist():
        mine = y == c
        per_side = [len(np.unique(groups[mine & (side_of == s)])) for s in range(3)]
        used = [SIDES[s] for s in range(3) if per_side[s]]
        if len(used) == 1:
            one_side[int(c)] = used[0]
        elif per_side[2] == 1:
            single.append(int(c))
    return {"single_test_capture": single, "one_side": one_side}


def none_split(rows: np.ndarray, y: np.ndarray, seed: int = 0, val_fraction: float = 0.1) -> Split:
    """A deployment model's split: every session trains but a small stratified random slice,
    which only decides when to stop (early stopping); there is no test side, so no test score."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        members = rows[y == c][rng.permutation(int((y == c).sum()))]
        n_val = max(1, int(round(val_fraction * len(members)))) if len(members) >= 2 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    split = Split("none", *_sorted(np.concatenate(train), np.concatenate(val), np.zeros(0, dtype=np.int64)))
    return _missing(split, y, rows)


def coverage_warnings(split, classes: list[str]) -> list[str]:
    """Capture splits: classes judged on one test capture, or with every capture on one side."""
    single = [classes[i] for i in split.coverage.get("single_test_capture", [])]
    one_side = [f"{classes[int(i)]} ({side})" for i, side in split.coverage.get("one_side", {}).items()]
    out = []
    if single:
        out.append(f"{len(single)} classes have a single test capture (their test score is that capture's): "
                   + ", ".join(single))
    if one_side:
        out.append(f"{len(one_side)} classes have all their captures on one side: " + ", ".join(one_side))
    return out


def fit_rows(split: Split, y_of_row: np.ndarray, balance: str, seed: int) -> np.ndarray:
    """The training rows a model learns from: the training side, drawn down to the smallest
    class when `balance` is `undersample` (seeded; the same rows for every model of a seed)."""
    if balance != "undersample" or not len(split.train):
        return split.train
    rng = np.random.default_rng(seed)
    y = y_of_row[split.train]
    counts = np.bincount(y)
    smallest = counts[counts > 0].min()
    keep = [rng.choice(np.flatnonzero(y == c), size=smallest, replace=False) for c in np.flatnonzero(counts)]
    return split.train[np.sort(np.concatenate(keep))]


def labelled_fraction(rows: np.ndarray, y_of_row: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified, seeded `fraction` of `rows`, at least one per class present: the few-labels
    case (what a model learns from 1% or 10% of the training sessions)."""
    if fraction >= 1 or not len(rows):
        return rows
    rng = np.random.default_rng([seed, 1])  # not the stream that draws the split or undersampling
    y = y_of_row[rows]
    keep = [rng.choice(np.flatnonzero(y == c), size=max(1, int(round(fraction * np.sum(y == c)))), replace=False)
            for c in np.unique(y)]
    return rows[np.sort(np.concatenate(keep))]


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

    With `groups` (captures) whole captures are dealt to folds by `assign_groups` (random per
    seed, stratified where captures allow): no capture in two folds, nor on two sides of one
    fold. Without, StratifiedKFold by session.
    """
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise ConfigError(f"--folds must be >= 2, got {k}")
    folds = []
    if groups is not None:
        groups = np.asarray(groups)
        gid, counts = group_counts(y, groups)
        if len(counts) < 2 * k:
            raise ConfigError(f"{k} folds by capture need at least {2 * k} capture files (a test and a validation "
                              f"share per fold), the dataset has {len(counts)}; use fewer --folds or --split random")
        fold_of_group = assign_groups(counts, [1.0 / k] * k, np.random.default_rng(seed))
        for f in range(k):
            rest_groups = np.flatnonzero(fold_of_group != f)
            inner = assign_groups(counts[rest_groups], (0.75, 0.25), np.random.default_rng([seed, f]))
            side_of_group = np.full(len(counts), 2)
            side_of_group[rest_groups] = inner
            side = side_of_group[gid]
            split = Split(kind, *_sorted(rows[side == 0], rows[side == 1], rows[side == 2]))
            split.coverage = group_coverage(split, rows, y, groups)
            folds.append(_missing(split, y, rows))
        return folds
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    if smallest < k:
        raise ConfigError(f"{k} stratified folds need at least {k} sessions per class, the smallest class has {smallest}; "
                          "use fewer --folds or raise --min-class-sessions")
    outer, inner = StratifiedKFold(k, shuffle=True, random_state=seed), StratifiedKFold(4, shuffle=True, random_state=seed)
    for rest, test in outer.split(rows, y):
        try:
            tr, va = next(inner.split(rest, y[rest]))
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

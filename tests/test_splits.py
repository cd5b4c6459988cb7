"""Split protocols: no capture and no identical tensor on two sides (property-based), time order,
k folds, and the deduplication counts against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trafficlens.datasets import Dataset, DatasetWriter
from trafficlens.errors import ConfigError
from trafficlens.training.config import TrainConfig
from trafficlens.training.run import make_split
from trafficlens.training.selection import select_classes
from trafficlens.training.splits import capture_split, deduplicate, kfold_splits, random_split, time_split

SIDES = ("train", "val", "test")


def synthetic(seed: int, n: int, n_groups: int, n_classes: int, n_keys: int):
    """Rows (not contiguous), labels, captures (every one used) and tensor keys with many repeats."""
    rng = np.random.default_rng(seed)
    n_groups = min(n_groups, n)
    rows = np.sort(rng.choice(10 * n, size=n, replace=False))
    y = rng.integers(0, n_classes, n)
    y[:n_classes] = np.arange(n_classes)
    groups = rng.integers(0, n_groups, n)
    groups[:n_groups] = np.arange(n_groups)
    keys = rng.integers(0, n_keys, n)
    return rows, y, np.array([f"cap{g}.pcap" for g in groups]), keys


def side_sets(split, rows, values):
    at = dict(zip(rows.tolist(), values.tolist()))
    return [{at[r] for r in getattr(split, side).tolist()} for side in SIDES]


def assert_disjoint(sets):
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


SIZES = dict(seed=st.integers(0, 2**31 - 1), n=st.integers(30, 250), n_groups=st.integers(5, 40),
             n_classes=st.integers(2, 4), dup_share=st.floats(0.1, 1.0))


@settings(max_examples=60, deadline=None)
@given(**SIZES)
def test_capture_split_keeps_captures_and_identical_tensors_on_one_side(seed, n, n_groups, n_classes, dup_share):
    rows, y, groups, keys = synthetic(seed, n, n_groups, n_classes, max(2, int(dup_share * n)))
    before = capture_split(rows, y, groups, seed=seed % 7)
    sizes = before.sizes()
    s = deduplicate(capture_split(rows, y, groups, seed=seed % 7), rows, y, keys)
    assert_disjoint(side_sets(s, rows, groups))
    assert_disjoint(side_sets(s, rows, keys))
    assert np.array_equal(s.train, before.train)  # only later sides lose rows
    removed = sizes["val"] + sizes["test"] - len(s.val) - len(s.test)
    assert removed == sum(s.dedup["removed"].values()) == sum(s.dedup["cross_side"].values())
    assert set(s.val) | set(s.test) <= set(before.val) | set(before.test)


@settings(max_examples=60, deadline=None)
@given(**SIZES)
def test_random_split_dedup_and_packet_leak_counts(seed, n, n_groups, n_classes, dup_share):
    rows, y, _, keys = synthetic(seed, n, n_groups, n_classes, max(2, int(dup_share * n)))
    clean = deduplicate(random_split(rows, y, seed), rows, y, keys)
    assert_disjoint(side_sets(clean, rows, keys))
    leak = deduplicate(random_split(rows, y, seed), rows, y, keys, remove=False)
    assert leak.sizes() == random_split(rows, y, seed).sizes()  # nothing removed
    # brute force: later-side rows whose key sits on an earlier side
    sets = side_sets(leak, rows, keys)
    at = dict(zip(rows.tolist(), keys.tolist()))
    expect = {"val": sum(at[r] in sets[0] for r in leak.val.tolist()),
              "test": sum(at[r] in sets[0] | sets[1] for r in leak.test.tolist())}
    assert leak.dedup["cross_side"] == expect and clean.dedup["removed"] == expect
    assert leak.dedup["removed"] == {"val": 0, "test": 0}


def test_duplicate_and_conflict_counts():
    rows = np.arange(8)
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    keys = np.array([7, 7, 7, 3, 3, 9, 5, 6])  # key 7: labels 0,0,1 (conflict); 3: 1,0 (conflict); 9, 5, 6 unique
    s = random_split(rows, y, 0)
    d = deduplicate(s, rows, y, keys).dedup
    assert d["duplicate_rows"] == 3 and d["conflict_groups"] == 2 and d["conflict_rows"] == 5


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(10, 300), distinct=st.integers(5, 300))
def test_time_split_trains_on_the_past(seed, n, distinct):
    rng = np.random.default_rng(seed)
    times = rng.integers(0, distinct, n).astype(float) * 3.5 + 1.7e9  # many ties
    times[:5] = np.arange(5) * 3.5 + 1.7e9  # at least 5 distinct start times
    rows = np.arange(n) * 3
    y = rng.integers(0, 3, n)
    t_sorted, k1, k2 = np.sort(times), int(round(0.6 * n)), int(round(0.8 * n))
    if t_sorted[k1 - 1] == t_sorted[k2 - 1]:  # one start time spans the 60% and 80% marks: no validation side
        with pytest.raises(ConfigError, match="too few distinct start times"):
            time_split(rows, y, times)
        return
    s = time_split(rows, y, times)
    t = dict(zip(rows.tolist(), times.tolist()))
    train, val, test = ([t[r] for r in getattr(s, side).tolist()] for side in SIDES)
    assert len(train) and len(val)
    assert max(train) < min(val) and (not test or max(val) < min(test))
    assert len(train) + len(val) + len(test) == n and s.kind == "time"


def test_time_split_needs_distinct_times():
    with pytest.raises(ConfigError, match="too few distinct start times"):
        time_split(np.arange(20), np.zeros(20, dtype=int), np.ones(20))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(60, 250), n_groups=st.integers(12, 40), k=st.integers(2, 5))
def test_group_kfold_tests_every_session_once_and_never_shares_a_capture(seed, n, n_groups, k):
    rows, y, groups, _ = synthetic(seed, n, n_groups, 3, n)
    folds = kfold_splits(rows, y, k, groups, seed=seed % 5)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == rows.tolist()
    for f in folds:
        assert_disjoint(side_sets(f, rows, groups))
        assert len(f.train) + len(f.val) + len(f.test) == n
    test_captures = [side_sets(f, rows, groups)[2] for f in folds]
    assert sum(len(c) for c in test_captures) == len(set().union(*test_captures))


def test_kfold_refuses_too_few_captures():
    rows, y, groups, _ = synthetic(0, 40, 5, 2, 40)
    with pytest.raises(ConfigError, match="at least 8 capture files"):
        kfold_splits(rows, y, 4, groups)


# -- on a dataset, through make_split ----------------------------------------------------------------
def dataset_with_copies(path, per_class=40) -> Dataset:
    """Three classes over 5 captures each; every third session copies an earlier one's tensors,
    and a few copies carry another label (as set-up chatter does across IoT devices)."""
    rng = np.random.default_rng(1)
    made: list[tuple[np.ndarray, np.ndarray]] = []
    with DatasetWriter(path, {"layer": "all", "mask": "strict"}, image_bytes=16, packets=2, packet_bytes=8,
                       sequence_length=4, stats_names=["a"], deduplicate=False) as w:
        for i in range(per_class):
            for c, label in enumerate(("a", "b", "c")):
                if made and i % 3 == 2:
                    image, packets = made[rng.integers(len(made))]
                else:
                    image, packets = rng.integers(0, 256, 16, dtype=np.uint8), rng.integers(0, 256, (2, 8), dtype=np.uint8)
                    made.append((image, packets))
                meta = {"capture": f"{label}/{i % 5}.pcap", "src_ip": "x", "dst_ip": "y", "src_port": 0, "dst_port": 0,
                        "protocol": "TCP", "ts_start": 1000.0 + i, "ts_end": 1001.0 + i, "packets": 4, "bytes": 100,
                        "payload_bytes": 50, "packets_fwd": 2, "packets_bwd": 2, "label": label}
                w.add(meta, image, packets, np.zeros((4, 2), np.float32), np.zeros(1, np.float32))
    return Dataset.open(path)


@pytest.mark.parametrize("kind", ["random", "capture", "time"])
def test_make_split_never_puts_identical_tensors_on_two_sides(kind, tmp_path):
    ds = dataset_with_copies(tmp_path / "copies")
    classes, rows, y, _ = select_classes(ds.labels, 0)
    s = make_split(ds, rows, y, TrainConfig(split=kind, seed=0))
    image = np.asarray(ds.tensor("image"))
    sides = [{image[r].tobytes() for r in getattr(s, side)} for side in SIDES]
    assert_disjoint(sides)
    d = s.dedup
    assert d["duplicate_rows"] > 0 and d["conflict_rows"] > 0 and sum(d["removed"].values()) > 0
    if kind == "capture":
        assert_disjoint([set(ds.column("capture")[getattr(s, side)]) for side in SIDES])
    leak = make_split(ds, rows, y, TrainConfig(split="packet-leak", seed=0))
    assert leak.kind == "packet-leak" and sum(leak.dedup["cross_side"].values()) > 0
    assert sum(leak.dedup["removed"].values()) == 0 and leak.sizes() == random_split(rows, y, 0).sizes()


def test_select_classes_by_sessions_captures_and_exclusion():
    labels = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 6 + ["Unknown"] * 6 + [None], dtype=object)
    captures = np.array(["1", "2", "3"] * 2 + ["1"] * 6 + ["1", "2"] * 3 + ["1", "2", "3"] * 2 + ["1"])
    classes, rows, y, dropped = select_classes(labels, 6, captures, min_captures=2, exclude=("Unknown",))
    assert classes == ["a", "c"] and dropped == {"b": 6, "Unknown": 6}
    assert list(labels[rows]) == ["a"] * 6 + ["c"] * 6 and list(y) == [0] * 6 + [1] * 6
    assert select_classes(labels, 6)[0] == ["Unknown", "a", "b", "c"]  # no filter but the minimum
    with pytest.raises(ConfigError, match="captures"):
        select_classes(labels, 6, captures, min_captures=3, exclude=("a", "Unknown"))


def test_bundled_sample_capture_splits_vary_with_the_seed(tmp_path):
    """On the 7 captures of examples/lab, seeds 0-3 test on at least 3 different captures."""
    from pathlib import Path

    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    lab = Path(__file__).resolve().parents[1] / "examples" / "lab"
    ds = Dataset.open(prep([lab], tmp_path / "lab", PrepConfig(labels=f"csv:{lab / 'labels.csv'}"), workers=1))
    classes, rows, y, _ = TrainConfig().selection.apply(ds)
    captures = ds.column("capture").astype(str)
    tests = {frozenset(captures[make_split(ds, rows, y, TrainConfig(seed=s)).test]) for s in range(4)}
    assert len(tests) >= 3


def test_capture_split_is_stratified_and_warns_about_thin_classes():
    """Single-class captures of unequal sizes (as IoT set-ups are): every class gets about its
    share on every side, and classes the split cannot judge well are named."""
    rng = np.random.default_rng(3)
    sizes = {0: rng.integers(5, 60, 20), 1: rng.integers(5, 60, 20), 2: np.array([30, 40]), 3: np.array([25])}
    y, groups = [], []
    for c, caps in sizes.items():
        for g, n in enumerate(caps):
            y += [c] * int(n)
            groups += [f"{c}/{g}"] * int(n)
    y, groups, rows = np.array(y), np.array(groups), np.arange(len(y))
    s = capture_split(rows, y, groups, seed=0)
    for c in (0, 1):
        share = np.isin(s.test, rows[y == c]).sum() / (y == c).sum()
        assert 0.1 <= share <= 0.3, (c, share)
    assert 3 in s.coverage["one_side"]  # one capture: on one side whatever the deal
    test_captures_of_2 = len(set(groups[np.isin(rows, s.test) & (y == 2)]))
    assert (2 in s.coverage["single_test_capture"]) == (test_captures_of_2 == 1)
    assert 0 not in s.coverage["single_test_capture"] and 0 not in s.coverage["one_side"]

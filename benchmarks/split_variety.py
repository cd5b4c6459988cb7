"""How much do capture splits move with the seed? Test sets of seeds 0..N-1, side by side.

    python benchmarks/split_variety.py DATASET [DATASET ...] --seeds 4 --min-class-sessions 0

For each dataset: the test side's sessions and captures per seed, the number of distinct test
sets, and the share of seed 0's test sessions that seed 1 tests too (issue 12: under 70% on
iot-sentinel; StratifiedGroupKFold with shuffle, used before, gave 94% on few, unequal captures).
"""

from __future__ import annotations

import argparse

from trafficlens.datasets import Dataset
from trafficlens.training.config import TrainConfig
from trafficlens.training.splits import capture_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--min-class-sessions", type=int, default=0)
    args = parser.parse_args()
    print("| dataset | classes | seed | train / val / test sessions | test captures | classes with one test capture |")
    print("|---|---:|---:|---|---:|---:|")
    summary = []
    for path in args.datasets:
        ds = Dataset.open(path)
        classes, rows, y, _ = TrainConfig(min_class_sessions=args.min_class_sessions).selection.apply(ds)
        groups = ds.column("capture")[rows].astype(str)
        tests = []
        for seed in range(args.seeds):
            s = capture_split(rows, y, groups, seed)
            tests.append(frozenset(s.test.tolist()))
            captures = len(set(ds.column("capture")[s.test].astype(str)))
            single = len(s.coverage["single_test_capture"])
            print(f"| {path} | {len(classes)} | {seed} | {' / '.join(str(n) for n in s.sizes().values())} | {captures} | {single} |")
        shared = len(tests[0] & tests[1]) / max(len(tests[0]), 1)
        summary.append((path, len(set(tests)), shared))
    print()
    print("| dataset | distinct test sets | seed 1 tests this share of seed 0's test sessions |")
    print("|---|---:|---:|")
    for path, distinct, shared in summary:
        print(f"| {path} | {distinct} of {args.seeds} | {shared:.0%} |")


if __name__ == "__main__":
    main()

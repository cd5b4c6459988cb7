"""Every classical baseline on one dataset, one after another; prints a Markdown table.

    PYTHONPATH=src python benchmarks/baselines_iot.py /tmp/bl/iot -o /tmp/bl/metrics \
        --split capture --min-class-sessions 50 --seed 0

Each run is `train_baseline` (what `trafficlens baseline` does) and writes
`<out>/<model>-<features>.json`. Runs are sequential so they share the machine politely.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trafficlens.models.baselines.estimators import list_baselines
from trafficlens.training.baselines import train_baseline

HEADER_TOO = ("rf", "xgboost")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("-o", "--out", required=True, help="directory for one metrics JSON per run")
    ap.add_argument("--split", default="capture")
    ap.add_argument("--min-class-sessions", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(name, None) for name in list_baselines()] + [(name, "header") for name in HEADER_TOO]
    rows = []
    for name, features in runs:
        m = train_baseline(args.dataset, name, features, split=args.split, seed=args.seed,
                           min_class_sessions=args.min_class_sessions, log=lambda message: print(message, file=sys.stderr))
        (out / f"{name}-{m['features']}.json").write_text(json.dumps(m, indent=2) + "\n")
        rows.append(m)
        print(f"{name} {m['features']}: acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} fit {m['fit_seconds']:.1f} s",
              file=sys.stderr, flush=True)

    print("| model | features | test accuracy | macro-F1 | weighted-F1 | fit s | predict s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for m in rows:
        print(f"| `{m['model']}` | {m['features']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['weighted_f1']:.4f} "
              f"| {m['fit_seconds']:.1f} | {m['predict_seconds']:.2f} |")
    info = rows[0]["split_info"]
    print(f"\nsplit {info['kind']} (seed {info['seed']}): sessions {info['sizes']}, captures {info['captures']}, "
          f"{len(rows[0]['per_class'])} classes; dropped {info['dropped_classes']}; missing {info['missing']}")


if __name__ == "__main__":
    main()

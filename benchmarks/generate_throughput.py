"""How fast `trafficlens generate` makes labelled sessions, and whether the capture lost anything.

    sudo PYTHONPATH=src python benchmarks/generate_throughput.py --sessions 200 -o /tmp/genbench

Runs one generation (default: the four robot classes and QUIC, 200 sessions each), then
`prep` on the result, and prints a table: sessions that completed, wall time against the
issue's 15-minute bar, packets, tcpdump's own drop counter, checksums verified and found bad,
and the share of completed sessions that prep labelled through labels.csv.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from trafficlens.generate import GenerateConfig, generate

BAR_SECONDS = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--classes", default="robot-mqtt,robot-https,robot-wss,robot-grpc,quic")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--concurrency", type=int, default=24)
    args = ap.parse_args()

    classes = tuple(args.classes.split(","))
    t0 = time.perf_counter()
    m = generate(GenerateConfig(out=args.out, classes=classes, sessions=args.sessions, seed=args.seed,
                                concurrency=args.concurrency, overwrite=True),
                 log=lambda line: print(line, file=sys.stderr))
    gen_s = time.perf_counter() - t0

    from trafficlens.prep.config import PrepConfig
    from trafficlens.datasets.dataset import Dataset
    from trafficlens.prep.local import prep

    ds_dir = args.out.rstrip("/") + "-ds"
    t1 = time.perf_counter()
    prep([args.out], ds_dir, PrepConfig(labels=f"csv:{os.path.join(args.out, 'labels.csv')}"), overwrite=True,
         progress=False)
    prep_s = time.perf_counter() - t1
    table = Dataset.open(ds_dir).table.to_pandas()

    ok = sum(c["ok"] for c in m["sessions"].values())
    planned = sum(c["planned"] for c in m["sessions"].values())
    t = m["totals"]
    rows = [
        ("classes x sessions", f"{len(classes)} x {args.sessions}"),
        ("sessions completed", f"{ok} / {planned}"),
        ("generate wall time", f"{gen_s:.0f} s ({gen_s / BAR_SECONDS:.2f}x the 900 s bar)"),
        ("sessions per second", f"{ok / gen_s:.2f}"),
        ("capture files", f"{len(m['captures'])}"),
        ("packets captured", f"{t['captured']:,}"),
        ("dropped by kernel (tcpdump)", f"{t['dropped']}"),
        ("dropped by interface (tcpdump)", f"{t['dropped_by_interface']}"),
        ("IPv4 / TCP+UDP checksums bad", f"{t['ip_bad']} / {t['l4_bad']} of {t['l4_checked']:,} checked"),
        ("labelled flows (labels.csv)", f"{m['labels']:,}"),
        ("prep sessions labelled", f"{len(table):,} in {prep_s:.0f} s"),
        ("sessions per class in the dataset", ", ".join(f"{k} {v}" for k, v in table.groupby('label').size().items())),
    ]
    if m["errors"]:
        rows.append(("failed sessions", str(m["errors"])))
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()

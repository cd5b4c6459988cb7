"""Few labels (issue 15): tl-fusion from scratch against tl-fusion started from a pre-trained
encoder, with 1%, 10% and 100% of the training sessions, under the honest protocol.

For every seed: one encoder is pre-trained (`trafficlens pretrain`) on the scored dataset less the
test side of that seed's split (and every session of its test captures), plus any `--extra`
datasets; then each fraction trains twice, from scratch and with `--init`, on the same split and
the same training rows (`train_fraction` draws them by seed, not by init) and the same batch
size (16 at 1%, 64 at 10%, 256 at 100%). Validation and test stay whole. Prints a table (mean ± std over seeds) and writes bench-out/few-labels/results.json.

    python benchmarks/few_labels.py /tmp/ds/iot2 --extra /tmp/ds/ndpi2 /tmp/ds/lab2 \\
        --min-class-sessions 50 --seeds 0 1 2 --fractions 0.01 0.1 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--extra", nargs="*", default=[], help="more datasets to pre-train on (never scored)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--min-class-sessions", type=int, default=50)
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("-o", "--out", default=str(ROOT / "bench-out" / "few-labels"))
    args = ap.parse_args()

    import torch

    from trafficlens.training import TrainConfig, train_run
    from trafficlens.training.pretrain import Holdout, PretrainConfig, pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for seed in args.seeds:
        base = dict(split="capture", seed=seed, min_class_sessions=args.min_class_sessions)
        encoder = out / f"encoder-seed{seed}.safetensors"
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        meta = pretrain([args.dataset, *args.extra], encoder, PretrainConfig(epochs=args.pretrain_epochs, seed=seed),
                        holdout=Holdout(args.dataset, TrainConfig(**base)), overwrite=True)
        pretrain_seconds = time.perf_counter() - t0
        for fraction in args.fractions:
            for init in (None, str(encoder)):
                name = f"seed{seed}-f{fraction:g}-{'pretrained' if init else 'scratch'}"
                torch.manual_seed(seed)
                s = train_run(args.dataset, out / name, "tl-fusion",
                              TrainConfig(**base, train_fraction=fraction, init=init, batch_size=batch_size(fraction)),
                              progress=False, overwrite=True, log=lambda message: None)
                m = json.loads((out / name / "metrics.json").read_text())
                overlap = (m.get("pretraining") or {}).get("test_captures_read", 0)
                assert overlap == 0, f"{name}: pre-training read {overlap} test captures"
                rows.append({"seed": seed, "fraction": fraction, "init": "pretrained" if init else "scratch",
                             "batch_size": batch_size(fraction),
                             "n_fit": m["n_fit"], "accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"],
                             "epochs": s["epochs"], "train_seconds": s["seconds"],
                             "pretrain_seconds": pretrain_seconds if init else 0.0,
                             "pretrain_sessions": sum(d["sessions_read"] for d in meta["datasets"]) if init else 0})
                print(f"{name}: n_fit {m['n_fit']}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro']['f1']:.4f}, "
                      f"{s['seconds']:.0f} s", flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows,
                                                  "seconds": time.perf_counter() - t_start}, indent=1))
    print(table(rows))


def batch_size(fraction: float) -> int:
    """Several optimiser steps per epoch at every fraction (256 sessions a batch would give 1% of
    iot-sentinel one step an epoch, and early stopping would judge 5 steps). Scratch and
    pre-trained runs of a fraction share it."""
    return 16 if fraction <= 0.01 else 64 if fraction <= 0.1 else 256


def table(rows: list[dict]) -> str:
    lines = ["| training sessions | n_fit (mean) | from scratch: macro-F1 | pre-trained: macro-F1 | gain (per seed) | "
             "from scratch: accuracy | pre-trained: accuracy |", "|---|---:|---:|---:|---|---:|---:|"]
    for fraction in dict.fromkeys(r["fraction"] for r in rows):
        pick = {init: sorted((r for r in rows if r["fraction"] == fraction and r["init"] == init), key=lambda r: r["seed"])
                for init in ("scratch", "pretrained")}
        f1 = {k: np.array([r["macro_f1"] for r in v]) for k, v in pick.items()}
        acc = {k: np.array([r["accuracy"] for r in v]) for k, v in pick.items()}
        gain = f1["pretrained"] - f1["scratch"]

        def ms(x):
            return f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0:.3f}"

        lines.append(f"| {fraction:.0%} | {np.mean([r['n_fit'] for r in pick['scratch']]):,.0f} | {ms(f1['scratch'])} | "
                     f"{ms(f1['pretrained'])} | {gain.mean():+.3f} ({', '.join(f'{g:+.3f}' for g in gain)}) | "
                     f"{ms(acc['scratch'])} | {ms(acc['pretrained'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

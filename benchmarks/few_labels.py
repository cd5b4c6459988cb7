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
    ap.add_argument("dataset", nargs="?", help="the dataset to score (not needed with --table)")
    ap.add_argument("--extra", nargs="*", default=[], help="more datasets to pre-train on (never scored)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--min-class-sessions", type=int, default=50)
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["scratch", "pretrained"], choices=list(VARIANTS),
                    help="scratch; pretrained (encoder loaded, everything fine-tuned); frozen (encoder loaded and fixed)")
    ap.add_argument("--objective", default="masked", choices=("masked", "contrastive", "both"))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per job [default: all cores]")
    ap.add_argument("--members", type=int, default=None,
                    help="tl-fusion's members (default: the model's, 3; the tables recorded before stop 29 are 1)")
    ap.add_argument("--reuse-encoders", action="store_true", help="keep an encoder-seedS.safetensors already in -o")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench-out" / "few-labels"))
    ap.add_argument("--table", nargs="+", metavar="RESULTS_JSON",
                    help="print one table from result files of earlier runs (variants named by objective) and exit")
    args = ap.parse_args()
    if args.table:
        print(merged_table(args.table))
        return

    import torch

    from trafficlens.training import TrainConfig, train_run
    from trafficlens.training.pretrain import Holdout, PretrainConfig, pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for seed in args.seeds:
        base = dict(split="capture", seed=seed, min_class_sessions=args.min_class_sessions, num_threads=args.threads)
        tag = "" if args.objective == "masked" else f"-{args.objective}"
        encoder = out / f"encoder{tag}-seed{seed}.safetensors"
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        if args.reuse_encoders and encoder.is_file():
            from trafficlens.training.encoder import read_encoder

            meta = read_encoder(encoder)[1]
        else:
            meta = pretrain([args.dataset, *args.extra], encoder,
                            PretrainConfig(epochs=args.pretrain_epochs, seed=seed, objective=args.objective,
                                           num_threads=args.threads),
                            holdout=Holdout(args.dataset, TrainConfig(**base)), overwrite=True)
        pretrain_seconds = time.perf_counter() - t0
        for fraction in args.fractions:
            for variant in args.variants:
                init = None if variant == "scratch" else str(encoder)
                name = f"seed{seed}-f{fraction:g}-{variant}{tag if variant != 'scratch' else ''}"
                torch.manual_seed(seed)
                s = train_run(args.dataset, out / name, "tl-fusion",
                              TrainConfig(**base, train_fraction=fraction, init=init, freeze_init=variant == "frozen",
                                          batch_size=batch_size(fraction)),
                              model_kwargs={"members": args.members} if args.members else None,
                              progress=False, overwrite=True, log=lambda message: None)
                m = json.loads((out / name / "metrics.json").read_text())
                overlap = (m.get("pretraining") or {}).get("test_captures_read", 0)
                assert overlap == 0, f"{name}: pre-training read {overlap} test captures"
                rows.append({"seed": seed, "fraction": fraction, "init": variant,
                             "batch_size": batch_size(fraction),
                             "n_fit": m["n_fit"], "accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"],
                             "epochs": s["epochs"], "train_seconds": s["seconds"],
                             "pretrain_seconds": pretrain_seconds if init else 0.0,
                             "pretrain_sessions": sum(d["sessions_read"] for d in meta["datasets"]) if init else 0})
                print(f"{name}: n_fit {m['n_fit']}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro']['f1']:.4f}, "
                      f"{s['seconds']:.0f} s", flush=True)
    target = out / f"results-{'-'.join(args.variants)}{'' if args.objective == 'masked' else '-' + args.objective}.json"
    target.write_text(json.dumps({"args": vars(args), "rows": rows, "seconds": time.perf_counter() - t_start}, indent=1))
    print(table(rows, args.variants))


def batch_size(fraction: float) -> int:
    """Several optimiser steps per epoch at every fraction (256 sessions a batch would give 1% of
    iot-sentinel one step an epoch, and early stopping would judge 5 steps). Scratch and
    pre-trained runs of a fraction share it."""
    return 16 if fraction <= 0.01 else 64 if fraction <= 0.1 else 256


def table(rows: list[dict], variants: list[str]) -> str:
    """Macro-F1 and accuracy per fraction and variant (mean ± std over seeds), and each variant's
    gain in macro-F1 over from-scratch training of the same seed."""
    def ms(x):
        return f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0:.3f}"

    head = "| training sessions | n_fit (mean) | " + " | ".join(f"{v}: macro-F1 / accuracy" for v in variants)
    others = [v for v in variants if v != "scratch"]
    head += "".join(f" | {v} - scratch, macro-F1 (per seed)" for v in others if "scratch" in variants) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(variants) + "---|" * (len(others) if "scratch" in variants else 0)]
    for fraction in dict.fromkeys(r["fraction"] for r in rows):
        pick = {v: sorted((r for r in rows if r["fraction"] == fraction and r["init"] == v), key=lambda r: r["seed"])
                for v in variants}
        f1 = {k: np.array([r["macro_f1"] for r in v]) for k, v in pick.items()}
        acc = {k: np.array([r["accuracy"] for r in v]) for k, v in pick.items()}
        cells = [f"{ms(f1[v])} / {ms(acc[v])} ({len(f1[v])} seed{'s' if len(f1[v]) != 1 else ''})" if len(f1[v]) else "-"
                 for v in variants]
        if "scratch" in variants:
            base = {r["seed"]: r["macro_f1"] for r in pick["scratch"]}
            for v in others:
                gain = np.array([r["macro_f1"] - base[r["seed"]] for r in pick[v] if r["seed"] in base])
                cells.append(f"{gain.mean():+.3f} ({', '.join(f'{g:+.3f}' for g in gain)})" if len(gain) else "-")
        n_fit = np.mean([r["n_fit"] for r in pick[variants[0]]])
        lines.append(f"| {fraction:.0%} | {n_fit:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


VARIANTS = ("scratch", "pretrained", "frozen")


def merged_table(paths: list[str]) -> str:
    """Rows of several runs' results-*.json; a variant of a non-masked objective is named
    `pretrained-contrastive` etc. Seeds present in some variants only are listed per cell."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        objective = data["args"].get("objective", "masked")
        for r in data["rows"]:
            if r["init"] != "scratch" and objective != "masked":
                r = {**r, "init": f"{r['init']}-{objective}"}
            rows.append(r)
    order = ["scratch", "pretrained", "frozen", "pretrained-contrastive", "frozen-contrastive", "pretrained-both"]
    variants = [v for v in order if any(r["init"] == v for r in rows)]
    return table(rows, variants)


if __name__ == "__main__":
    main()

"""Training and inference throughput of every registered model on CPU, at batch 256.

    PYTHONPATH=src python benchmarks/train_throughput.py                 # all models, 35x35 image, 6x96 packets
    PYTHONPATH=src python benchmarks/train_throughput.py --models chen-cnn --epoch-sessions 100000 --epoch-rounds 2

Model rows time forward + backward + Adam step (train) and a no-grad forward (inference) on
random uint8 batches already in memory. `--epoch-sessions N` also times one full epoch of the
real trainer (`trafficlens.training.trainer.fit`) for chen-cnn over N sessions read from a
memory-mapped .npy file, which includes batch gathering and the progress bar: today's default
widths beside the widths chen-cnn had before issue 18 (the baseline), alternating for
`--epoch-rounds` rounds on the same data.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from trafficlens.models import count_parameters, create_model, list_models


def timed(step, min_steps: int, min_seconds: float) -> float:
    """Seconds per call of `step`, after 2 warm-up calls."""
    for _ in range(2):
        step()
    n, start = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - start < min_seconds:
        step()
        n += 1
    return (time.perf_counter() - start) / n


def bench_model(name: str, shapes: dict, batch: int, classes: int, min_steps: int, min_seconds: float) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, input_shapes=shapes)
    xs = [torch.randint(0, 256, (batch, *shapes[t]), dtype=torch.uint8) for t in model.inputs]
    y = torch.randint(0, classes, (batch,))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)

    def train_step():
        loss = F.cross_entropy(model(*xs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t_train = timed(train_step, min_steps, min_seconds)
    model.eval()

    @torch.no_grad()
    def infer_step():
        model(*xs)

    t_infer = timed(infer_step, min_steps, min_seconds)
    return {"model": name, "inputs": ",".join(model.inputs), "params": count_parameters(model),
            "trainable": count_parameters(model, trainable_only=True),
            "train_sps": batch / t_train, "infer_sps": batch / t_infer}


# chen-cnn's widths before issue 18 (the epoch benchmark's baseline); {} is today's default
EPOCH_VARIANTS = {"chen-cnn (default)": {}, "chen-cnn, widths before issue 18": {"channels": (8, 32, 64, 128)}}


def bench_epochs(sessions: int, side: int, classes: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of one fit() epoch of each of EPOCH_VARIANTS over a memory-mapped image tensor,
    the variants alternating for `rounds` rounds."""
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.device import setup
    from trafficlens.training.trainer import fit

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image.npy")
        image = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(sessions, side * side))
        rng = np.random.default_rng(0)
        for start in range(0, sessions, 10000):
            image[start:start + 10000] = rng.integers(0, 256, (min(10000, sessions - start), side * side), dtype=np.uint8)
        image.flush()
        del image
        tensors = {"image": np.load(path, mmap_mode="r")}
        y = rng.integers(0, classes, sessions)
        cfg = TrainConfig(max_epochs=1, device="cpu")
        setup(cfg)
        rows = np.arange(sessions)
        seconds: dict[str, list[float]] = {name: [] for name in EPOCH_VARIANTS}
        for _ in range(rounds):
            for name, settings in EPOCH_VARIANTS.items():
                torch.manual_seed(0)
                model = create_model("chen-cnn", num_classes=classes, input_shapes={"image": (side * side,)}, **settings)
                result = fit(model, tensors, rows, y, rows[:0], y[:0], cfg, classes, progress=True)
                seconds[name].append(result.history[0]["train_seconds"])
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated names [default: all registered]")
    ap.add_argument("--side", type=int, default=35, help="image side (image tensor = side*side bytes)")
    ap.add_argument("--packets", type=int, default=6)
    ap.add_argument("--packet-bytes", type=int, default=96)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="[default: all cores]")
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--epoch-sessions", type=int, default=0, help="also time one real chen-cnn epoch over N sessions")
    ap.add_argument("--epoch-rounds", type=int, default=1, help="alternating rounds of the epoch timings")
    args = ap.parse_args()

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    shapes = {"image": (args.side * args.side,), "packets": (args.packets, args.packet_bytes)}
    names = args.models.split(",") if args.models else list_models("deep")
    print(f"torch {torch.__version__}, {threads} CPU threads, batch {args.batch}, image {args.side}x{args.side}, "
          f"packets {args.packets}x{args.packet_bytes}, {args.classes} classes\n")
    print("| model | inputs | parameters (trainable) | train samples/s | inference samples/s | s per 100k train |")
    print("|---|---|---:|---:|---:|---:|")
    for name in names:
        r = bench_model(name, shapes, args.batch, args.classes, args.min_steps, args.min_seconds)
        params = f"{r['params']:,}" + (f" ({r['trainable']:,})" if r["trainable"] != r["params"] else "")
        print(f"| {name} | {r['inputs']} | {params} | {r['train_sps']:,.0f} | {r['infer_sps']:,.0f} | {1e5 / r['train_sps']:,.0f} |", flush=True)
    if args.epoch_sessions:
        timings = bench_epochs(args.epoch_sessions, args.side, args.classes, args.epoch_rounds)
        base = min(timings["chen-cnn, widths before issue 18"])
        print(f"\nOne fit() epoch over {args.epoch_sessions:,} memory-mapped sessions, {args.epoch_rounds} alternating round(s)\n")
        print("| model | parameters | rounds, s | best s | sessions/s (best) | time against the baseline |")
        print("|---|---:|---|---:|---:|---:|")
        for name, seconds in timings.items():
            params = count_parameters(create_model("chen-cnn", num_classes=args.classes,
                                                   input_shapes={"image": (args.side * args.side,)}, **EPOCH_VARIANTS[name]))
            print(f"| {name} | {params:,} | {', '.join(f'{s:.1f}' for s in seconds)} | {min(seconds):.1f} | "
                  f"{args.epoch_sessions / min(seconds):,.0f} | {min(seconds) / base:.2f} |")


if __name__ == "__main__":
    main()

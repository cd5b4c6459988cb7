"""Does training start learning in its first epochs? Validation macro-F1 per epoch, per approach.

    python benchmarks/first_epochs.py DATASET --models chen-cnn,ge-elmo-lstm-attention \
        --approaches none,precise-bn,cumulative-bn,batch-64,warmup --min-class-sessions 250 \
        --exclude-class Unknown --epochs 6

Issue 12, point 7: on nDPI's most common master protocols, validation predicted one class for the
first epochs, so early stopping with a short patience saved a one-class model. The approaches:
`none` validates with batch norm's running statistics as training leaves them (momentum 0.1);
`precise-bn` re-estimates them on 16 training batches before each validation (the default now,
`TrainConfig.bn_batches`); `cumulative-bn` uses a cumulative average instead of momentum;
`batch-64` trains with 4x smaller batches; `warmup` a 3x smaller learning rate. Every approach
uses the same capture split, seed and initialisation; each cell is `macro-F1(classes predicted)`.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from trafficlens.datasets import Dataset
from trafficlens.models import create_model, model_info
from trafficlens.training.config import TrainConfig
from trafficlens.training.device import setup
from trafficlens.training.run import make_split
from trafficlens.training.trainer import fit

APPROACHES = ("none", "precise-bn", "cumulative-bn", "batch-64", "warmup")


def variant(base: TrainConfig, approach: str) -> TrainConfig:
    return dataclasses.replace(base, bn_batches=16 if approach == "precise-bn" else 0,
                               batch_size=64 if approach == "batch-64" else base.batch_size,
                               lr=base.lr / 3 if approach == "warmup" else base.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--models", default="chen-cnn")
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument("--min-class-sessions", type=int, default=250)
    parser.add_argument("--exclude-class", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ds = Dataset.open(args.dataset)
    base = TrainConfig(min_class_sessions=args.min_class_sessions, exclude_classes=tuple(args.exclude_class),
                       max_epochs=args.epochs, patience=args.epochs + 1, split="capture", seed=args.seed)
    classes, rows, y, _ = base.selection.apply(ds)
    split = make_split(ds, rows, y, base)
    label_of = np.full(len(ds), -1)
    label_of[rows] = y
    print(f"{len(classes)} classes; train {len(split.train)} / val {len(split.val)} sessions; "
          f"val sessions per class {np.bincount(label_of[split.val], minlength=len(classes)).tolist()}")
    print(f"| model | approach | {' | '.join(f'epoch {e}' for e in range(1, args.epochs + 1))} | s |")
    print("|---|---|" + "---|" * (args.epochs + 1))
    for name in args.models.split(","):
        inputs = model_info(name).inputs
        tensors = {t: ds.tensor(t) for t in inputs}
        shapes = {t: tuple(tensors[t].shape[1:]) for t in inputs}
        for approach in args.approaches.split(","):
            cfg = variant(base, approach)
            device = setup(cfg)
            model = create_model(name, len(classes), shapes)
            if approach == "cumulative-bn":
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.momentum = None
            r = fit(model, tensors, split.train, label_of[split.train], split.val, label_of[split.val], cfg,
                    len(classes), progress=False, device=device)
            cells = [f"{e['val_macro_f1']:.2f} ({e['val_predicted_classes']})" for e in r.history]
            print(f"| {name} | {approach} | {' | '.join(cells)} | {r.seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Self-supervised pre-training of tl-fusion's packet encoder on unlabeled sessions (issue 15).

Objectives (`objective`): `masked` (the default), `contrastive`, or `both` (the losses add).
Contrastive: two views of each session, each with a third of its bytes and packet sizes hidden,
mean-pooled over the packets present and projected; each view must pick its twin out of the
batch (InfoNCE, temperature 0.2). Masked prediction, BERT-style, over what the packet tokens read:
- bytes: `byte_rate` of the byte positions of the packets present are replaced by a learned
  vector; a head predicts each hidden byte's value (256-way) from its packet's encoder state
  plus a position embedding of the byte within the packet;
- sizes: `size_rate` of the packets present have their size/direction/timing feature replaced
  by a learned vector; a head predicts the packet's direction (logistic) and log size (squared
  error) from its state.
The two losses add. Labels are never read, so any prepared dataset can feed it, but never the
test side of the dataset that will be scored: `holdout` names such a dataset, its split is made
as `train` would make it, and its test sessions are left out. The encoder file records the
SHA-256 of every capture it read (from each dataset's manifest), so that `train --init` and
`evaluate` can say whether pre-training saw a capture of their test side.

The encoder file and what runs started from it record: training/encoder.py.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trafficlens.errors import ConfigError, DatasetError
from trafficlens.training.encoder import FORMAT, FORMAT_VERSION, capture_digests, save_encoder



OBJECTIVES = ("masked", "contrastive", "both")


@dataclass
class PretrainConfig:
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    byte_rate: float = 0.15  # share of byte positions hidden
    size_rate: float = 0.15  # share of packets whose size/timing is hidden
    objective: str = "masked"  # masked (bytes and sizes), contrastive (two views of a session), or both
    time_budget: float | None = None  # seconds; checked after every batch
    seed: int = 0
    max_sessions: int | None = None  # a random subset of the sessions given, per epoch
    model_settings: dict[str, Any] = field(default_factory=dict)  # tl-fusion settings (dim, layers, ...)
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("pretrain: epochs and batch size must be >= 1 and lr > 0")
        for name in ("byte_rate", "size_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"pretrain: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"pretrain: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective != "contrastive" and self.byte_rate == 0 and self.size_rate == 0:
            raise ConfigError("pretrain: byte_rate and size_rate are both 0; nothing would be predicted")


@dataclass
class Holdout:
    """The dataset that will be scored, and the split settings of its training runs: its test
    sessions are never read."""

    dataset: str
    train: Any  # a TrainConfig: split, seed and class options as `train` will use them


def rows_to_read(ds, holdout: Holdout | None, log: Callable[[str], None]) -> np.ndarray:
    """Every row of `ds`, less the test side of the holdout split when `ds` is the holdout dataset,
    and less every session of a capture on that side (whatever its label)."""
    rows = np.arange(len(ds))
    if holdout is None or Path(holdout.dataset).resolve() != Path(ds.path).resolve():
        return rows
    from trafficlens.training.run import select_and_split

    split = select_and_split(ds, holdout.train).split
    test_captures = np.unique(ds.column("capture")[split.test])
    keep = ~np.isin(ds.column("capture"), test_captures)
    keep[split.test] = False
    log(f"{ds.path}: leaving out the {holdout.train.split} split's test side (seed {holdout.train.seed}): "
        f"{len(split.test)} sessions of {len(test_captures)} captures; {int(keep.sum())} of {len(ds)} sessions read")
    return rows[keep]


def _shapes(datasets) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shapes = {(tuple(ds.tensor("packets").shape[1:]), tuple(ds.tensor("sequence").shape[1:])) for ds in datasets}
    if len(shapes) != 1:
        listing = "; ".join(f"{ds.path}: packets {ds.tensor('packets').shape[1:]}, sequence {ds.tensor('sequence').shape[1:]}"
                            for ds in datasets)
        raise DatasetError(f"pretrain: the datasets have different tensor shapes ({listing}); prep them alike")
    return shapes.pop()


class MaskedPrediction(nn.Module):
    """The pre-training task around a TLFusion model: hides inputs, predicts them, returns the loss."""

    def __init__(self, model, cfg: PretrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        m = model.cfg
        if not (m.use_bytes or m.use_sizes):
            raise ConfigError("pretrain: the encoder reads neither bytes nor sizes (use_bytes, use_sizes)")
        self.byte_position = nn.Embedding(m.packet_bytes, m.dim)
        self.byte_head = nn.Sequential(nn.Linear(m.dim, m.dim), nn.GELU(), nn.Linear(m.dim, 256))
        self.size_head = nn.Linear(m.dim, 2)  # direction logit, log size
        self.byte_vector = nn.Parameter(torch.zeros(m.byte_dim))
        self.size_vector = nn.Parameter(torch.zeros(m.dim))
        self.projection = nn.Sequential(nn.Linear(m.dim, m.dim), nn.GELU(), nn.Linear(m.dim, m.dim))  # contrastive

    def hide(self, packets, size, generator, byte_rate: float, size_rate: float):
        """Random byte positions of the packets present, and random packets' sizes, hidden."""
        from trafficlens.models.tl_fusion import HiddenInputs

        m = self.model.cfg
        packet_present = packets.amax(dim=2) > 0  # (B, M)
        byte_hidden = (torch.rand(packets.shape, generator=generator) < byte_rate) & packet_present[..., None]
        size_hidden = (torch.rand(size.shape, generator=generator) < size_rate) & (size != 0)
        if not m.use_bytes:
            byte_hidden = torch.zeros_like(byte_hidden)
        if not m.use_sizes:
            size_hidden = torch.zeros_like(size_hidden)
        return HiddenInputs(byte_hidden, size_hidden, self.byte_vector, self.size_vector)

    def loss(self, packets, sequence, generator) -> tuple[Any, dict[str, float]]:
        cfg = self.cfg
        packets = packets.long()
        parts: dict[str, Any] = {}
        if cfg.objective in ("masked", "both"):
            parts.update(self.masked(packets, sequence, generator))
        if cfg.objective in ("contrastive", "both"):
            parts["contrastive"] = self.contrastive(packets, sequence, generator)
        if not parts:
            return None, {}
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def contrastive(self, packets, sequence, generator):
        """Two views of each session (a third of its bytes and sizes hidden, drawn anew for each);
        a session's two views must find each other among the batch's (InfoNCE, both ways)."""
        size = sequence[..., 0].float()
        views = []
        for _ in range(2):
            h, present = self.model.encode(packets, sequence, self.hide(packets, size, generator, 0.3, 0.3))
            w = present.float().unsqueeze(-1)
            views.append(F.normalize(self.projection((h * w).sum(1) / w.sum(1)), dim=-1))
        logits = views[0] @ views[1].T / 0.2
        target = torch.arange(len(logits))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def masked(self, packets, sequence, generator) -> dict[str, Any]:
        cfg = self.cfg
        size = sequence[..., 0].float()
        hidden = self.hide(packets, size, generator, cfg.byte_rate, cfg.size_rate)
        byte_hidden, size_hidden = hidden.bytes, hidden.sizes
        h, _ = self.model.encode(packets, sequence, hidden)  # (B, L, d)
        parts: dict[str, Any] = {}
        if byte_hidden.any():
            b, p, j = byte_hidden.nonzero(as_tuple=True)
            logits = self.byte_head(h[b, p] + self.byte_position(j))
            parts["bytes"] = F.cross_entropy(logits, packets[b, p, j])
        if size_hidden.any():
            b, p = size_hidden.nonzero(as_tuple=True)
            out = self.size_head(h[b, p])
            target = size[b, p]
            parts["direction"] = F.binary_cross_entropy_with_logits(out[:, 0], (target > 0).float())
            parts["size"] = F.mse_loss(out[:, 1], torch.log1p(target.abs()) / 7.3)
        return parts


def pretrain(datasets: Sequence[str | os.PathLike], out: str | os.PathLike, cfg: PretrainConfig | None = None,
             holdout: Holdout | None = None, overwrite: bool = False,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pre-train tl-fusion's encoder on the sessions of `datasets` (labels unread) and write it to
    `out` (safetensors). Returns the metadata written with it."""
    from trafficlens.datasets import Dataset
    from trafficlens.models import create_model

    cfg = cfg or PretrainConfig()
    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if not datasets:
        raise ConfigError("pretrain: give at least one dataset")
    opened = [Dataset.open(d) for d in datasets]
    packet_shape, sequence_shape = _shapes(opened)
    if holdout is not None and not any(Path(holdout.dataset).resolve() == Path(ds.path).resolve() for ds in opened):
        log(f"note: the holdout dataset {holdout.dataset} is not among the datasets read; nothing to leave out")
    rows = [rows_to_read(ds, holdout, log) for ds in opened]
    total = sum(len(r) for r in rows)
    if total == 0:
        raise DatasetError("pretrain: no sessions left to read")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    shapes = {"packets": packet_shape, "sequence": sequence_shape,
              "stats": tuple(opened[0].tensor("stats").shape[1:])}  # the statistics branch is built, never trained here
    # one network: its encoder is what every member of the model trained from it starts from
    model = create_model("tl-fusion", 2, shapes, **{**cfg.model_settings, "members": 1})
    task = MaskedPrediction(model, cfg)
    optimiser = torch.optim.AdamW(list(task.parameters()), lr=cfg.lr, weight_decay=0.01)
    history = _fit(task, optimiser, opened, rows, cfg, log)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": "tl-fusion",
        "model_settings": asdict(model.cfg) | {"num_classes": None},
        "input_shapes": {"packets": list(packet_shape), "sequence": list(sequence_shape)},
        "pretrain": asdict(cfg),
        "datasets": [{"path": str(Path(ds.path).resolve()), "sessions_read": int(len(r)), "sessions": len(ds),
                      "mask": ds.config.get("mask")} for ds, r in zip(opened, rows)],
        "holdout": None if holdout is None else {"dataset": str(Path(holdout.dataset).resolve()),
                                                 "split": holdout.train.split, "seed": holdout.train.seed},
        "captures": sorted(set().union(*(capture_digests(ds, r) for ds, r in zip(opened, rows)))),
        "history": history,
    }
    save_encoder(out, model, meta)
    log(f"wrote {out}: {total} sessions of {len(opened)} datasets, {len(meta['captures'])} captures, "
        f"{len(history)} epochs, final loss {history[-1]['loss']:.4f}")
    return meta


def _fit(task: MaskedPrediction, optimiser, datasets, rows, cfg: PretrainConfig, log) -> list[dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    # (dataset index, row) pairs, shuffled per epoch; memory-mapped tensors are read batch by batch
    pairs = np.concatenate([np.stack([np.full(len(r), i), r], axis=1) for i, r in enumerate(rows)])
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    out_of_time = False
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(pairs))[: cfg.max_sessions or None]
        task.train(True)
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, len(order), cfg.batch_size):
            chosen = pairs[np.sort(order[start:start + cfg.batch_size])]
            packets, sequence = _batch(datasets, chosen)
            loss, parts = task.loss(packets, sequence, generator)
            if loss is None:
                continue
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(task.parameters()), 1.0)
            optimiser.step()
            batches += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if cfg.time_budget and time.perf_counter() - t0 > cfg.time_budget:
                out_of_time = True
                break
        row = {"epoch": epoch, **{k: round(v / max(batches, 1), 5) for k, v in sums.items()}}
        row["loss"] = round(sum(v for k, v in row.items() if k != "epoch"), 5)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(row)
        log(f"epoch {epoch}: loss {row['loss']:.4f} ("
            + ", ".join(f"{k} {row[k]:.4f}" for k in ("bytes", "direction", "size", "contrastive") if k in row)
            + f"), {row['seconds']} s")
        if out_of_time:
            log(f"time budget of {cfg.time_budget} s reached")
            break
        if not math.isfinite(row["loss"]):
            raise ConfigError("pretrain: the loss is not finite; lower --lr")
    return history


def _batch(datasets, chosen: np.ndarray):
    packets, sequence = [], []
    for i in np.unique(chosen[:, 0]):
        r = chosen[chosen[:, 0] == i, 1]
        packets.append(np.asarray(datasets[i].tensor("packets")[r]))
        sequence.append(np.asarray(datasets[i].tensor("sequence")[r]))
    return torch.from_numpy(np.concatenate(packets)), torch.from_numpy(np.concatenate(sequence))

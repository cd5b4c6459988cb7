"""The training loop: one `fit` for every registered model, reading batches from memory maps.

    history = fit(model, tensors, train_idx, train_y, val_idx, val_y, cfg, num_classes)

`tensors` maps the dataset tensor names a model consumes to arrays indexed by session row
(`Dataset.tensor(name)` memory maps, or plain arrays); each batch copies only its own rows.
Adam, batch 256, learning rate halved when validation macro-F1 stalls, early stopping on
validation macro-F1, best weights restored at the end. Same seed, same result on CPU.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from trafficlens.models.ensemble import member_loss
from trafficlens.models.losses import make_loss
from trafficlens.training.config import TrainConfig
from trafficlens.training.device import resolve_device

COSINE_WARMUP = 0.02  # share of a cosine-scheduled run spent raising the rate from 0


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    best_val_macro_f1: float = float("nan")
    stopped: str = "max-epochs"  # max-epochs | early-stopping | time-budget
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # e.g. the kept model predicts one class only


def autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _gather(tensors: Mapping[str, np.ndarray], names: tuple[str, ...], idx: np.ndarray, pin: bool) -> list[torch.Tensor]:
    out = []
    for name in names:
        t = torch.from_numpy(np.ascontiguousarray(tensors[name][idx]))  # copies only this batch
        out.append(t.pin_memory() if pin else t)
    return out


def batches(tensors, names, idx: np.ndarray, y: np.ndarray | None, batch_size: int, device: torch.device,
            order: np.ndarray | None = None, part: tuple[int, int] | None = None,
            ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None]]:
    """Yield (inputs, targets) on `device`; the next batch is read in a thread meanwhile.

    `order` permutes positions in idx (shuffling); rows inside a batch are sorted so reads from
    the memory map go forward through the file. `part` = (rank, world): of every batch, only
    this rank's contiguous share is read (data-parallel training); a rank whose share of a short
    last batch is empty gets the batch's first row, which `fit` weighs 0.
    """
    positions = order if order is not None else np.arange(len(idx))
    chunks = [np.sort(positions[i:i + batch_size]) for i in range(0, len(positions), batch_size)]
    if part is not None:
        rank, world = part
        chunks = [share if len(share) else chunk[:1]
                  for chunk, share in ((c, np.array_split(c, world)[rank]) for c in chunks)]
    pin = device.type == "cuda"

    def load(chunk):
        xs = _gather(tensors, names, idx[chunk], pin)
        ys = torch.from_numpy(y[chunk].astype(np.int64)) if y is not None else None
        return xs, ys

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            xs, ys = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(load, chunks[k + 1])
            xs = [x.to(device, non_blocking=True) for x in xs]
            yield xs, (ys.to(device, non_blocking=True) if ys is not None else None)


@torch.no_grad()
def predict_logits(model: nn.Module, tensors, idx: np.ndarray, batch_size: int = 1024,
                   device: torch.device | None = None, amp: bool = True, dist=None) -> np.ndarray:
    """Logits (len(idx), C) in the order of idx.

    `dist` (a `training.distributed.DistContext` of several ranks): each rank predicts its share
    of idx and every rank gets all the logits.
    """
    if dist is not None and dist.enabled:
        share = predict_logits(model, tensors, np.asarray(idx)[dist.part(len(idx))], batch_size, device, amp)
        return dist.gather(share)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort(idx, kind="stable")
    # a registered model's config names its classes (an ensemble has a head per member); a bare module, its head
    classes = getattr(getattr(model, "cfg", None), "num_classes", None) or model.head.out_features
    out = np.empty((len(idx), classes), dtype=np.float32)
    pos = 0
    sorted_idx = idx[order]
    for xs, _ in batches(tensors, model.inputs, sorted_idx, None, batch_size, device):
        with autocast(device, amp):
            logits = model(*xs)
        out[order[pos:pos + len(logits)]] = logits.float().cpu().numpy()
        pos += len(logits)
    model.train(was_training)
    return out


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, tensors, train_idx: np.ndarray, batches_: int, batch_size: int,
                           device: torch.device, seed: int) -> bool:
    """Re-estimate every batch norm's running mean and variance from `batches_` training batches
    under the current weights (precise BN, Wu & Johnson 2021). Returns whether the model has any
    that train (batch norms a model keeps in eval mode, as frozen branches, are left alone).

    Running statistics are an exponential average (momentum 0.1) over the batches of training, so
    after a few dozen optimiser steps they still carry the initial 0/1 and the early weights'
    activations: on small datasets (5 batches an epoch on nDPI's top 5 protocols) the evaluated
    model predicted one class on validation for 5 epochs while training loss fell. Exact statistics
    of the weights being evaluated cost `batches_` forward passes, no backward.
    """
    was_training = model.training
    model.train()  # a frozen part (chen-model-a's branches) keeps itself in eval mode: its statistics stay
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    if not norms or batches_ <= 0 or not len(train_idx):
        model.train(was_training)
        return bool(norms)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(train_idx))
    count = min(batches_, max(1, len(train_idx) // size))
    order = rng.permutation(len(train_idx))[: count * size]
    for xs, _ in batches(tensors, model.inputs, train_idx, None, size, device, order):
        if len(xs[0]) > 1:  # batch norm needs two rows for a variance
            model(*xs)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return True


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def fit(model: nn.Module, tensors: Mapping[str, np.ndarray], train_idx: np.ndarray, train_y: np.ndarray,
        val_idx: np.ndarray, val_y: np.ndarray, cfg: TrainConfig, num_classes: int,
        progress: bool = True, device: torch.device | None = None, dist=None, on_epoch=None,
        checkpoint=None, resume: dict | None = None) -> FitResult:
    """Train `model` in place; on return it holds the weights of the best validation epoch.

    Expects `setup(cfg)` to have run (seeds, threads); `train`/`val` indices are dataset rows,
    `*_y` their class ids. With no validation rows the last epoch's weights are kept.
    `dist`: a `training.torchrun.DistContext`; with several ranks each trains on its share of
    every batch under DistributedDataParallel (see training/torchrun.py), and the reported
    losses and accuracies are summed over ranks. `on_epoch(epoch, row)` sees every epoch's
    history row (TensorBoard logging). `checkpoint(state)` is handed the whole training state
    after every epoch (`checkpoint_state`); `resume`, such a state, continues from its epoch.
    """
    from trafficlens.training.torchrun import DistContext

    device = device or resolve_device(cfg.device)
    dist = dist or DistContext(device=device)
    if resume is None and hasattr(model, "fit_inputs"):  # a TrafficModel; tests also train plain modules
        model.fit_inputs(tensors, train_idx)
    run = _Epochs(model, tensors, train_idx, train_y, cfg, num_classes, device, dist)
    result = FitResult()
    best_f1, best_state, stale, first = -1.0, None, 0, 1
    if resume is not None:
        best_f1, best_state, stale, first = resume["best_f1"], resume["best_state"], resume["stale"], resume["epoch"] + 1
        result.history, result.best_epoch = list(resume["history"]), resume["best_epoch"]
        run.restore(resume)
    for epoch in range(first, cfg.max_epochs + 1):
        row, out_of_time, bar = run.train(epoch, progress and dist.main)
        recalibrate_batch_norm(model, tensors, train_idx, cfg.bn_batches, cfg.batch_size, device, cfg.seed + epoch)
        if len(val_idx):
            row.update(run.validate(val_idx, val_y))
        row["seconds"] = time.perf_counter() - row.pop("_started")
        result.history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['train_accuracy']:.3f}",
                        val_acc=f"{row.get('val_accuracy', float('nan')):.3f}",
                        val_f1=f"{row.get('val_macro_f1', float('nan')):.3f}")
        bar.close()
        if on_epoch is not None:
            on_epoch(epoch, row)
        f1 = row.get("val_macro_f1", -row["train_loss"])
        if f1 > best_f1 + 1e-4:
            best_f1, stale, result.best_epoch = f1, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if cfg.schedule == "plateau":
            run.scheduler.step(f1)
        if checkpoint is not None and dist.main:
            checkpoint(run.state(epoch, best_f1, best_state, stale, result))
        if out_of_time or stale >= cfg.patience:
            result.stopped = "time-budget" if out_of_time else "early-stopping"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.best_val_macro_f1 = best_f1 if len(val_idx) else float("nan")
    best_row = result.history[result.best_epoch - 1] if result.best_epoch else None
    if best_row and best_row.get("val_predicted_classes") == 1 and len(np.unique(val_y)) > 1:
        result.warnings.append(f"the kept model (epoch {result.best_epoch}) predicts one class for every validation "
                               "session: it has not learned to separate the classes; train longer (--epochs, "
                               "--patience) or check the data")
    result.seconds = time.perf_counter() - run.start
    return result


class _Epochs:
    """The optimiser state of one `fit`, an epoch at a time."""

    def __init__(self, model, tensors, train_idx, train_y, cfg: TrainConfig, num_classes: int, device, dist):
        from trafficlens.training.torchrun import wrap

        self.model, self.tensors, self.train_idx, self.train_y = model, tensors, train_idx, train_y
        self.cfg, self.num_classes, self.device, self.dist = cfg, num_classes, device, dist
        model.to(device)
        self.net = wrap(model, dist)  # the module trained; `model` (the same weights) is evaluated and saved
        self.part = (dist.rank, dist.world) if dist.enabled else None
        self.rng = np.random.default_rng(cfg.seed)
        self.criterion = make_loss(cfg.loss, np.bincount(train_y, minlength=num_classes), cfg.focal_gamma).to(device)
        # fused: one kernel for every parameter's update (chen-cnn's CPU epoch: about 5% less time)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=cfg.lr_factor,
                                                                    patience=cfg.lr_patience)
        self.use_amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and not torch.cuda.is_bf16_supported())
        # Rows this rank really trains on in each global batch (0: a placeholder row, weighed 0).
        self.global_sizes = [min(cfg.batch_size, len(train_idx) - i) for i in range(0, len(train_idx), cfg.batch_size)]
        self.local_sizes = [len(dist.part(g)) for g in self.global_sizes]
        self.start = time.perf_counter()

    def state(self, epoch: int, best_f1: float, best_state, stale: int, result: FitResult) -> dict:
        """Everything the next epoch depends on: weights, optimiser, scheduler, batch-order and
        torch random states, the best weights so far and the history (plain values and tensors,
        so loading it runs no code)."""
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "best_f1": best_f1, "best_state": best_state, "stale": stale,
                "best_epoch": result.best_epoch, "history": result.history,
                "seconds": time.perf_counter() - self.start}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.start = time.perf_counter() - state["seconds"]  # the time budget counts the earlier epochs

    def train(self, epoch: int, progress: bool):
        """One pass over the training rows: (the epoch's history row, whether the time budget ran
        out, its progress bar, still open for the validation scores)."""
        from tqdm.auto import tqdm

        cfg, dist = self.cfg, self.dist
        t0 = time.perf_counter()
        order = _epoch_order(self.rng, self.train_y, cfg.balance, self.num_classes)
        self.net.train()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(total=len(self.global_sizes), desc=f"epoch {epoch}/{cfg.max_epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True)
        out_of_time = False
        for step, (xs, ys) in enumerate(batches(self.tensors, self.model.inputs, self.train_idx, self.train_y,
                                                cfg.batch_size, self.device, order, self.part)):
            if cfg.schedule == "cosine":
                self._anneal((epoch - 1) * len(self.global_sizes) + step)
            n, loss, hits = self._step(step, xs, ys)
            if n:
                seen, loss_sum, correct = seen + n, loss_sum + loss * n, correct + hits
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.3f}", refresh=False)
            if cfg.time_budget is not None and dist.any(time.perf_counter() - self.start > cfg.time_budget):
                out_of_time = True
                break
        train_seconds = time.perf_counter() - t0
        loss_sum, correct, seen = dist.all_sum([loss_sum, correct, seen])
        seen = int(seen)
        return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                "train_samples": seen, "lr": self.optimizer.param_groups[0]["lr"], "train_seconds": train_seconds,
                "_started": t0}, out_of_time, bar

    def _anneal(self, steps_done: int) -> None:
        """The cosine schedule's rate for the next step. Progress is the larger of the steps done
        out of max_epochs' and, with a time budget, the time spent out of it (on one process only:
        ranks of a distributed run could read their clocks differently and step apart). Our own
        because torch's schedulers count steps only, and a budgeted run's step count is unknown."""
        cfg = self.cfg
        progress = steps_done / (cfg.max_epochs * len(self.global_sizes))
        if cfg.time_budget is not None and not self.dist.enabled:
            progress = max(progress, (time.perf_counter() - self.start) / cfg.time_budget)
        progress = min(progress, 1.0)
        scale = progress / COSINE_WARMUP if progress < COSINE_WARMUP else \
            0.5 * (1 + math.cos(math.pi * (progress - COSINE_WARMUP) / (1 - COSINE_WARMUP)))
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * max(scale, 1e-3)  # never quite 0: the last steps still move

    def _step(self, step: int, xs, ys) -> tuple[int, float, int]:
        """One optimiser step: (rows this rank trained on, their mean loss, correct predictions)."""
        with autocast(self.device, self.use_amp):
            loss, logits = member_loss(self.criterion, self.net(*xs), ys)  # one model, or each member of an ensemble
        n = self.local_sizes[step] if self.part else len(ys)
        # Scaled so that DDP's average over ranks is the whole batch's mean loss gradient.
        scaled = loss * (n * self.dist.world / self.global_sizes[step]) if self.part else loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(scaled).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return n, float(loss.detach()), int((logits.argmax(1) == ys).sum())

    def validate(self, val_idx: np.ndarray, val_y: np.ndarray) -> dict:
        cfg, device = self.cfg, self.device
        logits = predict_logits(self.model, self.tensors, val_idx, cfg.eval_batch_size, device, self.use_amp, self.dist)
        with torch.no_grad():
            loss = float(self.criterion(torch.from_numpy(logits).to(device), torch.from_numpy(val_y.astype(np.int64)).to(device)))
        predicted = logits.argmax(1)
        return {"val_loss": loss, **{f"val_{k}": v for k, v in classification_metrics(val_y, predicted).items()},
                "val_predicted_classes": int(len(np.unique(predicted)))}


def _epoch_order(rng: np.random.Generator, y: np.ndarray, balance: str, num_classes: int) -> np.ndarray:
    """Positions into the training rows for one epoch.

    `weights`: class-balanced sampling with replacement, as many draws as training rows.
    (`undersample` is applied once to the training rows before fit, see run.py.)
    """
    n = len(y)
    if balance != "weights":
        return rng.permutation(n)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    p = 1.0 / counts[y]
    return rng.choice(n, size=n, replace=True, p=p / p.sum())



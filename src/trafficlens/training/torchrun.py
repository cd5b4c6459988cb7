"""Data-parallel training with `torch.distributed`: one process per CPU share or GPU.

    torchrun --nproc-per-node 2 -m trafficlens train ds/iot --model chen-cnn -o runs/cnn
    trafficlens train ds/iot --model chen-cnn -o runs/cnn --nproc 2      # the same, launched for you

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group (NCCL on GPU,
gloo on CPU). Every rank computes the same split and the same shuffled order of global batches
from the seed; each global batch of `batch_size` rows is cut into `world` contiguous parts and
rank r reads only part r (from whichever shards hold those rows). Each rank's loss is scaled
by (its rows x world / global rows), so DistributedDataParallel's gradient average equals the
gradient of the whole batch's mean loss: the updates are those of single-process training up to
floating-point summation order, BatchNorm statistics (per rank on CPU; SyncBatchNorm on GPU)
and dropout masks. Validation and test rows are split across ranks too and the logits gathered,
so every rank takes the same early-stopping decision; rank 0 writes the bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from trafficlens.errors import ConfigError


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device. world == 1: plain training."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, n: int) -> np.ndarray:
        """This rank's positions among n: the r-th of `world` contiguous, nearly equal parts."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. out of time): ranks must stop together."""
        return self.all_sum([1.0 if flag else 0.0])[0] > 0 if self.enabled else flag

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Concatenate every rank's rows, in rank order."""
        if not self.enabled:
            return array
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, array)
        return np.concatenate(parts)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def _rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def main_process() -> bool:
    """Whether this process is rank 0 (or alone): the one that checks and writes the run's
    directory. Known from torchrun's environment before the process group exists."""
    return world_from_env() <= 1 or _rank_from_env() == 0


def init(cfg) -> DistContext:
    """Seed, pick the device and, under torchrun, join the process group."""
    from trafficlens.training.device import setup

    device = setup(cfg)
    world = world_from_env()
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    rank = _rank_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        # The processes on one machine share its cores.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(cfg.num_threads or max(1, cores // local_world))
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The module to train: DistributedDataParallel around `model` when there are several ranks."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[ctx.device.index])
    return DistributedDataParallel(model)


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m trafficlens ARGS` under torchrun with `nproc` processes; its exit status."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "trafficlens", *args]
    return subprocess.call(command)

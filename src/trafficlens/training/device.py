"""Where training and inference run: the device, seeds and CPU threads."""

from __future__ import annotations

import numpy as np
import torch

from trafficlens.errors import ConfigError
from trafficlens.system import cores


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu" or "cuda" as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def setup(cfg) -> torch.device:
    """Seed every generator, pick the device, use all CPU cores (or `cfg.num_threads`)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or cores())
    return device

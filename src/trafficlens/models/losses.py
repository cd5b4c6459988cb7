"""Losses: cross-entropy, class-weighted cross-entropy, and Ge 2021's class-weighted focal loss.

Focal loss (Ge 2021, section "Result"; Lin et al. 2017):
    L = -alpha_y (1 - q_y)^gamma log q_y, averaged over the batch,
with alpha_c inversely proportional to the number of training samples of class c, normalised
so that the average weight per training sample is 1 (alpha_c = N / (C n_c)) and gamma = 2 by default. gamma = 0 gives weighted CE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trafficlens.errors import ConfigError

LOSSES = ("ce", "weighted-ce", "focal")


def inverse_frequency(counts: np.ndarray) -> torch.Tensor:
    """alpha_c = N / (C * n_c) for classes present; 0 weight for absent classes."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    alpha = np.zeros_like(counts)
    alpha[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(alpha, dtype=torch.float32)


class FocalLoss(nn.Module):
    def __init__(self, alpha: torch.Tensor | None = None, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha if alpha is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)  # (B,) log q_y
        loss = -((1.0 - logp.exp()) ** self.gamma) * logp
        if self.alpha.numel():
            loss = loss * self.alpha[target]
        return loss.mean()


def make_loss(name: str, class_counts: np.ndarray, gamma: float = 2.0) -> nn.Module:
    """`class_counts`: training samples per class index (after balancing)."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted-ce":
        return nn.CrossEntropyLoss(weight=inverse_frequency(class_counts))
    if name == "focal":
        return FocalLoss(inverse_frequency(class_counts), gamma)
    raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")

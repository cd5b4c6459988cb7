"""Several copies of one network trained side by side, answering as one model (a deep ensemble,
Lakshminarayanan et al. 2017).

Each member starts from its own random initialisation and draws its own dropout masks; while
training, `forward` returns every member's logits (K, B, C) and the trainer gives each member
its own loss (`member_loss`), so the members learn independently from the same batches. In
evaluation `forward` returns the log of the members' mean probability (B, C): logits whose
softmax is the ensemble's probability, so predict, export, calibration and the group decisions
see one ordinary model. Why it is worth K times the compute for tl-fusion: on iot-sentinel split
by capture, three members averaged gained 0.02 macro-F1 over one network on the mean of three
splits and on each of them (benchmarks/RESULTS.md, issue 15); members from different
initialisations err differently where one session's evidence is weak.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn as nn

from trafficlens.models.layers import TrafficModel

_MEMBER_PREFIX = re.compile(r"^members\.\d+\.")


class Members(TrafficModel):
    """K networks of one kind; `cfg` is theirs (what the bundle saves and rebuilds from)."""

    def __init__(self, members: list[TrafficModel], cfg) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = cfg
        self.inputs = members[0].inputs
        self.num_features = len(members) * members[0].num_features  # the members' vectors side by side

    def fit_inputs(self, tensors, rows: np.ndarray) -> None:
        for member in self.members:
            member.fit_inputs(tensors, rows)

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([member.forward_features(*xs) for member in self.members])  # (K, B, ...)

    def features_for_gradients(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([member.features_for_gradients(*xs) for member in self.members])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = torch.stack([member.forward_head(f, pre_logits) for member, f in zip(self.members, x)])  # (K, B, C)
        if pre_logits:
            return torch.cat(list(out), dim=-1)
        if self.training:
            return out
        return mean_probability_logits(out)


def mean_probability_logits(member_logits: torch.Tensor) -> torch.Tensor:
    """(K, B, C) logits -> (B, C) log of the members' mean probability."""
    return torch.logsumexp(member_logits.float().log_softmax(dim=-1), dim=0) - math.log(member_logits.shape[0])


def member_loss(criterion, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits to score): a model's training output is (B, C), or (K, B, C) from `Members`,
    whose loss is the mean of each member's own (not the loss of their average, which would
    train the members as one model and lose what makes them differ)."""
    if logits.dim() == 2:
        return criterion(logits.float(), y), logits
    loss = torch.stack([criterion(member.float(), y) for member in logits]).mean()
    return loss, mean_probability_logits(logits.detach())


def member_key(name: str) -> str:
    """A parameter's name in one member: `members.2.blocks.0...` -> `blocks.0...`."""
    return _MEMBER_PREFIX.sub("", name)

"""Ge et al. 2021, Tables 2-4: the CNN-LSTM joint network, two branches on the same session.

    left  (image):   conv 3x3 (256) -> conv 3x3 (128) -> batch norm -> inception (256)
                     -> PrimaryCaps (32 x 8-d) -> DigitCaps (10 x 12-d)          -> 120
    right (packets): ELMo + BiLSTM + self-attention, as in `ge-elmo-lstm-attention` -> 256
    concat (376) -> FC 512 -> 64 -> classes (Table 4)

Choices where the paper is ambiguous or inconsistent:
- The paper first says the left input is the session picture, then that both sides take the
  same m x n packet matrix. A 6 x 96 matrix is too short for two 3x3 convolutions and a 6x6
  capsule kernel, so the left branch takes the session image (as `ge-inception-capsnet`) and
  the right branch the packets.
- Table 2's inception rows read 1x1 (128) | 1x1 -> 3x3 (64) | 3x3 -> 1x1 (64); we take the
  third as GoogLeNet's 3x3 max-pool -> 1x1 branch; 128 + 64 + 64 = 256 as the text says.
- The map after the two convolutions is resized to 12x12 (adaptive average pooling) when it is
  not already, as in `ge-inception-capsnet`, so the routing cost does not grow with the image.
- The left branch reads the paper's 20x20 (the first 400 bytes of any session image), as
  `ge-inception-capsnet` does; `--set image_side=28` reads 784.

On a CPU budget, `--set 'conv_channels=[64,32]' --set primary_caps=8` (a quarter of the stem's
widths, 8 capsule types of 32) trains about 3x faster and scores higher in 300 s on 2 cores
(benchmarks/RESULTS.md, issue 18); it is not Table 2's network, so it is not the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from trafficlens.models.ge_capsnet import TRAINING, CapsuleBranch, ge_image, mlp
from trafficlens.models.ge_lstm import AttentionLSTM
from trafficlens.models.layers import TrafficModel, unit_bytes
from trafficlens.models.registry import register_model

PAPER = "Ge et al. 2021, Front. Neurorobot."


@dataclass
class GeJointConfig:
    crops_image: ClassVar[bool] = True  # the first 400 bytes of any image, as ge-inception-capsnet
    num_classes: int = 10
    image_side: int = 20
    packets: int = 6
    packet_bytes: int = 96
    conv_channels: tuple[int, ...] = (256, 128)
    grid: int = 12
    primary_caps: int = 32
    primary_dim: int = 8
    digit_caps: int = 10
    digit_dim: int = 12
    routing_iterations: int = 3
    elmo_hidden: int = 128
    lstm_hidden: int = 128
    scaled: bool = True
    hidden: tuple[int, ...] = (512, 64)


class GeCNNLSTM(TrafficModel):
    inputs = ("image", "packets")

    def __init__(self, cfg: GeJointConfig):
        super().__init__()
        self.cfg = cfg
        self.left = CapsuleBranch(cfg.image_side, tuple((c, 3) for c in cfg.conv_channels), cfg.grid, cfg.primary_caps,
                                  cfg.primary_dim, cfg.digit_caps, cfg.digit_dim, cfg.routing_iterations)
        self.right = AttentionLSTM(cfg.packet_bytes, cfg.elmo_hidden, cfg.lstm_hidden, cfg.scaled)
        self.fc = mlp((cfg.digit_caps * cfg.digit_dim + self.right.out_dim, *cfg.hidden))
        self.num_features = cfg.hidden[-1]
        self.head = nn.Linear(self.num_features, cfg.num_classes)

    def forward_features(self, image: torch.Tensor, packets: torch.Tensor) -> torch.Tensor:
        left = self.left(ge_image(image, self.cfg.image_side)).flatten(1)  # (B, 120)
        right = self.right(unit_bytes(packets))  # (B, 256)
        return torch.cat([left, right], dim=1)  # (B, 376)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(x)
        return x if pre_logits else self.head(x)


@register_model("ge-cnn-lstm", config=GeJointConfig, paper=PAPER, inputs=("image", "packets"), training=TRAINING,
                description="CapsNet image branch + attention-LSTM packet branch (Tables 2-4)")
def ge_cnn_lstm(cfg: GeJointConfig) -> GeCNNLSTM:
    return GeCNNLSTM(cfg)

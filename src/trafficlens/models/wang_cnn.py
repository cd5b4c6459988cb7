"""Wang et al. 2017, the USTC-TK2016 CNNs on a session's first 784 bytes (comparison baselines).

    wang-1dcnn: bytes (K) -> conv1d 25 (32) + ReLU -> max-pool 3 -> conv1d 25 (64) + ReLU
                -> max-pool 3 -> dense 1024 + ReLU -> dropout -> classes
    wang-2dcnn: image (28x28) -> conv 5x5 (32) + ReLU -> max-pool 2 -> conv 5x5 (64) + ReLU
                -> max-pool 2 -> dense 1024 + ReLU -> dropout -> classes

From "End-to-end encrypted traffic classification with one-dimensional convolution neural
networks" (ISI 2017) and "Malware traffic classification using convolutional neural network
for representation learning" (ICOIN 2017); those papers are not in ../shared/papers, so the
layer sizes follow their commonly reproduced description. Convolutions use "same" padding and
pooling rounds up, so any length (1-D) or square side (2-D) works; dropout 0.5 is our choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from trafficlens.models.layers import TrafficModel, square_image, unit_bytes
from trafficlens.models.registry import register_model

PAPER = "Wang et al. 2017 (USTC-TK2016)"


@dataclass
class Wang1DConfig:
    num_classes: int = 10
    image_bytes: int = 784
    channels: tuple[int, ...] = (32, 64)
    kernel: int = 25
    hidden: int = 1024
    dropout: float = 0.5


@dataclass
class Wang2DConfig:
    num_classes: int = 10
    image_side: int = 28
    channels: tuple[int, ...] = (32, 64)
    kernel: int = 5
    hidden: int = 1024
    dropout: float = 0.5


class WangCNN(TrafficModel):
    inputs = ("image",)

    def __init__(self, cfg: Wang1DConfig | Wang2DConfig, dims: int):
        super().__init__()
        self.cfg, self.dims = cfg, dims
        conv, pool = (nn.Conv1d, nn.MaxPool1d) if dims == 1 else (nn.Conv2d, nn.MaxPool2d)
        stride = 3 if dims == 1 else 2
        size = cfg.image_bytes if dims == 1 else cfg.image_side
        layers: list[nn.Module] = []
        cin = 1
        for cout in cfg.channels:
            layers += [conv(cin, cout, cfg.kernel, padding=cfg.kernel // 2), nn.ReLU(inplace=True),
                       pool(stride, ceil_mode=True)]
            cin, size = cout, -(-size // stride)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(cin * size**dims, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout))
        self.num_features = cfg.hidden
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        if self.dims == 1:
            x = unit_bytes(image).unsqueeze(1)  # (B, 1, K)
        else:
            x = square_image(image, self.cfg.image_side)  # (B, 1, S, S)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(x.flatten(1))
        return x if pre_logits else self.head(x)


@register_model("wang-1dcnn", config=Wang1DConfig, paper=PAPER, inputs=("image",),
                description="1-D CNN on the first bytes (comparison baseline)")
def wang_1dcnn(cfg: Wang1DConfig) -> WangCNN:
    return WangCNN(cfg, dims=1)


@register_model("wang-2dcnn", config=Wang2DConfig, paper=PAPER, inputs=("image",),
                description="2-D CNN on the first bytes as an image (comparison baseline)")
def wang_2dcnn(cfg: Wang2DConfig) -> WangCNN:
    return WangCNN(cfg, dims=2)

"""Chen et al. 2023, section 3.2.2 (1): the spatial model, a CNN on the session image.

    image (35x35 bytes / 255)
    -> [conv 3x3 + BN + ReLU -> max-pool 2] x 2 -> [conv 3x3 + BN + ReLU] x 2
    -> flatten -> dense 256 + BN + ReLU -> dense 128 + BN + ReLU -> dense classes

Choices where the paper is ambiguous:
- The paper gives four conv2d, two max-pooling, a flatten and three dense layers, each with
  batch normalisation, and the pattern INPUT -> [CONV x N -> POOL] x M -> FC x K, but no widths
  or kernel sizes. We use 3x3 kernels, widths (8, 16, 32, 64), and pool after each of the
  first two convolutions, chosen for the project's bar of one 100 k-session epoch in under 40 s
  on 2 CPU cores (issue 18). The widths before, (8, 32, 64, 128), took about 60 s and scored
  the same within the seed spread: iot-sentinel split by capture, 3 seeds, macro-F1 0.717 +-
  0.004 against 0.725 +- 0.012 (benchmarks/RESULTS.md, "chen-cnn at half the widths").
  `channels` changes them; a trained run keeps the widths it was trained with.
- Model A takes this network's spatial feature vector by global average pooling of the last
  convolution (Figure 5), so it has `channels[-1]` = 64 values with these widths (the paper's
  Figure 11 extracts 256, which `channels=(8, 32, 64, 256)` gives, at about a third of the speed).
- Any square side >= 4 works (the flatten size follows the side); max-pooling rounds down,
  as in Keras, which the paper used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from trafficlens.errors import ConfigError
from trafficlens.models.layers import TrafficModel, square_image
from trafficlens.models.registry import register_model

PAPER = "Chen et al. 2023, Comput. Intell. Neurosci."


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@dataclass
class ChenCNNConfig:
    num_classes: int = 10
    image_side: int = 35
    channels: tuple[int, ...] = (8, 16, 32, 64)
    dense: tuple[int, ...] = (256, 128)


class ChenCNN(TrafficModel):
    inputs = ("image",)

    def __init__(self, cfg: ChenCNNConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        if len(c) != 4:
            raise ConfigError(f"chen-cnn channels must list 4 widths, got {c}")
        if cfg.image_side < 4:
            raise ConfigError(f"chen-cnn needs an image side of at least 4 (two 2x2 poolings), got {cfg.image_side}")
        self.features = nn.Sequential(
            *conv_bn_relu(1, c[0]), nn.MaxPool2d(2),
            *conv_bn_relu(c[0], c[1]), nn.MaxPool2d(2),
            *conv_bn_relu(c[1], c[2]), *conv_bn_relu(c[2], c[3]),
        ).to(memory_format=torch.channels_last)  # NHWC: ~20% faster with oneDNN on CPU
        side = cfg.image_side // 4  # after two 2x2 max-pools
        dims = (c[3] * side * side, *cfg.dense)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.dense = nn.Sequential(*layers)
        self.num_features = dims[-1]
        self.spatial_features = c[3]  # width of the global-average-pooled vector (Model A)
        self.head = nn.Linear(self.num_features, cfg.num_classes)

    def drop_head(self) -> None:
        """Keep only the convolutional feature extractor (for the fusion models)."""
        self.dense, self.head = nn.Identity(), nn.Identity()

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        x = square_image(image, self.cfg.image_side)  # (B, 1, S, S)
        return self.features(x.contiguous(memory_format=torch.channels_last))  # (B, C, S/4, S/4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dense(x.flatten(1))
        return x if pre_logits else self.head(x)


@register_model("chen-cnn", config=ChenCNNConfig, paper=PAPER, inputs=("image",),
                description="4-conv CNN on the session image (spatial features)")
def chen_cnn(cfg: ChenCNNConfig) -> ChenCNN:
    return ChenCNN(cfg)

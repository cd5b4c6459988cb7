"""Chen et al. 2023, section 3.3.1: the multimodal framework, two ways of fusing CNN and GRU.

Model A (`chen-model-a`, pretraining, Figure 5):
    trained chen-cnn -> global average pooling (spatial features, 64)   \\
    trained chen-gru -> last hidden state (sequential features, 128)     -> concat theta (192)
    -> feature weighting, eq. (3)-(5): w = tanh(U theta + b), alpha = softmax(w), theta_r = alpha * theta
    -> dense -> softmax
  The two branches are frozen (eval mode, no gradients); only the weighting and the dense layer
  learn. `trafficlens train --model chen-model-a --from runs/cnn,runs/gru` loads the branches
  from two trained runs; `model.weighting.weights` holds alpha (B, 192) after a forward pass
  (the widths follow the two runs: the paper extracts 256 + 128).

Model B (`chen-model-b`, joint training, Figure 6):
    chen-cnn and chen-gru branches built fresh and trained end to end in one network,
    concat (192) -> dense 256 + ReLU -> dense classes.

Choices where the paper is ambiguous:
- theta_r is scaled by the number of features (see `FeatureWeighting`): alpha sums to one, so
  without it every feature shrinks 256-fold before the dense layer.
- Figure 6 is not described beyond "combined in one network"; Model B concatenates the same
  two feature vectors as Model A and adds one hidden dense layer to "relearn" them (the
  paper's "depth"), without the weighting layer, which is what distinguishes Model A.
- Both branches read the `image` tensor: the CNN as a picture, the GRU as a byte sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trafficlens.models.layers import FeatureWeighting, TrafficModel
from trafficlens.models.registry import create_model, register_model

PAPER = "Chen et al. 2023, Comput. Intell. Neurosci."


@dataclass
class ChenFusionConfig:
    num_classes: int = 10
    image_side: int = 35
    image_bytes: int = 1225
    cnn: dict[str, Any] = field(default_factory=dict)  # chen-cnn settings (a trained run's config)
    gru: dict[str, Any] = field(default_factory=dict)  # chen-gru settings
    hidden: int = 256  # Model B only


def build_branches(cfg: ChenFusionConfig) -> tuple[nn.Module, nn.Module]:
    cnn = create_model("chen-cnn", **{"num_classes": cfg.num_classes, "image_side": cfg.image_side, **cfg.cnn})
    gru = create_model("chen-gru", **{"num_classes": cfg.num_classes, "image_bytes": cfg.image_bytes, **cfg.gru})
    cnn.drop_head()  # the fusion uses only their feature vectors
    gru.drop_head()
    return cnn, gru


def spatial_sequential(cnn: nn.Module, gru: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """theta = [GAP(cnn features); gru features]: (B, 128 + 128)."""
    spatial = F.adaptive_avg_pool2d(cnn.forward_features(image), 1).flatten(1)
    return torch.cat([spatial, gru.forward_features(image)], dim=1)


class ChenModelA(TrafficModel):
    inputs = ("image",)

    def __init__(self, cfg: ChenFusionConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn, self.gru = build_branches(cfg)
        for p in [*self.cnn.parameters(), *self.gru.parameters()]:
            p.requires_grad_(False)
        n = self.cnn.spatial_features + self.gru.num_features
        self.weighting = FeatureWeighting(n)
        self.num_features = n
        self.head = nn.Linear(n, cfg.num_classes)

    def train(self, mode: bool = True) -> "ChenModelA":
        super().train(mode)
        self.cnn.eval()  # frozen: batch-norm statistics stay those of the trained run
        self.gru.eval()
        return self

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            theta = spatial_sequential(self.cnn, self.gru, image)
        return self.weighting(theta)  # (B, n) theta_r

    def features_for_gradients(self, image: torch.Tensor) -> torch.Tensor:
        return self.weighting(spatial_sequential(self.cnn, self.gru, image))  # the branches with gradients

    @classmethod
    def from_branches(cls, num_classes: int, input_shapes: dict, branches: dict[str, tuple[Any, dict]]) -> "ChenModelA":
        """Model A on top of trained `chen-cnn` and `chen-gru` models (`branches`: name -> (model,
        its config dict)): their weights, all but their heads, are copied in and frozen."""
        from trafficlens.models.registry import create_model

        cnn, gru = branches["chen-cnn"], branches["chen-gru"]
        model = create_model("chen-model-a", num_classes, input_shapes, cnn=cnn[1], gru=gru[1])
        for branch, (trained, _) in ((model.cnn, cnn), (model.gru, gru)):
            state = trained.state_dict()
            branch.load_state_dict({k: state[k] for k in branch.state_dict()})
        return model

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)


class ChenModelB(TrafficModel):
    inputs = ("image",)

    def __init__(self, cfg: ChenFusionConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn, self.gru = build_branches(cfg)
        n = self.cnn.spatial_features + self.gru.num_features
        self.fc = nn.Sequential(nn.Linear(n, cfg.hidden), nn.ReLU(inplace=True))
        self.num_features = cfg.hidden
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        return spatial_sequential(self.cnn, self.gru, image)  # (B, n)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(x)
        return x if pre_logits else self.head(x)


@register_model("chen-model-a", config=ChenFusionConfig, paper=PAPER, inputs=("image",),
                description="Frozen trained CNN + GRU, learned feature weighting (pretraining)",
                from_runs=("chen-cnn", "chen-gru"), assemble=ChenModelA.from_branches)
def chen_model_a(cfg: ChenFusionConfig) -> ChenModelA:
    return ChenModelA(cfg)


@register_model("chen-model-b", config=ChenFusionConfig, paper=PAPER, inputs=("image",),
                description="CNN + GRU branches trained jointly end to end")
def chen_model_b(cfg: ChenFusionConfig) -> ChenModelB:
    return ChenModelB(cfg)

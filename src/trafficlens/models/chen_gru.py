"""Chen et al. 2023, section 4.2: the sequential model, a GRU over the session's bytes as tokens.

    image bytes (first `max_tokens` of the session, each byte a token 0..255)
    -> embedding (32) -> GRU (128) -> last hidden state (the 128 sequential features)
    -> dense classes

Choices where the paper is ambiguous:
- The paper embeds "the value corresponding to each byte of the network flow" and feeds the
  sequence to a GRU giving 128 features, without a length. A GRU is sequential, so its cost
  grows with the length: on 2 CPU cores it trains at ~1200 samples/s over 128 tokens and ~540
  over 256. We take the first `max_tokens` = 128 bytes of the same byte string the image is
  made of (set `max_tokens` up to the image size, e.g. 1225, where a GPU is available).
- Zero padding of short sessions stays token 0 (no separate pad index): the paper treats the
  zero-filled flow like the image does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from trafficlens.models.layers import TrafficModel
from trafficlens.models.registry import register_model

PAPER = "Chen et al. 2023, Comput. Intell. Neurosci."


@dataclass
class ChenGRUConfig:
    num_classes: int = 10
    image_bytes: int = 1225
    max_tokens: int = 128
    embed_dim: int = 32
    hidden: int = 128


class ChenGRU(TrafficModel):
    inputs = ("image",)

    def __init__(self, cfg: ChenGRUConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = min(cfg.max_tokens, cfg.image_bytes)
        self.embed = nn.Embedding(256, cfg.embed_dim)
        self.gru = nn.GRU(cfg.embed_dim, cfg.hidden, batch_first=True)
        self.num_features = cfg.hidden
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def drop_head(self) -> None:
        """Keep only the embedding and GRU (for the fusion models)."""
        self.head = nn.Identity()

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        tokens = image[:, : self.tokens].long()  # (B, T) byte values
        _, h = self.gru(self.embed(tokens))  # h: (1, B, H)
        return h[-1]  # (B, H)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)


@register_model("chen-gru", config=ChenGRUConfig, paper=PAPER, inputs=("image",),
                description="GRU over the session's bytes as tokens (sequential features)")
def chen_gru(cfg: ChenGRUConfig) -> ChenGRU:
    return ChenGRU(cfg)

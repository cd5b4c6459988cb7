"""Chen et al. 2023, section 3.2.2 (2): a hierarchical attention network, byte -> packet -> session.

    packets (M x B bytes as tokens) -> embedding (32)
    -> per packet: BiGRU over bytes (32 per direction) -> byte attention -> packet vector (64)
    -> BiGRU over packets (64 per direction) -> packet attention -> session vector (128)
    -> dense classes

Attention as in Yang et al. 2016 (the HAN the paper cites): u = tanh(W h + b),
a = softmax(u . u_ctx). After a forward pass `model.byte_attention.weights` is (B, M, B) and
`model.packet_attention.weights` is (B, M): the two columns of the paper's Table 4.

Choices where the paper is ambiguous: widths are not given; we use HAN-sized ones (Yang et al.
use 50 per direction). Packets that are all zero bytes (padding of short sessions) are masked
out of the packet attention; a session with no packets at all attends uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from trafficlens.models.layers import AdditiveAttention, TrafficModel
from trafficlens.models.registry import register_model

PAPER = "Chen et al. 2023, Comput. Intell. Neurosci."


@dataclass
class ChenHANConfig:
    num_classes: int = 10
    packets: int = 6
    packet_bytes: int = 96
    embed_dim: int = 32
    byte_hidden: int = 32
    packet_hidden: int = 64


class ChenHAN(TrafficModel):
    inputs = ("packets",)

    def __init__(self, cfg: ChenHANConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(256, cfg.embed_dim)
        self.byte_gru = nn.GRU(cfg.embed_dim, cfg.byte_hidden, batch_first=True, bidirectional=True)
        self.byte_attention = AdditiveAttention(2 * cfg.byte_hidden)
        self.packet_gru = nn.GRU(2 * cfg.byte_hidden, cfg.packet_hidden, batch_first=True, bidirectional=True)
        self.packet_attention = AdditiveAttention(2 * cfg.packet_hidden)
        self.num_features = 2 * cfg.packet_hidden
        self.head = nn.Linear(self.num_features, cfg.num_classes)

    def forward_features(self, packets: torch.Tensor) -> torch.Tensor:
        b, m, n = packets.shape
        tokens = packets.long().reshape(b * m, n)  # (B*M, n) one packet per row
        h, _ = self.byte_gru(self.embed(tokens))  # (B*M, n, 2Hb)
        p = self.byte_attention(h).view(b, m, -1)  # (B, M, 2Hb)
        self.byte_attention.weights = self.byte_attention.weights.view(b, m, n)
        h, _ = self.packet_gru(p)  # (B, M, 2Hp)
        present = packets.amax(dim=2) > 0  # (B, M) packets with any non-zero byte
        return self.packet_attention(h, mask=present)  # (B, 2Hp)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)


@register_model("chen-han", config=ChenHANConfig, paper=PAPER, inputs=("packets",),
                description="Hierarchical attention network, byte -> packet -> session")
def chen_han(cfg: ChenHANConfig) -> ChenHAN:
    return ChenHAN(cfg)

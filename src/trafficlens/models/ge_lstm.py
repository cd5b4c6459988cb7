"""Ge et al. 2021, Table 3: ELMo-style embedding + BiLSTM + self-attention on the first packets.

    packets (6 x 96 bytes, each packet one "word" of 96 values / 255)
    -> ELMo: forward and backward 2-layer LSTM stacks (96 -> 128 -> 128), per-layer vectors
       [fwd; bwd] mixed with learned softmax weights s and a scale gamma
    -> BiLSTM (128 per direction = 256) + ReLU -> batch norm -> self-attention -> mean over packets
    -> batch norm -> FC 64 + ReLU -> classes

Choices where the paper is ambiguous or inconsistent:
- ELMo is built as in Peters et al. 2018 (separate forward and backward stacks, so layer 2 of
  each direction sees only layer 1 of the same direction: the 128*128 weight matrices of
  Table 3). A layer's vector is [forward; backward], 256 values; the paper calls the LSTM size
  128, which we read as per direction. The next BiLSTM therefore takes 256 inputs, not 128.
- "Two-way LSTM 128*256" whose output is "256": 128 per direction, concatenated.
- Self-attention with Q = K = V (the paper's dot-product form) gives one vector per packet; the
  paper then speaks of one 256 vector, so we average over packets. Scores are divided by
  sqrt(256) by default (`scaled`): after batch norm, unscaled 256-d dot products have a spread
  of about 16 and the softmax saturates. `scaled=False` gives the paper's exact form.
- The table's "ReLU" on ELMo LSTMs is not applied: LSTMs already squash with tanh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from trafficlens.models.ge_capsnet import PAPER, TRAINING
from trafficlens.models.layers import DotSelfAttention, TrafficModel, unit_bytes
from trafficlens.models.registry import register_model


class ElmoEmbedding(nn.Module):
    """Two directional 2-layer LSTM stacks; output gamma * sum_k s_k [fwd_k; bwd_k]: (B, T, 2H)."""

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.fwd = nn.ModuleList(nn.LSTM(dims[i], hidden, batch_first=True) for i in range(layers))
        self.bwd = nn.ModuleList(nn.LSTM(dims[i], hidden, batch_first=True) for i in range(layers))
        self.mix = nn.Parameter(torch.zeros(layers))  # s = softmax(mix)
        self.gamma = nn.Parameter(torch.ones(()))
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, in_dim)
        f, b = x, x.flip(1)  # the backward stack reads the packets last to first
        reps = []
        for lf, lb in zip(self.fwd, self.bwd):
            f, _ = lf(f)
            b, _ = lb(b)
            reps.append(torch.cat([f, b.flip(1)], dim=-1))  # (B, T, 2H), aligned by position
        s = self.mix.softmax(0)
        return self.gamma * sum(w * r for w, r in zip(s, reps))


class AttentionLSTM(nn.Module):
    """ELMo -> BiLSTM + ReLU -> BN -> self-attention -> mean over T -> BN: (B, T, F) -> (B, 2H)."""

    def __init__(self, in_dim: int, elmo_hidden: int, lstm_hidden: int, scaled: bool):
        super().__init__()
        self.elmo = ElmoEmbedding(in_dim, elmo_hidden)
        self.lstm = nn.LSTM(self.elmo.out_dim, lstm_hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * lstm_hidden
        self.bn1 = nn.BatchNorm1d(self.out_dim)
        self.attention = DotSelfAttention(scaled)
        self.bn2 = nn.BatchNorm1d(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.elmo(x))  # (B, T, 2H)
        h = self.bn1(torch.relu(h).transpose(1, 2)).transpose(1, 2)  # BN over channels
        h = self.attention(h).mean(dim=1)  # (B, 2H)
        return self.bn2(h)


@dataclass
class GeLSTMConfig:
    num_classes: int = 10
    packets: int = 6
    packet_bytes: int = 96
    elmo_hidden: int = 128
    lstm_hidden: int = 128
    fc_hidden: int = 64
    scaled: bool = True


class GeElmoLSTMAttention(TrafficModel):
    inputs = ("packets",)

    def __init__(self, cfg: GeLSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.branch = AttentionLSTM(cfg.packet_bytes, cfg.elmo_hidden, cfg.lstm_hidden, cfg.scaled)
        self.fc = nn.Sequential(nn.Linear(self.branch.out_dim, cfg.fc_hidden), nn.ReLU(inplace=True))
        self.num_features = cfg.fc_hidden
        self.head = nn.Linear(cfg.fc_hidden, cfg.num_classes)

    def forward_features(self, packets: torch.Tensor) -> torch.Tensor:
        return self.branch(unit_bytes(packets))  # (B, M, B) bytes -> (B, 256)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(x)
        return x if pre_logits else self.head(x)


@register_model("ge-elmo-lstm-attention", config=GeLSTMConfig, paper=PAPER, inputs=("packets",), training=TRAINING,
                description="ELMo + BiLSTM + self-attention on the first packets (Table 3)")
def ge_elmo_lstm_attention(cfg: GeLSTMConfig) -> GeElmoLSTMAttention:
    return GeElmoLSTMAttention(cfg)

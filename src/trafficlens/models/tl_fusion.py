"""`tl-fusion`: trafficlens's own model, reading every view prep writes (issue 15).

    packets  (M x B masked header+payload bytes) -> byte embedding (e) -> flatten -> linear (d)  \\
    sequence (L x [signed size, inter-arrival s]) -> [direction, log size, log gap, present] -> MLP (d)
        one token per packet: bytes (first M packets) + size/timing + learned position  (B, L, d)
    -> sequence model over the packets: pre-norm transformer (default) or bidirectional GRU
    -> attention pooling over the packets present                                    (B, d)
    stats    (flow statistics) -> signed log -> batch norm -> MLP (d), joined late  -> concat (B, 2d)
    -> dense `hidden` + GELU -> one head
    x `members` (3): networks of this shape from their own initialisations, trained side by side,
    answering with their mean probability (models/ensemble.py; `--set members=1` for one)

Why this shape: the session bytes (what the CNNs read) and the flow statistics (what the trees
read) each win on some datasets (issue 15); a packet token carries both the packet's bytes and
its size and timing, so the sequence model sees the exchange, and the statistics of the whole
flow (beyond the L packets kept) join after pooling. Byte values are embedded, not scaled:
a field's value is a category (a port, a flag, a TLS type), not a magnitude.

After a forward pass `model.packet_attention.weights` is (B, L): how much each packet weighs in
the session vector; each transformer block's `attention.weights` is (B, heads, L, L).
`use_bytes`, `use_sizes` and `use_stats` switch views off for the ablations; the inputs stay
the same three tensors so that every run goes through the same bundle, predict and serve paths.
`jitter` (off by default) augments while training: each session's inter-arrival times are
scaled by one log-normal factor and each gap by its own, as a different network or load would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trafficlens.errors import ConfigError
from trafficlens.models.ensemble import Members
from trafficlens.models.layers import AdditiveAttention, TrafficModel
from trafficlens.models.registry import register_model

ENCODERS = ("transformer", "gru")
STATS_SCALINGS = ("fitted", "batch")
MAX_MEMBERS = 16
_SCALER_ROWS = 200_000  # training rows the statistics' scaler is fitted on, at most (evenly spaced)


@dataclass
class TLFusionConfig:
    num_classes: int = 10
    packets: int = 6
    packet_bytes: int = 96
    sequence_length: int = 32
    stats_features: int = 45
    dim: int = 64  # token and session width d
    byte_dim: int = 16  # embedding per byte value
    encoder: str = "transformer"  # or "gru"
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    hidden: int = 128
    use_bytes: bool = True
    use_sizes: bool = True  # signed size, direction and inter-arrival time of each packet
    use_stats: bool = True
    jitter: float = 0.0  # training only: sigma of the log-normal factors on inter-arrival times
    stats_scaling: str = "fitted"  # "fitted": mean and variance of the training rows; "batch": batch norm
    members: int = 3  # networks trained side by side from their own initialisations, averaged (models/ensemble.py)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.dim % self.heads or (self.encoder == "gru" and self.dim % 2):
            raise ConfigError(f"dim ({self.dim}) must divide by heads ({self.heads}) and, for the GRU, by 2")
        if not (self.use_bytes or self.use_sizes or self.use_stats):
            raise ConfigError("tl-fusion needs at least one of use_bytes, use_sizes, use_stats")
        if self.stats_scaling not in STATS_SCALINGS:
            raise ConfigError(f"stats_scaling must be one of {', '.join(STATS_SCALINGS)}, got {self.stats_scaling!r}")
        if not 0 <= self.jitter <= 2:
            raise ConfigError(f"jitter must be in [0, 2] (a log-normal sigma), got {self.jitter}")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ConfigError(f"members must be in [1, {MAX_MEMBERS}], got {self.members}")


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): flow statistics span bytes to megabytes and microseconds to minutes."""
    return torch.sign(x) * torch.log1p(x.abs())


class FittedNorm(nn.Module):
    """A standard scaler with a learned affine: `fit` sets the mean and variance once from the
    training rows (`TLFusion.fit_inputs`) and nothing updates them, in training or by the batch-norm
    recalibration. Why: batch statistics of small batches (the bundled sample trains with 16) are
    noisy, and the statistics' branch then learned far less than a scaler-fed MLP does (RESULTS,
    issue 15). Not a batch norm (distributed training would turn one into a synchronised batch
    norm), but with batch norm's parameters and buffers, so a bundle of either kind loads in both."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def fit(self, x: np.ndarray) -> None:
        var = x.var(axis=0)
        self.running_mean.copy_(torch.from_numpy(x.mean(axis=0)))
        self.running_var.copy_(torch.from_numpy(np.where(var < 1e-6, 1.0, var)))  # constant in training: left unscaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key mask; `weights` keeps (B, heads, T, T)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, T, d/h)
        a = ((q @ k.transpose(-1, -2)) * (d // h) ** -0.5 + key_bias).softmax(dim=-1)  # (B, h, T, T)
        self.weights = a.detach()
        return self.out((a @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block (attention, then a 2d-wide feed-forward)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), key_bias))
        return x + self.drop(self.ff(self.norm2(x)))


@dataclass
class HiddenInputs:
    """What masked-prediction pre-training hides: `bytes` (B, M, packet_bytes) and `sizes` (B, L)
    are True where the learned `byte_vector` (byte_dim) or `size_vector` (dim) replaces the input."""

    bytes: torch.Tensor
    sizes: torch.Tensor
    byte_vector: torch.Tensor
    size_vector: torch.Tensor


# The parameters `pretrain` trains and `train --init` loads: everything before the pooling.
ENCODER_PREFIXES = ("position", "byte_embed.", "byte_proj.", "size_proj.", "blocks.", "gru.", "norm.")


class TLFusion(TrafficModel):
    inputs = ("packets", "sequence", "stats")

    def __init__(self, cfg: TLFusionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.position = nn.Parameter(0.02 * torch.randn(cfg.sequence_length, d))
        if cfg.use_bytes:
            self.byte_embed = nn.Embedding(256, cfg.byte_dim)
            self.byte_proj = nn.Sequential(nn.Linear(cfg.packet_bytes * cfg.byte_dim, d), nn.LayerNorm(d))
        if cfg.use_sizes:
            self.size_proj = nn.Sequential(nn.Linear(4, d), nn.GELU(), nn.Linear(d, d))
        if cfg.encoder == "transformer":
            self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        else:
            self.gru = nn.GRU(d, d // 2, num_layers=cfg.layers, batch_first=True, bidirectional=True,
                              dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.norm = nn.LayerNorm(d)
        self.packet_attention = AdditiveAttention(d)
        if cfg.use_stats:
            self.stats_norm = (FittedNorm if cfg.stats_scaling == "fitted" else nn.BatchNorm1d)(cfg.stats_features)
            self.stats_mlp = nn.Sequential(nn.Linear(cfg.stats_features, cfg.hidden), nn.GELU(),
                                           nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, d))
        self.fc = nn.Sequential(nn.Linear(2 * d if cfg.use_stats else d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout))
        self.num_features = cfg.hidden
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def fit_inputs(self, tensors, rows: np.ndarray) -> None:
        rows = np.unique(rows)  # sorted: reads go forward through a memory-mapped file
        if isinstance(getattr(self, "stats_norm", None), FittedNorm) and len(rows):
            if len(rows) > _SCALER_ROWS:
                rows = rows[np.linspace(0, len(rows) - 1, _SCALER_ROWS).astype(np.int64)]
            x = np.asarray(tensors["stats"][rows], np.float64)
            self.stats_norm.fit(np.sign(x) * np.log1p(np.abs(x)))

    def packet_tokens(self, packets: torch.Tensor, sequence: torch.Tensor,
                      hidden: "HiddenInputs | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) tokens and (B, L) which packets are present (always the first, so that a
        session with nothing kept still attends somewhere). `hidden` replaces some bytes' and
        some packets' size features by learned vectors (masked-prediction pre-training)."""
        cfg = self.cfg
        sequence = sequence.float()
        size, gap = sequence[..., 0], sequence[..., 1]  # (B, L): signed bytes (sign: direction), seconds
        if self.training and cfg.jitter > 0:  # one factor per session (link speed), one per gap (queueing)
            noise = torch.randn_like(gap) + torch.randn_like(gap[:, :1])
            gap = gap * torch.exp(cfg.jitter * noise / 2 ** 0.5)
        present = size != 0
        tokens = self.position.unsqueeze(0).expand(sequence.shape[0], -1, -1)
        if cfg.use_sizes:
            # scales put each feature near [0, 1]: log(1500) ~ 7.3 bytes, log(1 + 1e6 ms) ~ 14
            features = self.size_proj(torch.stack([torch.sign(size), torch.log1p(size.abs()) / 7.3,
                                                   torch.log1p(gap.clamp(min=0) * 1000) / 10, present.float()], dim=-1))
            if hidden is not None:
                features = torch.where(hidden.sizes[..., None], hidden.size_vector, features)
            tokens = tokens + features
        if cfg.use_bytes:
            m = min(packets.shape[1], sequence.shape[1])
            e = self.byte_embed(packets[:, :m].long())  # (B, M, Bb, e)
            if hidden is not None:
                e = torch.where(hidden.bytes[:, :m, :, None], hidden.byte_vector, e)
            per_packet = self.byte_proj(e.flatten(2))  # (B, M, d)
            pad = sequence.shape[1] - m
            tokens = tokens + F.pad(per_packet, (0, 0, 0, pad))
            present = present | F.pad(packets[:, :m].amax(dim=2) > 0, (0, pad))
        present = torch.cat([torch.ones_like(present[:, :1]), present[:, 1:]], dim=1)
        return tokens, present

    def encode(self, packets: torch.Tensor, sequence: torch.Tensor,
               hidden: "HiddenInputs | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) packet states after the sequence model, and (B, L) which packets are present:
        the encoder that `trafficlens pretrain` trains and `train --init` loads."""
        tokens, present = self.packet_tokens(packets, sequence, hidden)
        if self.cfg.encoder == "transformer":
            key_bias = ((~present).float() * -1e4)[:, None, None, :]  # (B, 1, 1, L): padding is never attended
            h = tokens
            for block in self.blocks:
                h = block(h, key_bias)
        else:
            h, _ = self.gru(tokens)  # (B, L, d)
        return self.norm(h), present

    def forward_features(self, packets: torch.Tensor, sequence: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        h, present = self.encode(packets, sequence)
        session = self.packet_attention(h, mask=present)  # (B, d)
        if not self.cfg.use_stats:
            return session
        return torch.cat([session, self.stats_mlp(self.stats_norm(signed_log(stats.float())))], dim=1)  # (B, 2d)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(x)
        return x if pre_logits else self.head(x)


@register_model("tl-fusion", config=TLFusionConfig, paper="trafficlens (issue 15)", inputs=("packets", "sequence", "stats"),
                description="Packet tokens (bytes + size/direction/timing) -> transformer, flow statistics joined late; "
                            "3 members averaged", saved_defaults={"members": 1})
def tl_fusion(cfg: TLFusionConfig) -> TLFusion | Members:
    if cfg.members == 1:
        return TLFusion(cfg)
    return Members([TLFusion(cfg) for _ in range(cfg.members)], cfg)

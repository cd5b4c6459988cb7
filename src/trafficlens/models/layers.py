"""Building blocks shared by the model families: capsules, attention, inception, fusion weights.

Every layer that computes attention or routing weights keeps the last ones (detached) in
`self.weights`; `attention_maps(model)` collects them after a forward pass, so explanation code
needs no change to the models.
"""

from __future__ import annotations

import abc

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class TrafficModel(nn.Module, metaclass=abc.ABCMeta):
    """Base of every registered network: `forward = forward_head(forward_features(...))`.

    Inputs are the dataset tensors named in `inputs`, raw (uint8 bytes, float32 sequences), as
    positional arguments in that order.
    """

    inputs: tuple[str, ...] = ()
    num_features: int = 0  # width of forward_head(..., pre_logits=True)

    @abc.abstractmethod
    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """The feature map or vector before the head (what fusion models and Grad-CAM take)."""

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits, or with `pre_logits` the `num_features`-wide vector before the last layer."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(*xs))

    def fit_inputs(self, tensors, rows: np.ndarray) -> None:
        """Fit what the model derives from its training inputs before the first step (a scaler);
        `fit` calls it with the training rows, not when resuming. Most models derive nothing."""

    def features_for_gradients(self, *xs: torch.Tensor) -> torch.Tensor:
        """`forward_features` with every part differentiable, for explanations (a model with
        frozen parts that runs them under no_grad overrides it)."""
        return self.forward_features(*xs)


def unit_bytes(x: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> float in [0, 1]."""
    return x.float() / 255.0


def square_image(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, K) bytes -> (B, 1, side, side) in [0, 1]; K must be side * side."""
    return unit_bytes(x).reshape(x.shape[0], 1, side, side)


def attention_maps(model: nn.Module) -> dict[str, torch.Tensor]:
    """The attention / routing weights of the last forward pass, by module name."""
    return {name: m.weights for name, m in model.named_modules() if getattr(m, "weights", None) is not None and isinstance(m.weights, torch.Tensor)}


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Capsule non-linearity: v = |s|^2 / (1 + |s|^2) * s / |s| (Sabour et al. 2017)."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    return sq / (1.0 + sq) * s / torch.sqrt(sq + eps)


class AveragePoolTo(nn.Module):
    """Adaptive average pooling of an (n, n) map to (out, out), as two matrix products over the
    windows of `nn.AdaptiveAvgPool2d` (rows floor(i n / out) to ceil((i + 1) n / out)): the same
    values, and ONNX can export it where `out` does not divide `n` (adaptive pooling cannot)."""

    def __init__(self, n: int, out: int):
        super().__init__()
        matrix = torch.zeros(out, n)
        for i in range(out):
            start, end = (i * n) // out, -(-((i + 1) * n) // out)
            matrix[i, start:end] = 1.0 / (end - start)
        self.register_buffer("matrix", matrix, persistent=False)  # derived from the shapes: not in checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, n, n) -> (B, C, out, out)
        return self.matrix @ x @ self.matrix.T


class Inception(nn.Module):
    """The inception block of Ge 2021 Table 2: 1x1 | 1x1 -> 3x3 | 3x3 max-pool -> 1x1, concatenated.

    Default widths 128 + 64 + 64 = 256 output channels, as in the paper.
    """

    def __init__(self, in_ch: int, b1: int = 128, b2: int = 64, b3: int = 64):
        super().__init__()
        self.branch1 = nn.Conv2d(in_ch, b1, 1)
        self.branch2 = nn.Sequential(nn.Conv2d(in_ch, b2, 1), nn.ReLU(inplace=True), nn.Conv2d(b2, b2, 3, padding=1))
        self.branch3 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(in_ch, b3, 1))
        self.out_channels = b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.cat([self.branch1(x), self.branch2(x), self.branch3(x)], dim=1))


class PrimaryCaps(nn.Module):
    """Convolutional capsules: conv -> (B, n_caps * H' * W', dim) -> squash."""

    def __init__(self, in_ch: int, n_caps: int = 32, dim: int = 8, kernel: int = 6, stride: int = 2):
        super().__init__()
        self.n_caps, self.dim = n_caps, dim
        self.conv = nn.Conv2d(in_ch, n_caps * dim, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.conv(x)  # (B, n_caps * dim, H', W')
        b, _, h, w = u.shape
        u = u.reshape(b, self.n_caps, self.dim, h, w).permute(0, 1, 3, 4, 2)  # (B, n_caps, H', W', dim)
        return squash(u.reshape(b, self.n_caps * h * w, self.dim))


class DigitCaps(nn.Module):
    """Capsules by dynamic routing (Sabour et al. 2017; Ge 2021 eq. 1-3), fully vectorised.

    u_hat[j|i] = W_ij u_i; then `iterations` rounds of c = softmax_j(b), s_j = sum_i c_ij u_hat,
    v_j = squash(s_j), b_ij += u_hat[j|i] . v_j. `weights` keeps the last coupling coefficients
    c, shape (B, in_caps, out_caps).
    """

    def __init__(self, in_caps: int, in_dim: int, out_caps: int = 10, out_dim: int = 12, iterations: int = 3):
        super().__init__()
        self.iterations = iterations
        self.W = nn.Parameter(0.05 * torch.randn(in_caps, out_caps, out_dim, in_dim))
        self.weights: torch.Tensor | None = None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # u: (B, I, Din) -> u_hat: (B, I, J, Dout), one batched matmul for all capsule pairs
        u_hat = torch.einsum("ijed,bid->bije", self.W, u)
        b = torch.zeros(u_hat.shape[:3], device=u.device, dtype=u_hat.dtype)  # (B, I, J)
        for r in range(self.iterations):
            c = b.softmax(dim=2)
            v = squash((c.unsqueeze(-1) * u_hat).sum(dim=1))  # (B, J, Dout)
            if r < self.iterations - 1:
                b = b + (u_hat * v.unsqueeze(1)).sum(dim=-1)
        self.weights = c.detach()
        return v


class DotSelfAttention(nn.Module):
    """Self-attention with Q = K = V = H (Ge 2021 eq. for self-attention): A = softmax(H H^T).

    `scaled` divides the scores by sqrt(d) (Vaswani et al.); the paper's form is unscaled.
    `weights` keeps A, shape (B, T, T).
    """

    def __init__(self, scaled: bool = True):
        super().__init__()
        self.scaled = scaled
        self.weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        scores = h @ h.transpose(1, 2)  # (B, T, T)
        if self.scaled:
            scores = scores / h.shape[-1] ** 0.5
        a = scores.softmax(dim=-1)
        self.weights = a.detach()
        return a @ h


class AdditiveAttention(nn.Module):
    """HAN attention pooling (Yang et al. 2016): u = tanh(W h + b), a = softmax(u . u_ctx),
    out = sum_t a_t h_t. `weights` keeps a, shape (..., T)."""

    def __init__(self, dim: int, attn_dim: int | None = None):
        super().__init__()
        attn_dim = attn_dim or dim
        self.proj = nn.Linear(dim, attn_dim)
        self.context = nn.Linear(attn_dim, 1, bias=False)
        self.weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (N, T, D) -> (N, D)
        scores = self.context(torch.tanh(self.proj(h))).squeeze(-1)  # (N, T)
        if mask is not None:
            # rows that are all padding attend uniformly instead of producing NaN
            scores = scores.masked_fill(~mask, -1e4)
        a = scores.softmax(dim=-1)
        self.weights = a.detach()
        return (a.unsqueeze(-1) * h).sum(dim=1)


class FeatureWeighting(nn.Module):
    """Chen 2023 eq. (3)-(5): w = tanh(U theta + b), alpha = softmax(w), theta_r = alpha * theta.

    theta_r is multiplied by the number of features n (a constant) so that uniform weights
    leave the features unchanged: without it every feature shrinks by 1/n (1/256 here) and the
    dense layer after it must grow weights n times larger before it learns anything. `weights`
    keeps alpha, shape (B, n).
    """

    def __init__(self, n: int):
        super().__init__()
        self.score = nn.Linear(n, n)
        self.weights: torch.Tensor | None = None

    def forward(self, theta: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n)
        alpha = torch.tanh(self.score(theta)).softmax(dim=-1)
        self.weights = alpha.detach()
        return theta * alpha * theta.shape[-1]

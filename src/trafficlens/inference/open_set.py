"""Unknown devices by distance in embedding space: how far a session lies from every session the
model was trained on.

A session model's probabilities say which known class a session is most like, not whether it
is like any: a device type never trained on gets a sure label when its sessions resemble one
known class. The cosine distance from a session's embedding (`runtime.WithEmbedding`: the vector
before the model's last layer, unit length) to its nearest neighbour among training sessions'
embeddings (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors") asks
the other question. A group's fit is the negated mean of its sessions' distances
(`inference.groups.OPEN_SET_SCORES`), so that, as for the other fits, a low fit means unknown.
On iot-sentinel with four device types held out, it flagged more unknown devices' captures than
the probability fits for both chen-cnn and tl-fusion (benchmarks/RESULTS.md, issue 16).

`evaluate RUN --by` keeps the training sessions' embeddings in RUN/openset-bank.npy (at most
`BANK_LIMIT`, a seeded sample beyond that) and names its SHA-256 in RUN/calibration.json, so a
bank from another training is never used.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.errors import BundleError

BANK = "openset-bank.npy"
BANK_LIMIT = 10_000  # training sessions kept: at tl-fusion's 3 x 128 dims, 15 MB
_CHUNK = 512  # sessions compared at once: (512, BANK_LIMIT) similarities, 20 MB


@dataclass
class EmbeddingBank:
    """The training sessions' unit-length embeddings (N, D), float32."""

    vectors: np.ndarray

    def distances(self, embedding: np.ndarray) -> np.ndarray:
        """(n,): 1 - the cosine similarity of each session's embedding (n, D), unit length, to its
        nearest training session: 0 for a session the model was trained on, up to 2."""
        embedding = np.asarray(embedding, dtype=np.float32)
        if not len(embedding):
            return np.zeros(0)
        if embedding.ndim != 2 or embedding.shape[1] != self.vectors.shape[1]:
            raise BundleError(f"embeddings of shape {embedding.shape} do not match the open-set bank's "
                              f"{self.vectors.shape[1]} dimensions")
        out = np.empty(len(embedding), dtype=np.float64)
        for i in range(0, len(embedding), _CHUNK):
            out[i:i + _CHUNK] = 1.0 - (embedding[i:i + _CHUNK] @ self.vectors.T).max(axis=1, initial=-1.0)
        return np.clip(out, 0.0, 2.0)

    def save(self, run: str | Path) -> dict[str, Any]:
        """Write RUN/openset-bank.npy; returns what calibration.json records of it."""
        import io

        from trafficlens.files import atomic_output

        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.vectors, dtype=np.float32), allow_pickle=False)
        data = buffer.getvalue()
        with atomic_output(Path(run) / BANK, "wb") as fh:
            fh.write(data)
        return {"file": BANK, "sha256": hashlib.sha256(data).hexdigest(), "sessions": int(len(self.vectors)),
                "dims": int(self.vectors.shape[1])}

    @classmethod
    def load(cls, run: str | Path, record: dict[str, Any]) -> "EmbeddingBank":
        """The bank `record` (calibration.json's) names, checked against its SHA-256."""
        import io

        path = Path(run) / BANK
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read the open-set bank ({exc.strerror or exc}); run "
                              f"`trafficlens evaluate {run} --by capture` again") from None
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise BundleError(f"{path}: does not match the SHA-256 in calibration.json (changed, or from "
                              f"another evaluation); run `trafficlens evaluate {run} --by capture` again")
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
        if vectors.ndim != 2 or vectors.dtype != np.float32 or not len(vectors):
            raise BundleError(f"{path}: not an (N, D) float32 array")
        return cls(vectors)


def bank_rows(rows: np.ndarray, seed: int = 0, limit: int = BANK_LIMIT) -> np.ndarray:
    """The training rows whose embeddings the bank keeps: all of them, or a seeded sample of `limit`."""
    rows = np.asarray(rows)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def load_bank(run, config, cache: dict[str, EmbeddingBank] | None = None) -> EmbeddingBank | None:
    """The bank a `GroupConfig` needs (its open-set fit is the embedding distance), else None.
    `cache`: banks already read and checked, by SHA-256 (serve reads one per request)."""
    from trafficlens.inference.groups import EMBEDDING_DISTANCE, read_calibration

    if config.unknown_below is None or config.unknown_score != EMBEDDING_DISTANCE:
        return None
    record = read_calibration(run).get("open_set_bank")
    if not isinstance(record, dict):
        raise BundleError(f"{run}/calibration.json names the embedding-distance fit but no open-set bank; run "
                          f"`trafficlens evaluate {run} --by capture` again")
    if cache is not None and record.get("sha256") in cache:
        return cache[record["sha256"]]
    bank = EmbeddingBank.load(run, record)
    if cache is not None:
        cache[record["sha256"]] = bank
    return bank


def rate_interval(rate: float, n: int, level: float = 0.9) -> tuple[float, float]:
    """Where the share of new known groups called unknown lies, with probability `level`, for a
    threshold at the `rate` quantile of `n` validation groups' fits (`np.quantile`, linear): for
    exchangeable fits that share is close to Beta(p + 1, n - p), p = rate (n - 1), whatever the
    fit (order statistics, the argument of conformal prediction; checked by simulation in
    tests/test_open_set.py). With 90 validation groups a 5% threshold calls about 2.5-10.5% of new
    known groups unknown: the spread stop 30 measured on test splits (benchmarks/RESULTS.md), which
    a user choosing `--unknown-rate` should see."""
    a, b = rate * (n - 1) + 1, n - rate * (n - 1)

    def quantile(q: float) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _beta_cdf(mid, a, b) < q else (lo, mid)
        return (lo + hi) / 2

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def _beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) by its continued fraction (Lentz; Numerical
    Recipes 6.4): scipy is not a dependency of the base install."""
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _beta_cdf(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * f

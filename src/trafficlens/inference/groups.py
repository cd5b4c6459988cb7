"""Decisions over many sessions: one label per host, per capture, or per host and time window.

One session is often undecidable (under the strict mask, set-up sessions of devices of one
platform are byte-identical); many sessions of one host are not. `GroupDecisions` gathers the
class probabilities of sessions by group and decides each group by

- `pool` (default): the sum of the sessions' calibrated log-probabilities, log p(c | x) / T
  renormalised, T fitted on the run's validation split (`fit_temperature`). The sessions are
  taken as independent evidence, so the confidence (the softmax of the sum) grows as sessions
  agree; it is optimistic when they are not independent.
- `vote`: the majority of the sessions' top labels (ties broken by the pooled score); the
  confidence is the winner's share of the votes.
- `learned`: a multinomial logistic regression over a group's summary (mean calibrated
  log-probabilities, mean probabilities, vote shares, log of its session count), fitted by
  `evaluate --by` on the validation split's groups (`LearnedAggregator`): it learns which
  mixtures of session labels each class makes, e.g. a platform's shared sessions beside a
  device's own.

A group of one session gets the session model's label under both.

The host is the session's initiator, named by its IP (`src_ip`) or by the MAC its frames came
from (`prep.hosts.HostAddresses`), within its capture file. The strict mask removes these
addresses from the tensors: the model never sees them; only the grouping does, as an operator
names a host.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from trafficlens.errors import ConfigError

BY = ("host", "capture", "host-window")
HOST_KEYS = ("ip", "mac")
AGGREGATORS = ("pool", "vote", "learned")
# "auto", what predict/live/serve/predict_hosts take by default: the learned aggregator where
# `evaluate --by` fitted one for the groups' kind (better than pooling on every seed measured,
# benchmarks/RESULTS.md, issue 16), else pooling; `decision_setup` resolves it against the run.
AUTO = "auto"
UNKNOWN = "unknown"
# One row per group (documented in the README). window_*: the window's bounds for host-window,
# else the first session's start and the last one's end.
GROUP_COLUMNS = ("capture", "host", "window_start", "window_end", "sessions", "label", "confidence", "top_k",
                 "votes", "status")
_EPS = 1e-12  # a floor under probabilities: a tree's zero costs a class log(1e-12)/T, not everything


# A group's open-set fits. `evaluate --by` stores the embedding distance for a model that has
# embeddings (`inference.open_set`): over two session models and two sets of held-out device
# types it flagged the most unknown devices (RESULTS, issue 16); else the mean log-probability,
# which separated them better than the top probability, which collapsed for tl-fusion.
EMBEDDING_DISTANCE = "embedding_distance"
OPEN_SET_SCORES = {
    EMBEDDING_DISTANCE: "mean cosine distance of the group's sessions to their nearest training session "
                        "in the model's embedding space, negated",
    "mean_log_probability": "mean calibrated log-probability of the group's pooled class over its sessions",
    "mean_top_probability": "mean calibrated top probability of the group's sessions",
}
OPEN_SET_SCORE = "mean_log_probability"  # the fit of a model without embeddings (a tree)
_FIT_RANGE = {EMBEDDING_DISTANCE: (-2.0, 0.0), "mean_log_probability": (-math.inf, 0.0), "mean_top_probability": (0.0, 1.0)}


@dataclass(frozen=True)
class GroupConfig:
    """How sessions are grouped and a group decided.

    `window`: seconds per window (host-window only; windows are aligned to multiples of it).
    `temperature`: calibration of the session probabilities (1: as the model gives them).
    `max_groups`: groups held at once; past it the least recently updated is closed early.
    `min_confidence`: below it a group's label is `unknown`.
    `unknown_below`: open set: a group whose fit (`unknown_score`, one of `OPEN_SET_SCORES`) is
    under it fits no known class and is `unknown` (status `unknown_device`); `evaluate --by` fits
    it on the validation split (`read_open_set`). None: every group gets a known label."""

    by: str = "host"
    host_key: str = "ip"
    window: float = 300.0
    aggregator: str = "pool"
    temperature: float = 1.0
    top_k: int = 1
    min_confidence: float = 0.0
    max_groups: int = 100_000
    unknown_below: float | None = None
    unknown_score: str = OPEN_SET_SCORE

    def __post_init__(self):
        for name, value, allowed in (("by", self.by, BY), ("host_key", self.host_key, HOST_KEYS),
                                     ("aggregator", self.aggregator, AGGREGATORS + (AUTO,))):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ConfigError(f"window must be a positive number of seconds, got {self.window!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be positive, got {self.temperature!r}")
        if self.top_k < 1 or self.max_groups < 1:
            raise ConfigError("top_k and max_groups must be at least 1")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in [0, 1], got {self.min_confidence!r}")
        if self.unknown_score not in OPEN_SET_SCORES:
            raise ConfigError(f"unknown_score must be one of {', '.join(OPEN_SET_SCORES)}, got {self.unknown_score!r}")
        low, high = _FIT_RANGE[self.unknown_score]
        if self.unknown_below is not None and not low <= self.unknown_below <= high:
            raise ConfigError(f"unknown_below ({self.unknown_score}) must be in [{low:g}, {high:g}], "
                              f"got {self.unknown_below!r}")


def parse_window(text: str | float) -> float:
    """'300s', '5m', '2h' or '300' -> seconds."""
    raw = str(text).strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(raw[-1:], None)
    try:
        seconds = float(raw[:-1] if scale else raw) * (scale or 1.0)
    except ValueError:
        raise ConfigError(f"--window {text!r}: give seconds, e.g. 300s, 5m or 1h") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"--window {text!r}: must be positive")
    return seconds


# -- calibration -------------------------------------------------------------------------------
def calibrated_log_probs(proba: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(log p / T), row by row: (n, C) probabilities -> (n, C) log-probabilities."""
    z = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of labels `y` (validation
    sessions): a log-spaced grid, then a finer one around the best point. 1.0 without sessions."""
    y = np.asarray(y, dtype=np.int64)
    if not len(y):
        return 1.0

    def nll(t: float) -> float:
        return float(-calibrated_log_probs(proba, t)[np.arange(len(y)), y].mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.1, 0.1, 21))
    return float(min(fine, key=nll))


CALIBRATION = "calibration.json"


def read_calibration(run) -> dict[str, Any]:
    """RUN/calibration.json (written by `evaluate --by`), or {} when there is none."""
    import json
    from pathlib import Path

    from trafficlens.errors import BundleError

    path = Path(run) / CALIBRATION
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        temperature = float(record["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable calibration ({exc.__class__.__name__}); delete it or run "
                          f"`trafficlens evaluate {run} --by capture` again") from None
    if not (temperature > 0 and math.isfinite(temperature)):
        raise BundleError(f"{path}: temperature {temperature} is not a positive number")
    return record


def _open_set_record(run, by: str) -> dict[str, Any]:
    kind = "capture" if by == "capture" else "host"
    record = (read_calibration(run).get("open_set") or {}).get(kind)
    if not isinstance(record, dict) or not isinstance(record.get("threshold"), (int, float)):
        raise ConfigError(f"{run} has no open-set threshold for {kind} groups: fit it with "
                          f"`trafficlens evaluate {run} --by {kind}`")
    return record


def read_open_set(run, by: str) -> dict[str, Any]:
    """`GroupConfig`'s `unknown_below` and `unknown_score`: the open-set threshold `evaluate RUN
    --by` fitted for captures or hosts (host-window uses the hosts') and the fit it applies to; a
    ConfigError naming the command when there is none. Runs calibrated before the fit was named
    stored the mean top probability's."""
    return _open_set_rule(_open_set_record(run, by))


def _open_set_rule(record: dict[str, Any]) -> dict[str, Any]:
    score = record.get("score")
    score = score if score in OPEN_SET_SCORES else "mean_top_probability"
    return {"unknown_below": float(record["threshold"]), "unknown_score": score}


def describe_open_set(run, by: str) -> str:
    """One line for stderr: the open-set rule `read_open_set` gives (what predict and live apply)
    and, for runs calibrated since it is recorded, the share of known groups it is expected to
    call unknown (`open_set.rate_interval`)."""
    record = _open_set_record(run, by)
    unknown = _open_set_rule(record)
    line = (f"--open-set: a group is unknown when its {unknown['unknown_score'].replace('_', ' ')} fit is under "
            f"{unknown['unknown_below']:.4g} (set by `evaluate --by` on the validation split")
    interval = record.get("known_called_unknown_90")
    if isinstance(interval, list) and len(interval) == 2:
        line += (f"; expect it to call {interval[0]:.0%}-{interval[1]:.0%} of known groups unknown, a 90% interval "
                 f"from {record.get('validation_groups')} validation groups")
    return line + ")"


def resolve_aggregator(calibration: dict[str, Any], by: str, aggregator: str = AUTO) -> str:
    """`aggregator`, or for "auto": "learned" when `calibration` (`read_calibration`) holds a
    learned aggregator for `by`'s kind of group (captures; hosts for host and host-window), else "pool"."""
    if aggregator != AUTO:
        return aggregator
    kind = "capture" if by == "capture" else "host"
    return "learned" if (calibration.get("learned") or {}).get(kind) is not None else "pool"


def decision_setup(run, config: GroupConfig, n_classes: int) -> tuple[GroupConfig, LearnedAggregator | None]:
    """`config` with "auto" resolved against RUN/calibration.json, and the learned aggregator it
    then needs (None for pool and vote): what a `GroupDecisions` over RUN's sessions is built from."""
    import dataclasses

    config = dataclasses.replace(config, aggregator=resolve_aggregator(read_calibration(run), config.by, config.aggregator))
    return config, (load_learned(run, config.by, n_classes) if config.aggregator == "learned" else None)


def load_learned(run, by: str, n_classes: int) -> LearnedAggregator:
    """The learned aggregator `evaluate RUN --by` fitted for captures or hosts (host-window uses
    the hosts'); a ConfigError naming the command when there is none."""
    kind = "capture" if by == "capture" else "host"
    record = (read_calibration(run).get("learned") or {}).get(kind)
    if record is None:
        raise ConfigError(f"{run} has no learned aggregator for {kind} groups: fit it with "
                          f"`trafficlens evaluate {run} --by {kind}`")
    return LearnedAggregator.from_dict(record, n_classes)


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def group_features(votes: np.ndarray, log_sum: np.ndarray, prob_sum: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """(G, 3C + 1): what the learned aggregator reads of a group: mean calibrated log-probability,
    mean probability and vote share per class, and the log of the session count."""
    n = np.maximum(np.asarray(sessions, dtype=np.float64), 1)[..., None]
    return np.concatenate([log_sum / n, prob_sum / n, votes / n, np.log(n)], axis=-1)


@dataclass
class LearnedAggregator:
    """Multinomial logistic regression over `group_features`; `coef` (C, 3C + 1), `intercept` (C,).
    A class without validation groups gets a very low intercept: it is never chosen."""

    coef: np.ndarray
    intercept: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted (groups, C, cross-validation)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(features, dtype=np.float64) @ self.coef.T + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(), **self.info}

    @classmethod
    def from_dict(cls, record: dict[str, Any], n_classes: int) -> "LearnedAggregator":
        coef, intercept = np.asarray(record["coef"], dtype=np.float64), np.asarray(record["intercept"], dtype=np.float64)
        if coef.shape != (n_classes, 3 * n_classes + 1) or intercept.shape != (n_classes,):
            raise ConfigError(f"learned aggregator of shape {coef.shape} does not fit {n_classes} classes")
        return cls(coef, intercept, {k: v for k, v in record.items() if k not in ("coef", "intercept")})


def group_probabilities(votes: np.ndarray, log_sum: np.ndarray, aggregator: str, prob_sum: np.ndarray | None = None,
                        sessions: np.ndarray | None = None, learned: LearnedAggregator | None = None) -> np.ndarray:
    """(G, C) scores that sum to 1 per group: the pooled posterior, vote shares (a tie goes to
    the better pooled score through a nudge far below one vote), or the learned aggregator's."""
    if aggregator == "learned":
        if learned is None:
            raise ConfigError("the learned aggregator is fitted by `trafficlens evaluate RUN --by capture` (or host)")
        return learned.probabilities(group_features(votes, log_sum, prob_sum, sessions))
    pooled = softmax(np.asarray(log_sum, dtype=np.float64))
    if aggregator == "pool":
        return pooled
    votes = np.asarray(votes, dtype=np.float64)
    nudged = votes + 1e-3 * pooled
    return nudged / nudged.sum(axis=-1, keepdims=True)


# -- the streaming accumulator -----------------------------------------------------------------
@dataclass
class GroupState:
    """One group's evidence: per-class vote counts and summed calibrated log-probabilities."""

    votes: np.ndarray  # (C,) int64
    log_sum: np.ndarray  # (C,) float64
    prob_sum: np.ndarray  # (C,) float64: calibrated probabilities, summed
    sessions: int = 0
    top_sum: float = 0.0  # each session's highest calibrated probability, summed (an open-set fit)
    distance_sum: float = 0.0  # each session's embedding distance to the training sessions, summed (another)
    start: float = math.inf
    end: float = -math.inf
    last_seen: float = -math.inf  # capture time of its latest session (idle expiry)
    announced: str | None = None  # live: the label last printed for it

    def open_set_fit(self, score: str) -> float:
        """How well the group fits a known class (`OPEN_SET_SCORES`; evaluation.by_group.Groups
        computes the same over a dataset's groups)."""
        n = max(self.sessions, 1)
        if score == EMBEDDING_DISTANCE:
            return -self.distance_sum / n
        return self.top_sum / n if score == "mean_top_probability" else float(self.log_sum.max()) / n


@dataclass
class GroupDecisions:
    """Sessions in (metadata and class probabilities), one decision row per group out.

    >>> groups = GroupDecisions(labels, GroupConfig(by="host"))
    >>> touched = groups.add(metas, proba)       # keys of the groups these sessions changed
    >>> groups.rows()                            # one row per group held, and clears nothing

    Memory is bounded by `config.max_groups`: the least recently updated group is closed early
    and its row kept in `evicted` for the caller to hand on (`pop_evicted`)."""

    labels: Sequence[str]
    config: GroupConfig = field(default_factory=GroupConfig)
    learned: LearnedAggregator | None = None

    def __post_init__(self):
        self.labels = list(self.labels)
        if self.config.aggregator == AUTO:
            raise ConfigError("aggregator 'auto' is resolved against a run first (decision_setup)")
        if self.config.aggregator == "learned" and self.learned is None:
            raise ConfigError("aggregator 'learned' needs the aggregator `evaluate --by` fits (RUN/calibration.json)")
        self._groups: OrderedDict[tuple, GroupState] = OrderedDict()
        self._evicted: list[dict[str, Any]] = []
        self.evicted_count = 0

    def __len__(self) -> int:
        return len(self._groups)

    def key_of(self, meta: dict[str, Any], mac: str | None = None) -> tuple:
        """(capture, host, window index) of a session; host None with by="capture". A MAC that no
        frame told falls back to the initiator's IP."""
        c = self.config
        capture = meta.get("capture")
        if c.by == "capture":
            return (capture, None, None)
        host = (mac or meta.get("src_ip")) if c.host_key == "mac" else meta.get("src_ip")
        window = int(math.floor(float(meta["ts_start"]) / c.window)) if c.by == "host-window" else None
        return (capture, host, window)

    def add(self, metas: Sequence[dict[str, Any]], proba: np.ndarray, macs: Sequence[str | None] | None = None,
            distances: np.ndarray | None = None) -> list[tuple]:
        """Add sessions; returns the keys of the groups they changed, in first-touched order.
        `distances`: each session's embedding distance (`open_set.EmbeddingBank.distances`), which
        the embedding-distance open-set fit needs."""
        if not len(metas):
            return []
        if distances is None and self.config.unknown_below is not None and self.config.unknown_score == EMBEDDING_DISTANCE:
            raise ConfigError("the embedding-distance open-set fit needs each session's distance (open_set.load_bank)")
        logp = calibrated_log_probs(proba, self.config.temperature)
        top = np.asarray(proba).argmax(axis=1)
        touched: dict[tuple, None] = {}
        groups, n_classes = self._groups, len(self.labels)
        for i, meta in enumerate(metas):
            key = self.key_of(meta, macs[i] if macs is not None else None)
            state = groups.pop(key, None)
            if state is None:
                state = GroupState(np.zeros(n_classes, np.int64), np.zeros(n_classes), np.zeros(n_classes))
            groups[key] = state  # most recently updated last
            state.votes[top[i]] += 1
            state.log_sum += logp[i]
            state.prob_sum += np.exp(logp[i])
            state.top_sum += float(np.exp(logp[i].max()))
            state.distance_sum += float(distances[i]) if distances is not None else 0.0
            state.sessions += 1
            start, end = float(meta.get("ts_start") or 0.0), float(meta.get("ts_end") or meta.get("ts_start") or 0.0)
            state.start, state.end = min(state.start, start), max(state.end, end)
            state.last_seen = max(state.last_seen, end)
            touched[key] = None
        while len(groups) > self.config.max_groups:
            key, state = groups.popitem(last=False)
            touched.pop(key, None)
            self._evicted.append(self._row(key, state))
            self.evicted_count += 1
        return list(touched)

    def state(self, key: tuple) -> GroupState:
        return self._groups[key]

    def row(self, key: tuple) -> dict[str, Any]:
        return self._row(key, self._groups[key])

    def rows(self) -> list[dict[str, Any]]:
        """One row per group held, by capture, host and time."""
        keys = sorted(self._groups, key=lambda k: (str(k[0]), str(k[1]), self._groups[k].start))
        return [self._row(k, self._groups[k]) for k in keys]

    def pop_evicted(self) -> list[dict[str, Any]]:
        out, self._evicted = self._evicted, []
        return out

    def expire(self, now: float, idle: float) -> list[dict[str, Any]]:
        """Close the groups without a session for `idle` seconds of capture time before `now`."""
        stale = [k for k, s in self._groups.items() if now - s.last_seen > idle]
        return [self._row(k, self._groups.pop(k)) for k in stale]

    def _row(self, key: tuple, state: GroupState) -> dict[str, Any]:
        c = self.config
        scores = group_probabilities(state.votes, state.log_sum, c.aggregator, state.prob_sum, state.sessions, self.learned)
        k = max(1, min(c.top_k, len(self.labels)))
        order = np.argsort(-scores)[:k]
        best = int(order[0])
        confidence = float(state.votes[best] / state.sessions) if c.aggregator == "vote" else float(scores[best])
        confident = confidence >= c.min_confidence
        unknown_device = c.unknown_below is not None and state.open_set_fit(c.unknown_score) < c.unknown_below
        capture, host, window = key
        start, end = (window * c.window, (window + 1) * c.window) if window is not None else (state.start, state.end)
        return {
            "capture": capture, "host": host, "window_start": start, "window_end": end, "sessions": state.sessions,
            "label": self.labels[best] if confident and not unknown_device else UNKNOWN, "confidence": confidence,
            "top_k": [(self.labels[j], float(scores[j])) for j in order],
            "votes": {self.labels[j]: int(state.votes[j]) for j in np.argsort(-state.votes, kind="stable") if state.votes[j]},
            "status": "unknown_device" if unknown_device else "ok" if confident else "low_confidence",
        }

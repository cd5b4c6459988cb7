"""Score decisions over many sessions: `evaluate RUN --by capture|host [--window S]`.

    evaluate_groups("runs/cnn", by="capture")   # RUN/evaluation/metrics-by-capture.json, report-by-capture.html

The run's test sessions are grouped by capture file, by host (the session initiator's IP within
its capture: the dataset keeps no MAC) or by host and time window, and each group is decided by
pooling its sessions' calibrated log-probabilities (the headline, same schema as metrics.json)
by majority vote and by a learned aggregator. The temperature and the learned aggregator are
fitted here, on the run's validation split (its groups), and stored in RUN/calibration.json for
`predict --by` and `live --by host`; the test split is only scored. A group's true label is the
majority of its sessions' labels (`mixed_groups` counts the groups where they differ). The curve
gives accuracy against the number of sessions seen per group, in time order.

Open set: for a deep model a group's fit is the mean over its sessions of their cosine distance
to the nearest training session in the model's embedding space, negated (`inference.open_set`;
the training sessions' embeddings are kept in RUN/openset-bank.npy); for a tree, which has no
embedding, the mean calibrated log-probability of the class their pooling decides. Both are
means, so they do not grow with the number of sessions as the pooled confidence does. The
threshold is the fit that calls `UNKNOWN_RATE` of the validation groups unknown (`--unknown-rate`); it is stored in
RUN/calibration.json for `predict --by ... --open-set`. When the dataset holds labelled sessions
of classes the run never learned (trained with --exclude-class), their groups are scored too: the
report gives the share of held-out groups and of known test groups under the threshold, for that
fit and for the others in `OPEN_SET_SCORES` (among them the mean of each session's highest
calibrated probability: Hendrycks and Gimpel 2017's score averaged over a group).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.errors import ConfigError
from trafficlens.inference.groups import (AGGREGATORS, CALIBRATION, EMBEDDING_DISTANCE, OPEN_SET_SCORE, OPEN_SET_SCORES,
                                          LearnedAggregator, calibrated_log_probs, fit_temperature, group_features,
                                          group_probabilities, read_calibration)
from trafficlens.inference.open_set import rate_interval

BY = ("capture", "host")
UNKNOWN_RATE = 0.05  # of known validation groups called unknown: where the open-set threshold sits
LEARNED_C = (1.0, 10.0, 100.0)  # inverse regularisation strengths tried, chosen by 3-fold CV on validation groups
PREFIXES = (1, 2, 3, 5, 10, 20)  # besides whole groups, the learned aggregator learns from their first n sessions
CURVE_POINTS = (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


def evaluate_groups(run: str | os.PathLike, by: str, window: float | None = None, out: str | os.PathLike | None = None,
                    dataset: str | os.PathLike | None = None, unknown_rate: float = UNKNOWN_RATE) -> dict[str, Any]:
    """Score `run` per group on its own test split; writes metrics-by-BY.json and report-by-BY.html
    into `out` (default RUN/evaluation) and RUN/calibration.json; returns the metrics.
    `unknown_rate`: the share of known validation groups the open-set threshold calls unknown."""
    from trafficlens.datasets import Dataset
    from trafficlens.evaluation.evaluate import own_split_provenance
    from trafficlens.evaluation.report import group_curve_figure, write_report
    from trafficlens.files import atomic_write_text
    from trafficlens.inference.classifier import Classifier
    from trafficlens.training.bundle import read_split

    if by not in BY:
        raise ConfigError(f"--by must be one of {', '.join(BY)}, got {by!r}")
    if window is not None and by != "host":
        raise ConfigError("--window splits hosts into time windows: give it with --by host")
    if not 0.0 < unknown_rate <= 0.5:
        raise ConfigError(f"--unknown-rate must be in (0, 0.5], got {unknown_rate!r}")
    run = Path(run)
    clf = Classifier.load(run, device="auto")
    config = clf.bundle.config
    if (config.get("split") or {}).get("kind") == "none":
        raise ConfigError(f"{run} was trained with --split none: it has no validation or test side to score groups on")
    ds = Dataset.open(dataset or (config.get("dataset") or {}).get("path"))
    assignment = read_split(run, len(ds))
    index = {label: i for i, label in enumerate(clf.labels)}
    val, test = np.flatnonzero(assignment == 1), np.flatnonzero(assignment == 2)
    y_val = np.array([index[str(label)] for label in ds.labels[val]], dtype=np.int64)
    y_test = np.array([index[str(label)] for label in ds.labels[test]], dtype=np.int64)
    proba_val, embedding_val, _ = _outputs(clf, ds, val)
    proba_test, embedding_test, seconds = _outputs(clf, ds, test)
    distances = _distances(clf, ds, run, assignment, embedding_val, embedding_test)

    val_groups = _groups_of(ds, val, y_val, by, window, len(clf.labels))
    temperature, learned, calibration = _calibrate(run, ds, val_groups, proba_val, y_val, by, distances, unknown_rate)

    groups = _groups_of(ds, test, y_test, by, window, len(clf.labels))
    metrics, comparison = {}, {}
    for name, (aggregator, t) in {"pool": ("pool", temperature), "vote": ("vote", temperature),
                                  "learned": ("learned", temperature), "pool_uncalibrated": ("pool", 1.0)}.items():
        scored = groups.report(proba_test, aggregator, t, clf.labels, learned)
        comparison[name] = {k: scored[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
        if name == "pool":
            metrics = scored
    from trafficlens.training.metrics import classification_report

    session = classification_report(y_test, proba_test, clf.labels)
    comparison["session"] = {k: session[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
    metrics.update(own_split_provenance(clf, run, ds, assignment))
    metrics["groups"] = {
        "by": f"host-window ({window:g} s)" if window else by,
        "key": {"capture": "capture file", "host": "session initiator's IP within its capture file"}[by],
        "aggregator": "pool", "temperature": temperature, "aggregators": comparison,
        "calibration": {k: v for k, v in calibration.items() if k != "learned"}, "learned": learned.info,
        "n_groups": groups.n, "sessions": int(len(test)), "mixed_groups": groups.mixed,
        "sessions_per_group": {"min": int(groups.sizes.min()) if groups.n else 0,
                               "median": float(np.median(groups.sizes)) if groups.n else 0.0,
                               "max": int(groups.sizes.max()) if groups.n else 0},
        "curve": {a: groups.curve(proba_test, a, temperature, learned) for a in AGGREGATORS},
        "sessions_until_right": groups.until_right(proba_test, "pool", temperature, clf.labels),
    }
    open_set = _open_set(clf, ds, by, window, (val_groups, proba_val), groups, proba_test, temperature, distances,
                         unknown_rate)
    if open_set:
        metrics["groups"]["open_set"] = open_set
    metrics["inference_seconds"] = seconds
    target = Path(out) if out else run / "evaluation"
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / f"metrics-by-{by}.json", json.dumps(metrics, indent=2) + "\n")
    title = (f"{clf.bundle.name} on {ds.path.name}, decided per {metrics['groups']['by']} "
             f"({metrics['split']} split, {metrics['mask']} mask)")
    write_report(target / f"report-by-{by}.html", title, metrics,
                 extra_figures=[("Accuracy against the sessions seen per group (test split)",
                                 group_curve_figure(metrics["groups"]["curve"], by))])
    metrics["out"] = str(target)
    return metrics


def group_summary(m: dict[str, Any], by: str) -> str:
    """One line of `evaluate_groups`' metrics: what `evaluate --by` and `train --group` print."""
    g = m["groups"]
    others = ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in g["aggregators"].items() if k != "pool")
    return (f"{m['model']}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro']['f1']:.4f} on {m['n']} "
            f"{g['by']} groups of {g['sessions']} sessions (pooled, temperature {g['temperature']:.3f}; {others}; "
            f"{m['split']} split, {m['mask']} mask); {m['out']}/metrics-by-{by}.json")


def _groups_of(ds, rows: np.ndarray, y: np.ndarray, by: str, window: float | None, n_classes: int) -> "Groups":
    table = ds.table.select(["capture", "src_ip", "ts_start"]).take(rows).to_pydict()
    return Groups(_group_keys(table, by, window), np.asarray(table["ts_start"], dtype=np.float64), y, n_classes)


def _distances(clf, ds, run: Path, assignment: np.ndarray, embedding_val: np.ndarray | None,
               embedding_test: np.ndarray | None) -> dict[str, Any]:
    """For a deep model: the bank of training sessions' embeddings (saved in RUN, `inference.open_set`)
    and each validation and test session's distance to it; {} for a tree."""
    from trafficlens.inference.open_set import EmbeddingBank, bank_rows

    if embedding_val is None:
        return {}
    known = np.isin(np.array([str(x) for x in ds.labels], dtype=object), clf.labels)
    bank = EmbeddingBank(_outputs(clf, ds, bank_rows(np.flatnonzero((assignment == 0) & known)))[1])
    return {"bank": bank, "record": bank.save(run), "val": bank.distances(embedding_val),
            "test": bank.distances(embedding_test)}


def _outputs(clf, ds, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(probabilities, embeddings (None for a tree), inference seconds) of dataset rows, in one pass."""
    import time

    from trafficlens.evaluation.evaluate import _CHUNK

    start, deep = time.perf_counter(), clf.kind == "deep"
    parts = [clf.outputs({name: ds.tensor(name)[rows[i:i + _CHUNK]] for name in clf.inputs}, embed=deep)
             for i in range(0, len(rows), _CHUNK)]
    proba = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, len(clf.labels)), np.float32)
    embedding = (np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 1), np.float32)) if deep else None
    return proba, embedding, time.perf_counter() - start


def _calibrate(run: Path, ds, val_groups: "Groups", proba_val: np.ndarray, y_val: np.ndarray, by: str,
               distances: dict[str, Any], unknown_rate: float = UNKNOWN_RATE):
    """Temperature, learned aggregator and open-set threshold fitted on the validation split, kept in RUN/calibration.json."""
    from trafficlens.files import atomic_write_text

    temperature = fit_temperature(proba_val, y_val)
    learned = fit_learned(val_groups, proba_val, temperature, proba_val.shape[1])
    calibration = read_calibration(run)
    calibration.update({"temperature": temperature, "fitted_on": "validation split", "dataset": str(ds.path.resolve()),
                        "sessions": int(len(y_val)), "nll_uncalibrated": _nll(proba_val, y_val, 1.0),
                        "nll_calibrated": _nll(proba_val, y_val, temperature)})
    kind = "capture" if by == "capture" else "host"
    calibration.setdefault("learned", {})[kind] = learned.to_dict()
    if distances:
        calibration["open_set_bank"] = distances["record"]
    if val_groups.n:
        score = EMBEDDING_DISTANCE if distances else OPEN_SET_SCORE
        fit = val_groups.open_set_fit(score, proba_val, temperature, distances.get("val"))
        calibration.setdefault("open_set", {})[kind] = {
            "threshold": float(np.quantile(fit, unknown_rate)), "score": score,
            "unknown_rate_on_validation": unknown_rate, "validation_groups": val_groups.n,
            "known_called_unknown_90": list(rate_interval(unknown_rate, val_groups.n))}
    atomic_write_text(run / CALIBRATION, json.dumps(calibration, indent=2) + "\n")
    return temperature, learned, calibration


def _open_set(clf, ds, by: str, window: float | None, validation: tuple["Groups", np.ndarray], groups: "Groups",
              proba_test: np.ndarray, temperature: float, distances: dict[str, Any],
              unknown_rate: float = UNKNOWN_RATE) -> dict[str, Any] | None:
    """Groups of labelled classes the run never learned, called unknown below a fit threshold
    chosen so that `unknown_rate` of the validation groups fall under it; None without such classes."""
    held_out = np.flatnonzero(np.isin(np.array([str(x) for x in ds.labels], dtype=object),
                                      [str(x) for x in set(ds.labels.tolist()) - set(clf.labels) - {None}]))
    if not len(held_out):
        return None
    held_names = sorted(str(x) for x in set(ds.labels[held_out].tolist()))
    held_y = np.array([held_names.index(str(x)) for x in ds.labels[held_out]], dtype=np.int64)  # each group's class
    held_groups = _groups_of(ds, held_out, held_y, by, window, max(len(clf.labels), len(held_names)))
    proba_held, embedding_held, _ = _outputs(clf, ds, held_out)
    held_distances = distances["bank"].distances(embedding_held) if distances else None
    val_groups, proba_val = validation
    scores = {}
    for name in OPEN_SET_SCORES:
        if name == EMBEDDING_DISTANCE and not distances:
            continue
        threshold = float(np.quantile(val_groups.open_set_fit(name, proba_val, temperature, distances.get("val")),
                                      unknown_rate))
        held_fit = held_groups.open_set_fit(name, proba_held, temperature, held_distances)
        test_fit = groups.open_set_fit(name, proba_test, temperature, distances.get("test"))
        scores[name] = {"threshold": threshold, "held_out_called_unknown": float((held_fit < threshold).mean()),
                        "known_test_called_unknown": float((test_fit < threshold).mean()) if groups.n else 0.0,
                        "auroc": _auroc(test_fit, held_fit),
                        # a point of the ROC curve, not an operating point: the threshold is read off the test split
                        "held_out_called_unknown_at_test_rate": _detected_at(test_fit, held_fit, unknown_rate),
                        "held_out_called_unknown_by_class": {
                            name_: float((held_fit[held_groups.y == i] < threshold).mean())
                            for i, name_ in enumerate(held_names) if (held_groups.y == i).any()}}
    score = EMBEDDING_DISTANCE if distances else OPEN_SET_SCORE
    interval = rate_interval(unknown_rate, val_groups.n)
    return {
        "held_out_classes": held_names,
        "held_out_groups": held_groups.n, "score": score, "score_means": OPEN_SET_SCORES[score],
        "threshold_from": f"{unknown_rate:.1%} of the validation groups ({val_groups.n}) under it: it calls "
                          f"{interval[0]:.1%}-{interval[1]:.1%} of new known groups unknown (90% interval)",
        # where known_test_called_unknown is expected to lie (plus the test split's own sampling noise)
        "known_called_unknown_90": list(interval),
        **scores[score], "scores": scores,
    }


def _detected_at(known_fit: np.ndarray, held_fit: np.ndarray, rate: float) -> float | None:
    """The share of held-out groups under the threshold that calls `rate` of the known test groups
    unknown: how well the fit separates the two where a threshold that transferred exactly from
    validation would sit."""
    if not len(known_fit) or not len(held_fit):
        return None
    return float((held_fit < np.quantile(known_fit, rate)).mean())


def _auroc(known_fit: np.ndarray, held_fit: np.ndarray) -> float | None:
    """The chance that a held-out group fits worse than a known one (ties count half): the
    threshold-free separation of the two, 1.0 perfect, 0.5 none."""
    if not len(known_fit) or not len(held_fit):
        return None
    below = (held_fit[:, None] < known_fit[None, :]).mean()
    tied = (held_fit[:, None] == known_fit[None, :]).mean()
    return float(below + 0.5 * tied)


def _nll(proba: np.ndarray, y: np.ndarray, temperature: float) -> float | None:
    if not len(y):
        return None
    return float(-calibrated_log_probs(proba, temperature)[np.arange(len(y)), y].mean())


def _group_keys(table: dict[str, list], by: str, window: float | None) -> list[tuple]:
    captures = table["capture"]
    if by == "capture":
        return [(c,) for c in captures]
    if window is None:
        return list(zip(captures, table["src_ip"]))
    return [(c, ip, math.floor(t / window)) for c, ip, t in zip(captures, table["src_ip"], table["ts_start"])]


class Groups:
    """Test sessions sorted into groups, each in time order, with each group's true label."""

    def __init__(self, keys: list[tuple], times: np.ndarray, y: np.ndarray, n_classes: int):
        codes = {k: i for i, k in enumerate(sorted(set(keys), key=str))}
        group = np.array([codes[k] for k in keys], dtype=np.int64)
        self.order = np.lexsort((times, group))  # by group, then time
        self.group = group[self.order]
        self.n = len(codes)
        self.sizes = np.bincount(self.group, minlength=self.n)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        counts = np.zeros((self.n, n_classes), np.int64)
        np.add.at(counts, (group, y), 1)
        self.y = counts.argmax(axis=1)
        self.mixed = int((counts.max(axis=1) < self.sizes).sum())

    def _sums(self, proba: np.ndarray, temperature: float) -> tuple[np.ndarray, ...]:
        """(votes, log_sum, prob_sum, sessions) after each group's first 1, 2, ... sessions (sorted order)."""
        logp = calibrated_log_probs(proba[self.order], temperature)
        votes = np.eye(proba.shape[1])[proba[self.order].argmax(axis=1)]
        sums = [_grouped_cumsum(a, self.starts, self.sizes) for a in (votes, logp, np.exp(logp))]
        seen = np.arange(len(self.group)) - np.repeat(self.starts, self.sizes) + 1
        return (*sums, seen)

    def _prefix(self, proba: np.ndarray, aggregator: str, temperature: float,
                learned: LearnedAggregator | None = None) -> np.ndarray:
        """(n sessions, C): each group's scores after its first 1, 2, ... sessions (sorted order)."""
        votes, log_sum, prob_sum, seen = self._sums(proba, temperature)
        return group_probabilities(votes, log_sum, aggregator, prob_sum, seen, learned)

    def features(self, proba: np.ndarray, temperature: float, prefixes: bool = False) -> np.ndarray:
        """`group_features` of each whole group (G, F), or of every prefix of every group."""
        features = group_features(*self._sums(proba, temperature))
        return features if prefixes else features[self.starts + self.sizes - 1]

    def report(self, proba: np.ndarray, aggregator: str, temperature: float, labels: list[str],
               learned: LearnedAggregator | None = None) -> dict[str, Any]:
        from trafficlens.training.metrics import classification_report

        last = self.starts + self.sizes - 1
        return classification_report(self.y, self._prefix(proba, aggregator, temperature, learned)[last], labels)

    def open_set_fit(self, score: str, proba: np.ndarray, temperature: float,
                     distances: np.ndarray | None = None) -> np.ndarray:
        """(G,): each group's open-set fit `score` (`OPEN_SET_SCORES`; `GroupState.open_set_fit`
        in predict and live): the mean over its sessions of their embedding distances (`distances`,
        one per session), negated, of the calibrated log-probability of its pooled class, or of
        their highest calibrated probability."""
        if score == EMBEDDING_DISTANCE:
            values = -np.asarray(distances, dtype=np.float64)[self.order][:, None]
        else:
            logp = calibrated_log_probs(proba[self.order], temperature)
            values = np.exp(logp.max(axis=1, keepdims=True)) if score == "mean_top_probability" else logp
        total = _grouped_cumsum(values, self.starts, self.sizes)[self.starts + self.sizes - 1]  # (G, 1 or C)
        return total.max(axis=1) / np.maximum(self.sizes, 1)

    def curve(self, proba: np.ndarray, aggregator: str, temperature: float,
              learned: LearnedAggregator | None = None) -> list[dict[str, Any]]:
        """Accuracy over all groups when each is decided on its first n sessions (all it has when
        fewer), and over the groups that have at least n."""
        right = self._prefix(proba, aggregator, temperature, learned).argmax(axis=1) == self.y[self.group]
        points = []
        for n in [p for p in CURVE_POINTS if p < self.sizes.max(initial=0)] + [int(self.sizes.max(initial=0))]:
            at = self.starts + np.minimum(n, self.sizes) - 1
            full = self.sizes >= n
            points.append({"sessions": n, "accuracy": float(right[at].mean()) if self.n else 0.0,
                           "groups_with_n": int(full.sum()),
                           "accuracy_groups_with_n": float(right[at][full].mean()) if full.any() else None})
        return points

    def until_right(self, proba: np.ndarray, aggregator: str, temperature: float, labels: list[str]) -> dict[str, Any]:
        """Per class: the median number of sessions after which a group's decision is right and
        stays right, and the share of groups whose final decision is right."""
        right = self._prefix(proba, aggregator, temperature).argmax(axis=1) == self.y[self.group]
        out = {}
        for c, label in enumerate(labels):
            needed = []
            for g in np.flatnonzero(self.y == c):
                r = right[self.starts[g]: self.starts[g] + self.sizes[g]]
                wrong = np.flatnonzero(~r)
                needed.append(None if not r[-1] else (int(wrong[-1]) + 2 if len(wrong) else 1))
            if needed:
                solved = [n for n in needed if n is not None]
                out[label] = {"groups": len(needed), "right_at_end": len(solved) / len(needed),
                              "median_sessions_until_right": float(np.median(solved)) if solved else None}
        return out


def fit_learned(groups: Groups, proba: np.ndarray, temperature: float, n_classes: int) -> LearnedAggregator:
    """A multinomial logistic regression over the features of the validation groups and of their
    first `PREFIXES` sessions (so that it knows small groups too), on standardised features
    (folded back into its weights), its strength chosen by 3-fold cross-validation over groups."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    seen = np.arange(len(groups.group)) - np.repeat(groups.starts, groups.sizes) + 1
    last = seen == np.repeat(groups.sizes, groups.sizes)
    keep = np.isin(seen, PREFIXES) | last
    x = groups.features(proba, temperature, prefixes=True)[keep]
    y, owner, whole = groups.y[groups.group][keep], groups.group[keep], last[keep]
    if len(np.unique(y)) < 2:
        raise ConfigError("the validation split has groups of fewer than two classes: no aggregator can be learned")
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    scores = {}
    for c in LEARNED_C:
        right = []
        for fit, held in GroupKFold(n_splits=min(3, groups.n)).split(z, y, owner):
            if len(np.unique(y[fit])) < 2:  # too few validation groups for this fold to learn anything
                continue
            model = LogisticRegression(C=c, max_iter=500).fit(z[fit], y[fit])
            held = held[whole[held]]  # scored on whole held-out groups
            right += list(model.predict(z[held]) == y[held])
        scores[str(c)] = float(np.mean(right)) if right else None
    best = max(LEARNED_C, key=lambda c: (scores[str(c)] or 0.0, c == 10.0, -c))  # ties, or no folds: C = 10
    model = LogisticRegression(C=best, max_iter=500).fit(z, y)
    weights, bias = model.coef_ / scale, model.intercept_ - (model.coef_ / scale) @ mean  # on raw features
    coef, intercept = np.zeros((n_classes, x.shape[1])), np.full(n_classes, -1e4)  # classes it never saw: never chosen
    classes = model.classes_
    if len(classes) == 2:  # binary: sklearn keeps one row, the second class's logit against the first's 0
        coef[classes[1]], intercept[classes[1]], intercept[classes[0]] = weights[0], bias[0], 0.0
    else:
        coef[classes], intercept[classes] = weights, bias
    return LearnedAggregator(coef, intercept, {"fitted_on": "validation split groups and their first sessions",
                                               "groups": groups.n, "examples": int(len(y)), "C": best,
                                               "cv_accuracy": scores})


def _grouped_cumsum(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cumulative sums restarted at each group's first row (rows sorted by group)."""
    total = np.cumsum(values, axis=0)
    before = np.repeat(np.vstack([np.zeros((1, values.shape[1])), total])[starts], sizes, axis=0)
    return total - before


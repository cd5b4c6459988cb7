"""Stacked models in `compare` (issue 15): a multinomial logistic regression over the class
probabilities of two or more compared models (e.g. tl-fusion, which reads bytes and packet
sequences, and a tree on flow statistics), fitted on the validation side only.

Each member is fitted on the training side as in its own row; its validation probabilities are
out-of-sample (no member trained on them), so the meta-model learns how far to trust each member
per class without seeing a test session. The validation side also chose the members' epochs and
grid points: the stack's row says `n_select` like every other. Nothing is refitted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from trafficlens.errors import ConfigError

SEPARATOR = "+"


def parse_stacks(stacks: Sequence[str] | str | None, keys: Sequence[str]) -> list[tuple[str, ...]]:
    """`tl-fusion+xgboost` (or several) to member keys; every member must be among the compared models."""
    if not stacks:
        return []
    items = [stacks] if isinstance(stacks, str) else list(stacks)
    out: list[tuple[str, ...]] = []
    for item in items:
        members = tuple(m.strip() for m in item.split(SEPARATOR) if m.strip())
        if len(members) < 2 or len(set(members)) != len(members):
            raise ConfigError(f"--stack {item!r}: name two or more different models joined by '+', e.g. tl-fusion+xgboost")
        missing = [m for m in members if m not in keys]
        if missing:
            raise ConfigError(f"--stack {item!r}: {', '.join(missing)} not in --models ({', '.join(keys)})")
        if members in out:
            raise ConfigError(f"--stack {item!r} is given twice")
        out.append(members)
    return out


def stack_key(members: Sequence[str]) -> str:
    return "stack:" + SEPARATOR.join(members)


def member_probabilities(ds, classes: list[str], metrics: dict[str, Any], fitted, rows: np.ndarray) -> np.ndarray:
    """(len(rows), len(classes)) probabilities of one compared model: a deep run from its bundle,
    a baseline from its fitted estimator; classes a baseline never saw in training get 0."""
    if fitted is None:  # a deep model: its run directory
        from trafficlens.evaluation.evaluate import _probabilities
        from trafficlens.inference.classifier import Classifier

        clf = Classifier.load(metrics["run"], device="auto")
        proba = _probabilities(clf, ds, rows)[0]
        labels = list(clf.labels)
    else:
        from trafficlens.models.baselines.features import baseline_features

        model = fitted.model
        proba = model.predict_proba(baseline_features(ds, rows, model.features))
        labels = [str(c) for c in model.classes_]
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(rows), len(classes)), dtype=np.float64)
    for j, label in enumerate(labels):
        if label in index:
            out[:, index[label]] = proba[:, j]
    return out


def stack_metrics(ds, classes: list[str], label_of: np.ndarray, split, members: Sequence[str],
                  member_metrics: dict[str, dict[str, Any]], fitted: dict[str, Any], seed: int) -> dict[str, Any]:
    """Fit the meta-model on the validation side and score the test side (metrics.json schema)."""
    import time

    from sklearn.linear_model import LogisticRegression

    from trafficlens.training.metrics import classification_report

    if not len(split.val):
        raise ConfigError(f"a stacked model is fitted on the validation side; this {split.kind} split has none")
    t0 = time.perf_counter()

    def features(rows: np.ndarray) -> np.ndarray:
        parts = [member_probabilities(ds, classes, member_metrics[m], fitted.get(m), rows) for m in members]
        return np.log(np.clip(np.concatenate(parts, axis=1), 1e-6, 1.0))

    y_val = label_of[split.val]
    meta = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(features(split.val), y_val)
    proba = np.zeros((len(split.test), len(classes)))
    proba[:, meta.classes_] = meta.predict_proba(features(split.test))
    fit_seconds = time.perf_counter() - t0
    m = classification_report(label_of[split.test], proba, classes)
    first = member_metrics[members[0]]
    m.update({
        "model": stack_key(members), "kind": "stack", "features": "probabilities of " + ", ".join(members),
        "n_fit": first.get("n_fit"), "n_select": int(len(split.val)),
        "selection": "members fitted on the training side; a logistic regression over their log-probabilities "
                     "fitted on the validation side",
        "train_seconds": sum(member_metrics[k].get("train_seconds") or 0.0 for k in members) + fit_seconds,
        "stack_fit_seconds": fit_seconds,
        "members": list(members),
    })
    return m

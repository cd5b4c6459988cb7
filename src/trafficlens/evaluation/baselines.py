"""Classical baselines behind the scikit-learn estimator contract, on the deep models' splits.

    clf = create_baseline("rf", features="stats", dataset=ds, class_weight="balanced")
    clf.fit(train_rows, ds.labels[train_rows])       # X: session row numbers into `dataset`
    clf.predict(test_rows)

    metrics = train_baseline("ds/iot", "xgboost", "header", split="capture", min_class_sessions=50)

Every baseline is a `Baseline`: a scikit-learn classifier that turns X into a feature matrix
(`features.baseline_features`) and fits a registered scikit-learn estimator on it, with labels
encoded to 0..C-1 inside (XGBoost needs them) and `classes_` holding the original labels.

| name | estimator (defaults) | features |
|---|---|---|
| `dt` | decision tree, entropy splits (C4.5-like), at least 2 sessions per leaf | stats |
| `rf` | random forest, 300 trees, all cores | stats |
| `lr` | signed log, standard scaling, multinomial logistic regression (C=10) | stats |
| `nb` | signed log, Gaussian naive Bayes (variance smoothing 1e-3) | stats |
| `svm` | signed log, standard scaling, RBF SVC (C=100), Platt-calibrated, <= 5000 training rows | stats |
| `knn` | signed log, standard scaling, 5 neighbours weighted by distance | stats |
| `xgboost` | gradient-boosted trees, hist, 300 rounds of depth 8, all cores | stats |
| `knn-seq` | 1 nearest neighbour, Euclidean on the signed packet lengths | sequence |

The signed log (sign(x) log(1 + |x|)) tames the heavy tails of byte and time statistics before
the distance- and gradient-based models; trees need no scaling. C, k and the smoothing were
chosen on the validation side of iot-sentinel's capture split (benchmarks/RESULTS_baselines.md).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from trafficlens.errors import ConfigError
from trafficlens.evaluation.features import FEATURE_KINDS, baseline_features


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def signed_log1p(X: np.ndarray) -> np.ndarray:
    return np.sign(X) * np.log1p(np.abs(X))


# -- registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineInfo:
    name: str
    description: str
    build: Callable[..., Any]  # (random_state=..., **params) -> unfitted scikit-learn estimator
    features: str = "stats"  # the feature set it is meant for
    max_train_rows: int | None = None  # training rows kept (stratified sample) above this


_REGISTRY: dict[str, BaselineInfo] = {}


def register(name: str, description: str, features: str = "stats", max_train_rows: int | None = None):
    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = BaselineInfo(name, description, build, features, max_train_rows)
        return build

    return decorate


def list_baselines() -> list[str]:
    return list(_REGISTRY)


def baseline_info(name: str) -> BaselineInfo:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _scaled(classifier, log: bool = True, scale: bool = True):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    steps = [FunctionTransformer(signed_log1p)] if log else []
    return make_pipeline(*steps, *([StandardScaler()] if scale else []), classifier)


@register("dt", "decision tree, entropy splits (C4.5-like)")
def _dt(random_state=0, **params):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(**{"criterion": "entropy", "min_samples_leaf": 2, "random_state": random_state, **params})


@register("rf", "random forest, 300 trees")
def _rf(random_state=0, **params):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**{"n_estimators": 300, "n_jobs": cores(), "random_state": random_state, **params})


@register("lr", "logistic regression on scaled signed-log features")
def _lr(random_state=0, **params):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(**{"C": 10.0, "max_iter": 3000, "random_state": random_state, **params}))


@register("nb", "Gaussian naive Bayes on signed-log features")
def _nb(random_state=0, **params):
    from sklearn.naive_bayes import GaussianNB

    return _scaled(GaussianNB(**{"var_smoothing": 1e-3, **params}), scale=False)


@register("svm", "RBF support vector machine on scaled signed-log features", max_train_rows=5000)
def _svm(random_state=0, **params):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # Platt probabilities from 5-fold decision values, one SVC refit on all rows for predict
    # (what SVC(probability=True), deprecated in scikit-learn 1.9, did).
    svc = SVC(**{"kernel": "rbf", "C": 100.0, "gamma": "scale", "random_state": random_state, **params})
    return _scaled(CalibratedClassifierCV(svc, method="sigmoid", ensemble=False))


@register("knn", "k nearest neighbours on scaled signed-log features")
def _knn(random_state=0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(**{"n_neighbors": 5, "weights": "distance", "n_jobs": cores(), **params}))


@register("xgboost", "gradient-boosted trees (XGBoost, hist)")
def _xgboost(random_state=0, **params):
    from xgboost import XGBClassifier

    return XGBClassifier(**{"tree_method": "hist", "n_estimators": 300, "max_depth": 8, "learning_rate": 0.1,
                            "subsample": 0.9, "colsample_bytree": 0.8, "n_jobs": cores(),
                            "random_state": random_state, **params})


@register("knn-seq", "nearest neighbour on packet-length sequences (Euclidean)", features="sequence")
def _knn_seq(random_state=0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    # One unit (bytes) in every column: no scaling, raw Euclidean distance between sequences.
    return KNeighborsClassifier(**{"n_neighbors": 1, "n_jobs": cores(), **params})


# -- the estimator --------------------------------------------------------------------------------
class Baseline(ClassifierMixin, BaseEstimator):
    """A scikit-learn estimator over dataset features; build one with `create_baseline`.

    X is either session row numbers into `dataset` (1-D, or one integer column; a `Dataset` or
    its path), turned into `features` by `baseline_features`, or a ready feature matrix.
    `class_weight="balanced"` passes balanced sample weights to the final estimator's fit.
    Above `max_train_rows` training rows, a stratified sample (seeded by `random_state`, at least
    5 rows of every class) is fitted: kernel SVMs grow quadratically.
    """

    def __init__(self, estimator=None, features: str = "stats", dataset=None, max_train_rows: int | None = None,
                 class_weight: str | None = None, random_state: int = 0):
        self.estimator = estimator
        self.features = features
        self.dataset = dataset
        self.max_train_rows = max_train_rows
        self.class_weight = class_weight
        self.random_state = random_state

    def _matrix(self, X) -> np.ndarray:
        X = np.asarray(X)
        if self.dataset is not None and np.issubdtype(X.dtype, np.integer) and (X.ndim == 1 or X.shape[1] == 1):
            ds = self.dataset
            if isinstance(ds, (str, bytes)) or hasattr(ds, "__fspath__"):
                from trafficlens.datasets import Dataset

                ds = Dataset.open(ds)
            return baseline_features(ds, X.reshape(-1), self.features)
        if X.ndim != 2:
            raise ConfigError(f"X must be session row numbers into `dataset` or a 2-D feature matrix, got shape {X.shape}")
        return X

    def _sample(self, y: np.ndarray) -> np.ndarray:
        """Positions of a stratified sample of about max_train_rows (at least 5 per class where it has them)."""
        if self.max_train_rows is None or len(y) <= self.max_train_rows:
            return np.arange(len(y))
        rng = np.random.default_rng(self.random_state)
        frac = self.max_train_rows / len(y)
        keep = [rng.choice(idx, size=min(len(idx), max(5, int(round(frac * len(idx))))), replace=False)
                for idx in (np.flatnonzero(y == c) for c in np.unique(y))]
        return np.sort(np.concatenate(keep))

    def fit(self, X, y) -> "Baseline":
        from sklearn.pipeline import Pipeline
        from sklearn.utils.class_weight import compute_sample_weight
        from sklearn.utils.validation import has_fit_parameter

        if self.estimator is None:
            raise ConfigError("Baseline needs an estimator; build one with create_baseline(name, ...)")
        if self.features not in FEATURE_KINDS:
            raise ConfigError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {self.features!r}")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        if self.max_train_rows is not None and self.max_train_rows < 2:
            raise ConfigError(f"max_train_rows must be >= 2 or None, got {self.max_train_rows}")
        F = self._matrix(X)
        self.classes_, y_ids = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigError(f"need at least 2 classes to fit, got {len(self.classes_)}")
        keep = self._sample(y_ids)
        F, y_ids = F[keep], y_ids[keep]
        model = clone(self.estimator)
        fit_params = {}
        if self.class_weight == "balanced":
            step, final = (model.steps[-1][0] + "__", model.steps[-1][1]) if isinstance(model, Pipeline) else ("", model)
            if not has_fit_parameter(final, "sample_weight"):
                raise ConfigError(f"class_weight='balanced' needs sample weights, which {type(final).__name__} does not take")
            fit_params[step + "sample_weight"] = compute_sample_weight("balanced", y_ids)
        self.estimator_ = model.fit(F, y_ids, **fit_params)
        self.n_train_rows_ = len(keep)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return self.classes_[np.asarray(self.estimator_.predict(self._matrix(X))).astype(np.int64)]

    def predict_proba(self, X) -> np.ndarray:
        """(n, len(classes_)) probabilities, columns in the order of `classes_`."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(self._matrix(X))


def create_baseline(name: str, features: str | None = None, *, dataset=None, max_train_rows: int | None = -1,
                    class_weight: str | None = None, random_state: int = 0, **params) -> Baseline:
    """Build a registered baseline; `params` override its estimator's defaults.

    features: `stats`, `header` or `sequence` (default: the baseline's own, `stats` but for
    `knn-seq`). max_train_rows: -1 keeps the baseline's own cap (5000 for `svm`), None lifts it.
    None-valued params are dropped, so command-line defaults never override a baseline's own.
    """
    info = baseline_info(name)
    features = features or info.features
    if features not in FEATURE_KINDS:
        raise ConfigError(f"unknown feature set {features!r}; choose from {', '.join(FEATURE_KINDS)}")
    if name == "knn-seq" and features != "sequence":
        raise ConfigError(f"knn-seq compares packet-length sequences; use features='sequence' (or knn for {features})")
    params = {k: v for k, v in params.items() if v is not None}
    try:
        estimator = info.build(random_state=random_state, **params)
    except TypeError as exc:
        raise ConfigError(f"{name}: bad parameter ({exc})") from None
    return Baseline(estimator, features, dataset, info.max_train_rows if max_train_rows == -1 else max_train_rows,
                    class_weight, random_state)


# -- one run on a dataset -------------------------------------------------------------------------
def _metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The deep runs' metrics.json fields (same macro-F1 definition), plus weighted-F1."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "n": int(len(y_true)),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i in ids},
        "confusion_matrix": {"labels": labels, "rows": "true", "columns": "predicted",
                             "matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist()},
    }


def train_baseline(dataset_path, name: str, features: str | None = None, split: str = "capture", seed: int = 0,
                   min_class_sessions: int = 0, include_val: bool = True, class_weight: str | None = None,
                   log: Callable[[str], None] | None = None, **params) -> dict[str, Any]:
    """Fit a baseline on the train (+ validation) side of the deep trainer's split, score the test side.

    The split comes from the same functions and settings as `trafficlens train` (same split,
    seed and min_class_sessions give the same test sessions), so the numbers sit beside a run's
    metrics.json. Returns accuracy, macro/weighted F1, per-class P/R/F1, confusion matrix,
    seconds (features, fit, predict), the split, and the dataset's layer and mask.
    """
    from pathlib import Path

    from trafficlens.datasets import Dataset
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.run import make_split, select_classes

    log = log or (lambda message: print(message, file=sys.stderr))
    cfg = TrainConfig(split=split, seed=seed, min_class_sessions=min_class_sessions)  # checks split and minimum
    model = create_baseline(name, features, class_weight=class_weight, random_state=seed, **params)
    ds = Dataset.open(dataset_path)
    classes, rows, y_rows, dropped = select_classes(ds.labels, min_class_sessions)
    if dropped:
        log(f"dropped {len(dropped)} classes with < {min_class_sessions} sessions: {', '.join(sorted(dropped))}")
    s = make_split(ds, rows, y_rows, cfg)
    for side, absent in s.missing.items():
        log(f"warning: {len(absent)} classes have no {side} sessions in this split: {', '.join(classes[i] for i in absent)}")
    label_of = np.full(len(ds), -1, dtype=np.int64)
    label_of[rows] = y_rows
    fit_rows = np.sort(np.concatenate([s.train, s.val])) if include_val else s.train
    names = np.array(classes, dtype=object)

    t0 = time.perf_counter()
    X_fit = baseline_features(ds, fit_rows, model.features)
    X_test = baseline_features(ds, s.test, model.features)
    feature_seconds = time.perf_counter() - t0
    log(f"{name} on {model.features} ({X_fit.shape[1]} features): {len(classes)} classes, fit {len(fit_rows)} "
        f"({'train+val' if include_val else 'train'}) / test {len(s.test)} sessions ({s.kind} split)")
    t0 = time.perf_counter()
    model.fit(X_fit, names[label_of[fit_rows]])
    fit_seconds = time.perf_counter() - t0

    out: dict[str, Any] = {"model": name, "features": model.features, "n_features": int(X_fit.shape[1]),
                           "params": params, "class_weight": class_weight, "max_train_rows": model.max_train_rows,
                           "fit_on": "train+val" if include_val else "train", "fit_rows": int(model.n_train_rows_),
                           "split": "test", "split_kind": s.kind}
    predict_seconds = 0.0
    if len(s.test):
        t0 = time.perf_counter()
        pred = model.predict(X_test)
        predict_seconds = time.perf_counter() - t0
        index = {c: i for i, c in enumerate(classes)}
        out.update(_metrics(label_of[s.test], np.array([index[p] for p in pred]), classes))
    captures = ds.column("capture")
    out.update({
        "fit_seconds": fit_seconds, "predict_seconds": predict_seconds, "feature_seconds": feature_seconds,
        "threads": cores(),
        "layer": ds.config.get("layer"), "mask": ds.config.get("mask"), "unit": ds.config.get("unit"),
        "split_info": {"kind": s.kind, "seed": seed, "min_class_sessions": min_class_sessions, "sizes": s.sizes(),
                       "captures": {side: int(len(np.unique(captures[getattr(s, side)].astype(str))))
                                    for side in ("train", "val", "test")},
                       "missing": {side: [classes[i] for i in ids] for side, ids in s.missing.items()},
                       "dropped_classes": dropped},
        "dataset": {"path": str(Path(dataset_path).resolve()), "n_sessions": len(ds), "created": ds.manifest.get("created"),
                    "config": ds.config},
    })
    return out

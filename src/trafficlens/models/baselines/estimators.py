"""Classical baselines behind the scikit-learn estimator contract, on the deep models' splits.

    clf = create_baseline("rf", features="stats", dataset=ds, class_weight="balanced")
    clf.fit(train_rows, ds.labels[train_rows])       # X: session row numbers into `dataset`
    clf.predict(test_rows)

    metrics = train_baseline("ds/iot", "xgboost", "header", TrainConfig(min_class_sessions=50), tune=True,
                             out="runs/xgb")           # a bundle that predict/serve/evaluate take

Every baseline is a `Baseline`: a scikit-learn classifier that turns X into a feature matrix
(`features.baseline_features`) and fits a registered scikit-learn estimator on it, with labels
encoded to 0..C-1 inside (XGBoost needs them) and `classes_` holding the original labels.

| name | estimator (defaults) | features |
|---|---|---|
| `dt` | decision tree, entropy splits (C4.5-like), at least 2 sessions per leaf | stats |
| `rf` | random forest, 300 trees, all cores | stats |
| `lr` | signed log, standard scaling, multinomial logistic regression (C=10) | stats |
| `nb` | signed log, Gaussian naive Bayes (variance smoothing 1e-3) | stats |
| `svm` | signed log, standard scaling, RBF SVC (C=100), Platt-calibrated (quadratic in training rows) | stats |
| `knn` | signed log, standard scaling, 5 neighbours weighted by distance | stats |
| `xgboost` | gradient-boosted trees, hist, 300 rounds of depth 8, all cores | stats |
| `lightgbm` | gradient-boosted trees, leaf-wise, 300 rounds of 31 leaves, all cores | stats |
| `knn-seq` | 1 nearest neighbour, Euclidean on the signed packet lengths | sequence |

`tune=True` (`--tune`) tries each baseline's small grid (`BaselineInfo.grid`): fit on the
training side, macro-F1 on the validation side, the best kept as fitted (no refit on train +
validation, exactly as deep models keep their best validation epoch: `training.splits.PROTOCOL`);
the test side is never looked at.

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
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from trafficlens.errors import ConfigError
from trafficlens.models.baselines.features import FEATURE_KINDS, baseline_features


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
    grid: dict[str, tuple] | None = None  # the small `--tune` search: build parameter -> values


_REGISTRY: dict[str, BaselineInfo] = {}


def register(name: str, description: str, features: str = "stats", grid: dict[str, tuple] | None = None):
    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = BaselineInfo(name, description, build, features, grid)
        return build

    return decorate


def list_baselines() -> list[str]:
    return list(_REGISTRY)


def baseline_info(name: str) -> BaselineInfo:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


class SignedLog(TransformerMixin, BaseEstimator):
    """sign(x) log(1 + |x|), as a named step so that bundles can export it (baseline_bundle.py)."""

    def fit(self, X, y=None) -> "SignedLog":
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        return signed_log1p(np.asarray(X))


def _scaled(classifier, log: bool = True, scale: bool = True):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [SignedLog()] if log else []
    return make_pipeline(*steps, *([StandardScaler()] if scale else []), classifier)


@register("dt", "decision tree, entropy splits (C4.5-like)", grid={"min_samples_leaf": (1, 2, 5), "max_depth": (None, 12)})
def _dt(random_state=0, **params):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(**{"criterion": "entropy", "min_samples_leaf": 2, "random_state": random_state, **params})


@register("rf", "random forest, 300 trees", grid={"max_features": ("sqrt", 0.3), "min_samples_leaf": (1, 2)})
def _rf(random_state=0, **params):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**{"n_estimators": 300, "n_jobs": cores(), "random_state": random_state, **params})


@register("lr", "logistic regression on scaled signed-log features", grid={"C": (1.0, 10.0, 100.0)})
def _lr(random_state=0, **params):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(**{"C": 10.0, "max_iter": 3000, "random_state": random_state, **params}))


@register("nb", "Gaussian naive Bayes on signed-log features", grid={"var_smoothing": (1e-9, 1e-5, 1e-3, 1e-1)})
def _nb(random_state=0, **params):
    from sklearn.naive_bayes import GaussianNB

    return _scaled(GaussianNB(**{"var_smoothing": 1e-3, **params}), scale=False)


@register("svm", "RBF support vector machine on scaled signed-log features", grid={"C": (10.0, 100.0, 1000.0)})
def _svm(random_state=0, **params):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # Platt probabilities from 5-fold decision values, one SVC refit on all rows for predict
    # (what SVC(probability=True), deprecated in scikit-learn 1.9, did).
    svc = SVC(**{"kernel": "rbf", "C": 100.0, "gamma": "scale", "random_state": random_state, **params})
    return _scaled(CalibratedClassifierCV(svc, method="sigmoid", ensemble=False))


@register("knn", "k nearest neighbours on scaled signed-log features", grid={"n_neighbors": (1, 3, 5, 10)})
def _knn(random_state=0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(**{"n_neighbors": 5, "weights": "distance", "n_jobs": cores(), **params}))


@register("xgboost", "gradient-boosted trees (XGBoost, hist)", grid={"max_depth": (6, 10), "learning_rate": (0.05, 0.1)})
def _xgboost(random_state=0, **params):
    from xgboost import XGBClassifier

    return XGBClassifier(**{"tree_method": "hist", "n_estimators": 300, "max_depth": 8, "learning_rate": 0.1,
                            "subsample": 0.9, "colsample_bytree": 0.8, "n_jobs": cores(),
                            "random_state": random_state, **params})


@register("lightgbm", "gradient-boosted trees (LightGBM, leaf-wise)", grid={"num_leaves": (31, 63), "learning_rate": (0.05, 0.1)})
def _lightgbm(random_state=0, **params):
    from lightgbm import LGBMClassifier

    # min_child_samples 5: the rarest device classes have a few dozen training sessions.
    return LGBMClassifier(**{"n_estimators": 300, "num_leaves": 31, "learning_rate": 0.1, "min_child_samples": 5,
                             "subsample": 0.9, "subsample_freq": 1, "colsample_bytree": 0.8, "n_jobs": cores(),
                             "random_state": random_state, "verbose": -1, **params})


@register("knn-seq", "nearest neighbour on packet-length sequences (Euclidean)", features="sequence",
          grid={"n_neighbors": (1, 3, 5)})
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


def create_baseline(name: str, features: str | None = None, *, dataset=None, max_train_rows: int | None = None,
                    class_weight: str | None = None, random_state: int = 0, **params) -> Baseline:
    """Build a registered baseline; `params` override its estimator's defaults.

    features: `stats`, `header` or `sequence` (default: the baseline's own, `stats` but for
    `knn-seq`). max_train_rows: fit a stratified sample of about this many rows (None: every row; the
    commands never sample, so that every model of a comparison learns from the same sessions).
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
    return Baseline(estimator, features, dataset, max_train_rows,
                    class_weight, random_state)


# -- one run on a dataset -------------------------------------------------------------------------
def learned_parameters(estimator) -> int | None:
    """How many numbers a fitted estimator learned or stores: tree nodes, coefficients, kept vectors."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    if hasattr(estimator, "calibrated_classifiers_"):  # the SVM: support vectors and their weights
        svc = estimator.calibrated_classifiers_[0].estimator
        return int(svc.support_vectors_.size + svc.dual_coef_.size + svc.intercept_.size)
    if hasattr(estimator, "tree_"):
        return int(estimator.tree_.node_count)
    if hasattr(estimator, "estimators_") and hasattr(estimator.estimators_[0], "tree_"):
        return int(sum(t.tree_.node_count for t in estimator.estimators_))
    if hasattr(estimator, "get_booster"):  # XGBoost: one line per node in the text dump
        return int(sum(tree.count("\n") for tree in estimator.get_booster().get_dump()))
    if hasattr(estimator, "booster_"):  # LightGBM: 2 leaves - 1 nodes per tree
        return int(sum(2 * t["num_leaves"] - 1 for t in estimator.booster_.dump_model()["tree_info"]))
    if hasattr(estimator, "coef_"):
        return int(estimator.coef_.size + estimator.intercept_.size)
    if hasattr(estimator, "theta_"):
        return int(estimator.theta_.size + estimator.var_.size + estimator.class_prior_.size)
    if hasattr(estimator, "_fit_X"):  # nearest neighbours keep the training matrix
        return int(estimator._fit_X.size)
    return None


def _grid(name: str, fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter combinations `--tune` tries (parameters set by hand are not searched)."""
    import itertools

    grid = {k: v for k, v in (baseline_info(name).grid or {}).items() if k not in fixed}
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


@dataclass
class FittedBaseline:
    """A baseline fitted on one split, with its test metrics (the metrics schema, no provenance)."""

    model: Baseline
    metrics: dict[str, Any]
    classes: list[str]  # the selected classes; `model.classes_` holds those present in training


def score_baseline(ds, name: str, split, classes: list[str], label_of: np.ndarray, *, features: str | None = None,
                   seed: int = 0, balance: str = "none", tune: bool = False,
                   log: Callable[[str], None] | None = None, **params) -> FittedBaseline:
    """Fit baseline `name` on the training side of `split`, select on validation, score the test side.

    The protocol every model follows (`training.splits.PROTOCOL`): the estimator learns from the
    training rows only (`fit_rows`: the training side, drawn down per class under `balance=
    "undersample"`; `"weights"` weighs classes inversely to their frequency); with `tune`, each
    grid point is fitted on those rows and scored on validation (macro-F1), and the best fitted
    model is kept as it is: nothing is refitted on training + validation, as no deep model is.
    `label_of[row]` is the class id of each dataset row (-1 outside the selection).
    """
    from sklearn.metrics import f1_score

    from trafficlens.training.metrics import SCHEMA_VERSION, classification_report
    from trafficlens.training.config import BALANCES
    from trafficlens.training.splits import fit_rows as training_rows

    if balance not in BALANCES:
        raise ConfigError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    log = log or (lambda message: print(message, file=sys.stderr))
    class_weight = "balanced" if balance == "weights" else None
    make = lambda **point: create_baseline(name, features, class_weight=class_weight,  # noqa: E731
                                           random_state=seed, **params, **point)
    features = make().features
    names = np.array(classes, dtype=object)
    rows = training_rows(split, label_of, balance, seed)
    if not len(rows):
        raise ConfigError(f"{name}: the {split.kind} split has no training sessions")
    t0 = time.perf_counter()
    X_fit = baseline_features(ds, rows, features)
    y_fit = names[label_of[rows]]
    feature_seconds = time.perf_counter() - t0

    tuning, chosen = None, {}
    if tune:
        if not len(split.val):
            raise ConfigError(f"--tune needs a validation side; this {split.kind} split has none")
        X_va, y_va = baseline_features(ds, split.val, features), label_of[split.val]
        trials, fitted = [], []
        for point in _grid(name, params):
            t1 = time.perf_counter()
            clf = make(**point).fit(X_fit, y_fit)
            pred = np.searchsorted(names.astype(str), clf.predict(X_va).astype(str))
            trials.append({"params": point, "val_macro_f1": float(f1_score(y_va, pred, average="macro", zero_division=0)),
                           "seconds": time.perf_counter() - t1})
            fitted.append(clf)
            log(f"tune {name} {point}: validation macro-F1 {trials[-1]['val_macro_f1']:.4f}")
        best = max(range(len(trials)), key=lambda i: trials[i]["val_macro_f1"])  # first of equals: the grid's order
        tuning = {"grid": {k: list(v) for k, v in (baseline_info(name).grid or {}).items() if k not in params},
                  "trials": trials, "best": trials[best]["params"], "best_val_macro_f1": trials[best]["val_macro_f1"]}
        chosen, model = trials[best]["params"], fitted[best]
        fit_seconds = trials[best]["seconds"]
        log(f"{name} on {features} ({X_fit.shape[1]} features): {len(classes)} classes, fit {len(rows)} training "
            f"sessions, best of {len(trials)} grid points on {len(split.val)} validation sessions")
    else:
        log(f"{name} on {features} ({X_fit.shape[1]} features): {len(classes)} classes, fit {len(rows)} training "
            f"sessions / test {len(split.test)} ({split.kind} split)")
        t0 = time.perf_counter()
        model = make().fit(X_fit, y_fit)
        fit_seconds = time.perf_counter() - t0

    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "model": name, "kind": "baseline", "features": features,
                           "n_features": int(X_fit.shape[1]), "params": {**params, **chosen}, "tuning": tuning,
                           "balance": balance, "class_weight": class_weight, "max_train_rows": model.max_train_rows,
                           "n_fit": int(model.n_train_rows_), "n_select": int(len(split.val)) if tune else 0,
                           "selection": "grid on validation macro-F1" if tune else "none (registry defaults)"}
    predict_seconds = 0.0
    if len(split.test):
        X_test = baseline_features(ds, split.test, features)
        t0 = time.perf_counter()
        full = expand_proba(model, model.predict_proba(X_test), classes)
        predict_seconds = time.perf_counter() - t0
        out.update(classification_report(label_of[split.test], full, classes))
    elif split.kind == "none":
        out["no_test_score"] = ("fitted with --split none (a deployment model); score it with "
                                "`trafficlens evaluate RUN --on DATASET`")
    out.update({
        "parameters": learned_parameters(model.estimator_),
        "train_seconds": fit_seconds, "fit_seconds": fit_seconds, "feature_seconds": feature_seconds,
        "inference_seconds": predict_seconds, "predict_seconds": predict_seconds,
        "inference_sessions_per_s": len(split.test) / predict_seconds if predict_seconds > 0 else None,
        "threads": cores(),
    })
    return FittedBaseline(model, out, list(classes))


def expand_proba(model: Baseline, proba: np.ndarray, classes: list[str]) -> np.ndarray:
    """Probabilities over every selected class (columns of `classes`); a class the training
    side lacked gets 0."""
    names = np.array(classes, dtype=str)
    full = np.zeros((len(proba), len(classes)))
    full[:, np.searchsorted(names, model.classes_.astype(str))] = proba
    return full


def train_baseline(dataset_path, name: str, features: str | None = None, cfg=None, *, tune: bool = False,
                   out=None, overwrite: bool = False, log: Callable[[str], None] | None = None,
                   **params) -> dict[str, Any]:
    """Fit a baseline on the training side of the deep trainer's split and score the test side.

    `cfg` is a `TrainConfig` (split, seed, balance and the class options; its optimiser settings
    are unused), so the same settings give the same split and training rows as `trafficlens
    train`, and the metrics sit beside a run's metrics.json in the same schema. With `out`, the
    fitted model is written there as a bundle (see `baseline_bundle.py`) that predict, serve,
    live and evaluate take like a deep run.
    """
    from trafficlens.datasets import Dataset
    from trafficlens.training.metrics import provenance
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.run import log_split, make_split

    log = log or (lambda message: print(message, file=sys.stderr))
    cfg = cfg or TrainConfig()
    create_baseline(name, features, random_state=cfg.seed, **params)  # bad names fail first
    if out is not None:
        from trafficlens.models.baselines.export import check_output

        check_output(out, overwrite)
    ds = Dataset.open(dataset_path)
    classes, rows, y_rows, dropped = cfg.selection.apply(ds, log)
    s = make_split(ds, rows, y_rows, cfg)
    log_split(s, classes, log)
    label_of = np.full(len(ds), -1, dtype=np.int64)
    label_of[rows] = y_rows
    fitted = score_baseline(ds, name, s, classes, label_of, features=features, seed=cfg.seed, balance=cfg.balance,
                            tune=tune, log=log, **params)
    metrics = fitted.metrics
    metrics.update(provenance(ds, s, classes=classes, seed=cfg.seed, selection=cfg.selection, dropped=dropped))
    if out is not None:
        from trafficlens.models.baselines.export import save_baseline_bundle

        save_baseline_bundle(out, fitted, ds, s, train=cfg.to_dict(), overwrite=overwrite)
        metrics["run"] = str(out)
    return metrics

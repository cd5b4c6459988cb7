"""Classical baselines behind the scikit-learn estimator contract, on the deep models' splits.

    clf = create_baseline("rf", features="stats", dataset=ds, class_weight="balanced")
    clf.fit(train_rows, ds.labels[train_rows])       # X: session row numbers into `dataset`
    clf.predict(test_rows)

Every baseline is a `Baseline`: a scikit-learn classifier that turns X into a feature matrix
(`features.baseline_features`) and fits a registered estimator (`catalog.py`) on it, with labels
encoded to 0..C-1 inside (XGBoost needs them) and `classes_` holding the original labels. Fitting
one on a dataset's split, with `--tune`, is `training.baselines`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from trafficlens.errors import ConfigError
from trafficlens.models.baselines.features import FEATURE_KINDS, baseline_features
from trafficlens.models.registry import ModelInfo, list_models, model_info


def signed_log1p(X: np.ndarray) -> np.ndarray:
    return np.sign(X) * np.log1p(np.abs(X))


def list_baselines() -> list[str]:
    return list_models("baseline")


def baseline_info(name: str) -> ModelInfo:
    return model_info(name, "baseline")


class SignedLog(TransformerMixin, BaseEstimator):
    """sign(x) log(1 + |x|), as a named step so that bundles can export it (baseline_bundle.py)."""

    def fit(self, X, y=None) -> "SignedLog":
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        return signed_log1p(np.asarray(X))


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
        estimator = info.builder(random_state=random_state, **params)
    except TypeError as exc:
        raise ConfigError(f"{name}: bad parameter ({exc})") from None
    return Baseline(estimator, features, dataset, max_train_rows,
                    class_weight, random_state)


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

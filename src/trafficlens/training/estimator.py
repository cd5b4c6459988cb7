"""`TrafficClassifier`: any registered model behind the scikit-learn estimator contract.

    clf = TrafficClassifier(model="chen-cnn", dataset=ds, max_epochs=10)
    clf.fit(train_rows, ds.labels[train_rows])        # X: session row numbers into `dataset`
    clf.predict(test_rows)

X is one of:
- an integer array of session row numbers into `dataset` (shape (n,) or (n, 1)). This is the
  form that slicing, pipelines, `cross_val_score` and `GridSearchCV` work with; the tensors are
  read from the dataset's memory maps batch by batch.
- a dict {tensor name: array (n, ...)} holding the tensors the model consumes (raw, as in a
  dataset: uint8 bytes), when no `dataset` is given.
- a 2-D uint8 array (n, K), for models that consume only the `image` tensor.
y: one label per row (any hashable values); `classes_` are the sorted unique labels.
A stratified `validation_fraction` of the training rows drives early stopping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted


class TrafficClassifier(ClassifierMixin, BaseEstimator):
    """A registered deep model (`model`, `trafficlens models` lists them) as a scikit-learn
    classifier: `fit`, `predict`, `predict_proba`, usable in pipelines and `GridSearchCV`.
    The arguments are TrainConfig's; `max_epochs`, `batch_size`, `lr` and `patience` left at None
    take the model's own training defaults (the Ge models: batch 32 and a cosine schedule), as
    `trafficlens train` does, else TrainConfig's; `train_config_` is what fit used. X is
    described in this module's docstring.

    >>> est = TrafficClassifier(model="chen-cnn", dataset=Dataset.open("ds/iot"), max_epochs=5)
    >>> est.fit(train_rows, labels[train_rows]).predict(test_rows)
    """

    def __init__(self, model: str = "chen-cnn", dataset: Any = None, model_params: dict | None = None,
                 max_epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                 loss: str = "ce", balance: str = "none", patience: int | None = None, validation_fraction: float = 0.2,
                 time_budget: float | None = None, seed: int = 0, device: str = "auto", progress: bool = False):
        self.model = model
        self.dataset = dataset
        self.model_params = model_params
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.loss = loss
        self.balance = balance
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.time_budget = time_budget
        self.seed = seed
        self.device = device
        self.progress = progress

    def _tensors(self, X, inputs: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(tensors by name, row numbers into them) for any accepted form of X."""
        from trafficlens.errors import ConfigError

        if isinstance(X, dict):
            missing = [t for t in inputs if t not in X]
            if missing:
                raise ConfigError(f"X lacks tensor(s) {', '.join(missing)} needed by {self.model}")
            n = len(X[inputs[0]])
            return {t: np.asarray(X[t]) for t in inputs}, np.arange(n)
        X = np.asarray(X)
        if self.dataset is not None and np.issubdtype(X.dtype, np.integer) and (X.ndim == 1 or X.shape[1] == 1):
            ds = self.dataset
            if isinstance(ds, (str, bytes)) or hasattr(ds, "__fspath__"):
                from trafficlens.datasets import Dataset

                ds = Dataset.open(ds)
            return {t: ds.tensor(t) for t in inputs}, X.reshape(-1).astype(np.int64)
        if X.ndim == 2 and X.dtype == np.uint8 and inputs == ("image",):
            return {"image": X}, np.arange(len(X))
        raise ConfigError("X must be session row numbers into `dataset`, a dict of tensors, or a uint8 (n, K) image array")

    def fit(self, X, y) -> "TrafficClassifier":
        """Train a new network on X, y (early stopping on a stratified `validation_fraction`)."""
        from trafficlens.models import create_model, model_info
        from trafficlens.training.config import TrainConfig, with_model_defaults
        from trafficlens.training.splits import random_split
        from trafficlens.training.device import setup
        from trafficlens.training.trainer import fit

        chosen = with_model_defaults(self.model, {"max_epochs": self.max_epochs, "batch_size": self.batch_size,
                                                  "lr": self.lr, "patience": self.patience})
        cfg = TrainConfig(**chosen, loss=self.loss, balance=self.balance, time_budget=self.time_budget,
                          seed=self.seed, device=self.device)
        self.train_config_ = cfg
        info = model_info(self.model, "deep")
        tensors, rows = self._tensors(X, info.inputs)
        self.classes_, y_ids = np.unique(np.asarray(y), return_inverse=True)
        self.n_features_in_ = 1
        device = setup(cfg)
        positions = np.arange(len(rows))
        if self.validation_fraction > 0:
            s = random_split(positions, y_ids, self.seed, (1 - self.validation_fraction, self.validation_fraction, 0.0))
            tr, va = s.train, s.val
        else:
            tr, va = positions, positions[:0]
        shapes = {t: tuple(tensors[t].shape[1:]) for t in info.inputs}
        self.model_ = create_model(self.model, len(self.classes_), shapes, **(self.model_params or {}))
        result = fit(self.model_, tensors, rows[tr], y_ids[tr], rows[va], y_ids[va], cfg, len(self.classes_),
                     progress=self.progress, device=device)
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.device_ = device
        return self

    def decision_function(self, X) -> np.ndarray:
        """The network's logits, (n, classes) in the order of `classes_`."""
        from trafficlens.training.trainer import predict_logits

        check_is_fitted(self, "model_")
        tensors, rows = self._tensors(X, self.model_.inputs)
        return predict_logits(self.model_, tensors, rows, max(self.train_config_.batch_size, 1024), self.device_)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits), (n, classes)."""
        logits = self.decision_function(X)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, as values of `classes_`."""
        scores = self.decision_function(X)  # checks that the model is fitted
        return self.classes_[scores.argmax(axis=1)]

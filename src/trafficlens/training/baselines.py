"""A classical baseline fitted on a dataset's split: what `trafficlens baseline` does, and the
baselines of `compare`, `cv` and `audit`.

    metrics = train_baseline("ds/iot", "xgboost", "header", TrainConfig(min_class_sessions=50), tune=True,
                             out="runs/xgb")           # a bundle that predict/serve/evaluate take

`tune=True` (`--tune`) tries the baseline's small grid (`ModelInfo.grid`): fit on the training
side, macro-F1 on the validation side, the best kept as fitted (no refit on train + validation,
exactly as deep models keep their best validation epoch: `splits.PROTOCOL`); the test side is
never looked at.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trafficlens.errors import ConfigError
from trafficlens.system import cores
from trafficlens.models.baselines.estimators import Baseline, baseline_info, create_baseline, learned_parameters
from trafficlens.models.baselines.features import baseline_features


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
        model, tuning = _tune(name, make, params, X_fit, y_fit, X_va, y_va, names, log)
        chosen, fit_seconds = tuning["best"], tuning["trials"][tuning["best_index"]]["seconds"]
        log(f"{name} on {features} ({X_fit.shape[1]} features): {len(classes)} classes, fit {len(rows)} training "
            f"sessions, best of {len(tuning['trials'])} grid points on {len(split.val)} validation sessions")
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


def _tune(name: str, make, params: dict, X_fit, y_fit, X_va, y_va, names: np.ndarray, log):
    """Each grid point fitted on the training rows, scored on validation: (the best fitted model,
    the tuning record); the first of equal scores wins (the grid's order)."""
    from sklearn.metrics import f1_score

    trials, fitted = [], []
    for point in _grid(name, params):
        t1 = time.perf_counter()
        clf = make(**point).fit(X_fit, y_fit)
        pred = np.searchsorted(names.astype(str), clf.predict(X_va).astype(str))
        trials.append({"params": point, "val_macro_f1": float(f1_score(y_va, pred, average="macro", zero_division=0)),
                       "seconds": time.perf_counter() - t1})
        fitted.append(clf)
        log(f"tune {name} {point}: validation macro-F1 {trials[-1]['val_macro_f1']:.4f}")
    best = max(range(len(trials)), key=lambda i: trials[i]["val_macro_f1"])
    return fitted[best], {"grid": {k: list(v) for k, v in (baseline_info(name).grid or {}).items() if k not in params},
                          "trials": trials, "best": trials[best]["params"], "best_index": best,
                          "best_val_macro_f1": trials[best]["val_macro_f1"]}


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
    fitted model is written there as a bundle (`training.bundle.save_baseline_bundle`) that predict, serve,
    live and evaluate take like a deep run.
    """
    from trafficlens.datasets import Dataset
    from trafficlens.training.metrics import provenance
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.run import select_and_split

    log = log or (lambda message: print(message, file=sys.stderr))
    cfg = cfg or TrainConfig()
    create_baseline(name, features, random_state=cfg.seed, **params)  # bad names fail first
    if out is not None:
        from trafficlens.training.bundle import check_output

        check_output(out, overwrite)
    data = select_and_split(Dataset.open(dataset_path), cfg, log=log)
    fitted = score_baseline(data.ds, name, data.split, data.classes, data.label_of, features=features, seed=cfg.seed,
                            balance=cfg.balance, tune=tune, log=log, **params)
    metrics = fitted.metrics
    metrics.update(provenance(data.ds, data.split, classes=data.classes, seed=cfg.seed, selection=cfg.selection,
                              dropped=data.dropped))
    if out is not None:
        from trafficlens.training.bundle import save_baseline_bundle

        from trafficlens.training.card import write_card

        save_baseline_bundle(out, fitted, data.ds, data.split, train=cfg.to_dict(), overwrite=overwrite)
        write_card(out, data.ds)
        metrics["run"] = str(out)
    return metrics

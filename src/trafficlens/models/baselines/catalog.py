"""The classical baselines in the model registry (`trafficlens models`), one builder each.

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

Each `grid` is the small `--tune` search. The signed log (sign(x) log(1 + |x|)) tames the heavy
tails of byte and time statistics before the distance- and gradient-based models; trees need no
scaling. C, k and the smoothing were chosen on the validation side of iot-sentinel's capture
split (benchmarks/RESULTS_baselines.md). scikit-learn, XGBoost and LightGBM are imported inside
the builders: listing the registry imports none of them.
"""

from __future__ import annotations

from trafficlens.models.registry import register_baseline
from trafficlens.system import cores


def _scaled(classifier, log: bool = True, scale: bool = True):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trafficlens.models.baselines.estimators import SignedLog

    steps = [SignedLog()] if log else []
    return make_pipeline(*steps, *([StandardScaler()] if scale else []), classifier)


@register_baseline("dt", "decision tree, entropy splits (C4.5-like)", grid={"min_samples_leaf": (1, 2, 5), "max_depth": (None, 12)})
def _dt(random_state=0, **params):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(**{"criterion": "entropy", "min_samples_leaf": 2, "random_state": random_state, **params})


@register_baseline("rf", "random forest, 300 trees", grid={"max_features": ("sqrt", 0.3), "min_samples_leaf": (1, 2)})
def _rf(random_state=0, **params):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**{"n_estimators": 300, "n_jobs": cores(), "random_state": random_state, **params})


@register_baseline("lr", "logistic regression on scaled signed-log features", grid={"C": (1.0, 10.0, 100.0)})
def _lr(random_state=0, **params):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(**{"C": 10.0, "max_iter": 3000, "random_state": random_state, **params}))


@register_baseline("nb", "Gaussian naive Bayes on signed-log features", grid={"var_smoothing": (1e-9, 1e-5, 1e-3, 1e-1)})
def _nb(random_state=0, **params):
    from sklearn.naive_bayes import GaussianNB

    return _scaled(GaussianNB(**{"var_smoothing": 1e-3, **params}), scale=False)


@register_baseline("svm", "RBF support vector machine on scaled signed-log features", grid={"C": (10.0, 100.0, 1000.0)})
def _svm(random_state=0, **params):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # Platt probabilities from 5-fold decision values, one SVC refit on all rows for predict
    # (what SVC(probability=True), deprecated in scikit-learn 1.9, did).
    svc = SVC(**{"kernel": "rbf", "C": 100.0, "gamma": "scale", "random_state": random_state, **params})
    return _scaled(CalibratedClassifierCV(svc, method="sigmoid", ensemble=False))


@register_baseline("knn", "k nearest neighbours on scaled signed-log features", grid={"n_neighbors": (1, 3, 5, 10)})
def _knn(random_state=0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(**{"n_neighbors": 5, "weights": "distance", "n_jobs": cores(), **params}))


@register_baseline("xgboost", "gradient-boosted trees (XGBoost, hist)", grid={"max_depth": (6, 10), "learning_rate": (0.05, 0.1)})
def _xgboost(random_state=0, **params):
    from xgboost import XGBClassifier

    return XGBClassifier(**{"tree_method": "hist", "n_estimators": 300, "max_depth": 8, "learning_rate": 0.1,
                            "subsample": 0.9, "colsample_bytree": 0.8, "n_jobs": cores(),
                            "random_state": random_state, **params})


@register_baseline("lightgbm", "gradient-boosted trees (LightGBM, leaf-wise)", grid={"num_leaves": (31, 63), "learning_rate": (0.05, 0.1)})
def _lightgbm(random_state=0, **params):
    from lightgbm import LGBMClassifier

    # min_child_samples 5: the rarest device classes have a few dozen training sessions.
    return LGBMClassifier(**{"n_estimators": 300, "num_leaves": 31, "learning_rate": 0.1, "min_child_samples": 5,
                             "subsample": 0.9, "subsample_freq": 1, "colsample_bytree": 0.8, "n_jobs": cores(),
                             "random_state": random_state, "verbose": -1, **params})


@register_baseline("knn-seq", "nearest neighbour on packet-length sequences (Euclidean)", features="sequence",
          grid={"n_neighbors": (1, 3, 5)})
def _knn_seq(random_state=0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    # One unit (bytes) in every column: no scaling, raw Euclidean distance between sequences.
    return KNeighborsClassifier(**{"n_neighbors": 1, "n_jobs": cores(), **params})

"""A fitted baseline in a file that runs no code when loaded, and back: the model part of a
baseline bundle (the run directory around it is `training.bundle`).

| runtime | file | for |
|---|---|---|
| `onnx` | `model.onnx` | scikit-learn estimators (dt, rf, lr, nb, svm), exported by skl2onnx, run by ONNX Runtime |
| `xgboost` | `model.xgb.json` | XGBoost's own JSON model |
| `lightgbm` | `model.lgb.txt` | LightGBM's own text model |
| `neighbors` | `model.knn.safetensors` | knn, knn-seq: the scaled training matrix and its labels |

No file is unpickled: ONNX Runtime, XGBoost and LightGBM parse their own formats and run only
their operators, and the nearest-neighbour arrays are plain tensors. Nearest neighbours are not
exported to ONNX: skl2onnx's distance-weighted k-NN disagreed with scikit-learn on 14% of test
rows when measured; refitting a k-NN at load is exact and takes milliseconds (it only indexes
the stored rows).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trafficlens.errors import BundleError, ConfigError

RUNTIMES = {"onnx": "model.onnx", "xgboost": "model.xgb.json", "lightgbm": "model.lgb.txt",
            "neighbors": "model.knn.safetensors"}
_NEIGHBOR_KEYS = ("fit_X", "y")


def _runtime_of_model(model) -> str:
    """The file format for a fitted Baseline's estimator (by its final step's type)."""
    final = model.estimator_.steps[-1][1] if hasattr(model.estimator_, "steps") else model.estimator_
    kind = type(final).__name__
    if kind == "XGBClassifier":
        return "xgboost"
    if kind == "LGBMClassifier":
        return "lightgbm"
    return "neighbors" if kind == "KNeighborsClassifier" else "onnx"


def _pipeline_parts(estimator) -> tuple[list, Any]:
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return [step for _, step in estimator.steps[:-1]], estimator.steps[-1][1]
    return [], estimator


def _export_onnx(estimator, n_features: int, path: Path) -> None:
    from skl2onnx import to_onnx

    _register_signed_log()
    probe = np.zeros((1, n_features), dtype=np.float32)
    with warnings.catch_warnings():  # skl2onnx reads SVC attributes scikit-learn 1.9 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        model = to_onnx(estimator, probe, options={"zipmap": False}, target_opset=17)
    path.write_bytes(model.SerializeToString())


def _export_neighbors(estimator, path: Path) -> dict[str, Any]:
    """The k-NN's training matrix after its preprocessing steps, and what rebuilds it."""
    from safetensors.numpy import save_file
    from sklearn.preprocessing import StandardScaler

    from trafficlens.models.baselines.estimators import SignedLog

    steps, knn = _pipeline_parts(estimator)
    arrays = {"fit_X": np.ascontiguousarray(knn._fit_X, dtype=np.float64), "y": np.ascontiguousarray(knn._y, dtype=np.int64)}
    signed_log = False
    for step in steps:
        if isinstance(step, SignedLog):
            signed_log = True
        elif isinstance(step, StandardScaler):
            arrays["mean"], arrays["scale"] = np.asarray(step.mean_, np.float64), np.asarray(step.scale_, np.float64)
        else:
            raise ConfigError(f"cannot export a k-NN pipeline step {type(step).__name__}")
    save_file(arrays, str(path))
    return {"n_neighbors": int(knn.n_neighbors), "weights": str(knn.weights), "p": float(knn.p),
            "metric": str(knn.metric), "signed_log": signed_log}


def export_baseline(model, n_features: int, out: Path) -> dict[str, Any]:
    """Write a fitted `Baseline`'s estimator into directory `out`; returns what loading needs
    (`runtime`, `file`, `runtime_config`)."""
    runtime = _runtime_of_model(model)
    target = out / RUNTIMES[runtime]
    extra: dict[str, Any] = {}
    if runtime == "onnx":
        _export_onnx(model.estimator_, n_features, target)
    elif runtime == "xgboost":
        model.estimator_.get_booster().save_model(str(target))
    elif runtime == "lightgbm":
        model.estimator_.booster_.save_model(str(target))
    else:
        extra = _export_neighbors(model.estimator_, target)
    return {"runtime": runtime, "file": target.name, "runtime_config": extra}


class BaselinePredictor:
    """A loaded baseline: tensors in (as prep builds them), probabilities over the bundle's labels out."""

    def __init__(self, name: str, features: str, tensor: str, n_features: int, n_labels: int,
                 class_index: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], layer: str | None,
                 feature_config: dict[str, Any]):
        self.name, self.features, self.inputs = name, features, (tensor,)
        self.n_features, self.n_labels, self.class_index = n_features, n_labels, class_index
        self._predict, self.layer, self.feature_config = predict, layer, feature_config

    def __repr__(self) -> str:
        return f"BaselinePredictor({self.name!r}, features={self.features!r}, {self.n_labels} labels)"

    def predict_proba(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        from trafficlens.models.baselines.features import feature_matrix

        X = feature_matrix(self.features, tensors[self.inputs[0]], self.layer, **self.feature_config)
        if X.shape[1] != self.n_features:
            raise ConfigError(f"{self.name}: {X.shape[1]} features from the input, the model was fitted on {self.n_features}")
        full = np.zeros((len(X), self.n_labels), dtype=np.float32)
        if len(X):
            full[:, self.class_index] = self._predict(np.ascontiguousarray(X, dtype=np.float32))
        return full


def _two_columns(p: np.ndarray) -> np.ndarray:
    """Binary boosters give P(class 1) alone."""
    p = np.asarray(p, dtype=np.float32)
    return np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p


def _load_runtime(path: Path, runtime: str, extra: dict[str, Any], n_features: int, n_classes: int):
    from trafficlens.system import cores

    if runtime == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cores()
        try:
            session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for malformed graphs
            raise BundleError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        (feed,) = session.get_inputs()
        if isinstance(feed.shape[-1], int) and feed.shape[-1] != n_features:
            raise BundleError(f"{path}: the ONNX model takes {feed.shape[-1]} features, its config says {n_features}")
        return lambda X: session.run(["probabilities"], {feed.name: X})[0]
    if runtime == "xgboost":
        import xgboost

        booster = xgboost.Booster(model_file=str(path))
        booster.set_param({"nthread": cores()})
        if booster.num_features() != n_features:
            raise BundleError(f"{path}: the XGBoost model takes {booster.num_features()} features, its config says {n_features}")
        return lambda X: _two_columns(booster.inplace_predict(X))
    if runtime == "lightgbm":
        import lightgbm

        try:
            booster = lightgbm.Booster(model_file=str(path))
        except lightgbm.basic.LightGBMError as exc:
            raise BundleError(f"{path}: not a LightGBM model ({exc})") from None
        if booster.num_feature() != n_features:
            raise BundleError(f"{path}: the LightGBM model takes {booster.num_feature()} features, its config says {n_features}")
        return lambda X: _two_columns(booster.predict(X, num_threads=cores()))
    return _load_neighbors(path, extra, n_features, n_classes)


def _load_neighbors(path: Path, extra: dict[str, Any], n_features: int, n_classes: int):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from sklearn.neighbors import KNeighborsClassifier

    from trafficlens.models.baselines.estimators import signed_log1p
    from trafficlens.system import cores

    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    fit_X, y = (arrays.get(k) for k in _NEIGHBOR_KEYS)
    if fit_X is None or y is None or fit_X.ndim != 2 or fit_X.shape[1] != n_features or len(y) != len(fit_X):
        raise BundleError(f"{path}: the k-NN arrays do not fit its config ({n_features} features)")
    if y.min(initial=0) < 0 or y.max(initial=0) >= n_classes:
        raise BundleError(f"{path}: k-NN labels outside the {n_classes} classes of its config")
    k = int(extra.get("n_neighbors", 1))
    if not 1 <= k <= len(fit_X) or extra.get("weights") not in ("uniform", "distance"):
        raise BundleError(f"{path}: k-NN settings out of range ({extra})")
    knn = KNeighborsClassifier(n_neighbors=k, weights=extra["weights"], p=float(extra.get("p", 2.0)),
                               metric=str(extra.get("metric", "minkowski")), n_jobs=cores()).fit(fit_X, y)
    mean, scale = arrays.get("mean"), arrays.get("scale")

    def predict(X: np.ndarray) -> np.ndarray:
        Z = signed_log1p(X) if extra.get("signed_log") else X
        if mean is not None:
            Z = (Z - mean) / scale
        return knn.predict_proba(Z)

    return predict


def load_predictor(path: Path, section: dict[str, Any], n_labels: int, layer: str | None) -> BaselinePredictor:
    """The predictor of a bundle's model section (`path`: the run directory); BundleError names
    what does not fit."""
    from trafficlens.models.baselines.estimators import list_baselines
    from trafficlens.models.baselines.features import FEATURE_KINDS, TENSOR_OF

    name, features, runtime = section.get("name"), section.get("features"), section.get("runtime")
    if name not in list_baselines() or features not in FEATURE_KINDS or runtime not in RUNTIMES:
        raise BundleError(f"{path}: unknown baseline {name!r}, feature set {features!r} or runtime {runtime!r}")
    n_features = section.get("n_features")
    index = np.asarray(section.get("class_index") or [], dtype=np.int64)
    if not isinstance(n_features, int) or not 1 <= n_features <= 1 << 20:
        raise BundleError(f"{path}: n_features {n_features!r} out of range")
    if not len(index) or index.min() < 0 or index.max() >= n_labels or len(set(index.tolist())) != len(index):
        raise BundleError(f"{path}: class_index does not fit its {n_labels} labels")
    feature_config = section.get("feature_config") or {}
    if set(feature_config) - {"header_packets", "header_bytes"}:
        raise BundleError(f"{path}: unknown feature settings {sorted(feature_config)}")
    predict = _load_runtime(path / RUNTIMES[runtime], runtime, section.get("runtime_config") or {}, n_features, len(index))
    return BaselinePredictor(name, features, TENSOR_OF[features], n_features, n_labels, index, predict, layer,
                             feature_config)


_SIGNED_LOG_REGISTERED = False


def _register_signed_log() -> None:
    """Teach skl2onnx the `SignedLog` step: sign(x) * log(1 + |x|) in ONNX operators."""
    global _SIGNED_LOG_REGISTERED
    if _SIGNED_LOG_REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import OnnxAbs, OnnxAdd, OnnxLog, OnnxMul, OnnxSign

    from trafficlens.models.baselines.estimators import SignedLog

    def shape(operator) -> None:
        operator.outputs[0].type = operator.inputs[0].type.__class__(operator.inputs[0].type.shape)

    def convert(scope, operator, container) -> None:
        x, opv = operator.inputs[0], container.target_opset
        log1p = OnnxLog(OnnxAdd(OnnxAbs(x, op_version=opv), np.array([1], dtype=np.float32), op_version=opv), op_version=opv)
        OnnxMul(OnnxSign(x, op_version=opv), log1p, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)

    update_registered_converter(SignedLog, "TrafficlensSignedLog", shape, convert)
    _SIGNED_LOG_REGISTERED = True

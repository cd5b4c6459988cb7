"""trafficlens: which application made this traffic?

    from trafficlens import Classifier, Dataset
    rows = Classifier.load("runs/cnn").predict_pcap("capture.pcap")   # one row per session
    ds = Dataset.open("ds/iot")                                       # a prepared dataset

Kept import-light on purpose: `import trafficlens` and `trafficlens --help` must stay fast, so
heavy modules (NumPy, PyArrow, PyTorch) are imported where they are used, and the names below
are imported on first access (PEP 562), not here.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "Classifier": "trafficlens.inference.classifier",  # a trained run on captures or tensors
    "Dataset": "trafficlens.datasets.dataset",  # a prepared dataset, memory-mapped
    "PrepConfig": "trafficlens.prep.config",  # the settings that decide a dataset's tensors
    "TrafficClassifier": "trafficlens.training.estimator",  # any registered model as a scikit-learn estimator
}
__all__ = ["Classifier", "Dataset", "PrepConfig", "TrafficClassifier", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'trafficlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

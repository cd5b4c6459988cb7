"""Classify the sessions of new captures with a model bundle, streaming.

The bundle carries the prep settings its model was trained on; `Classifier` rebuilds exactly
those tensors (same layer, mask, sizes and filters) from any capture, batches inference, and
gives one row per session. Sessions the model cannot judge (under the bundle's packet or byte
filters, or without payload) are listed with the reason instead of silently dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from trafficlens.datasets.config import PrepConfig
from trafficlens.errors import BundleError, ConfigError
from trafficlens.features.tensors import Example

UNKNOWN = "unknown"
# Output columns, named as Zeek / nfstream users know them (documented in the README).
COLUMNS = ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start", "ts_end",
           "packets", "bytes", "label", "confidence", "top_k", "status", "reason")
_BATCH = 1024


class Classifier:
    """A trained model bundle ready to label sessions.

    >>> clf = Classifier.load("runs/cnn")
    >>> clf.predict_pcap("capture.pcap", top_k=3, min_confidence=0.6)   # pandas DataFrame
    """

    def __init__(self, bundle, device):
        self.bundle = bundle
        self.device = device
        self.labels = list(bundle.labels)
        try:
            self.prep_config = PrepConfig.from_dict(bundle.preprocessing).for_prediction()
        except (TypeError, ConfigError) as exc:
            raise BundleError(f"{bundle.path}: preprocessing settings unusable ({exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> "Classifier":
        from trafficlens.training.bundle import load_bundle
        from trafficlens.training.trainer import resolve_device

        dev = resolve_device(device)
        return cls(load_bundle(path, device=str(dev)), dev)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.bundle.model.inputs)

    # -- inference ---------------------------------------------------------------------------
    def probabilities(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (n, classes) for stacked tensors keyed by dataset tensor name."""
        import torch

        model = self.bundle.model
        with torch.inference_mode():
            xs = [torch.from_numpy(np.ascontiguousarray(tensors[name])).to(self.device) for name in self.inputs]
            logits = model(*xs)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def explain(self, tensors: dict[str, np.ndarray], targets: np.ndarray | None = None, cam: str = "grad-cam"):
        """Explanation maps (Grad-CAM, attention, gradient x input) for stacked tensors; see
        `trafficlens.evaluation.explain.explain_tensors`. `targets`: class indices (default: predicted)."""
        from trafficlens.evaluation.explain import explain_tensors

        return explain_tensors(self.bundle.model, tensors, targets, self.device, cam)

    def _rows_for(self, examples: list[Example], top_k: int, min_confidence: float) -> list[dict[str, Any]]:
        tensors = {name: np.stack([getattr(e, name) for e in examples]) for name in self.inputs}
        probs = self.probabilities(tensors)
        k = max(1, min(top_k, len(self.labels)))
        order = np.argsort(-probs, axis=1)[:, :k]
        rows = []
        for example, p, best in zip(examples, probs, order):
            confidence = float(p[best[0]])
            confident = confidence >= min_confidence
            row = _meta_row(example.meta)
            row.update(
                label=self.labels[best[0]] if confident else UNKNOWN,
                confidence=confidence,
                top_k=[(self.labels[j], float(p[j])) for j in best],
                status="ok" if confident else "low_confidence",
                reason=None if confident else f"confidence {confidence:.3f} < {min_confidence}",
            )
            rows.append(row)
        return rows

    # -- captures ----------------------------------------------------------------------------
    def iter_predictions(self, captures: Iterable[str | os.PathLike] | str | os.PathLike, *, top_k: int = 1,
                         min_confidence: float = 0.0,
                         on_warning: Callable[[str], None] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Batches of result rows, capture by capture, with memory bounded by the batch size."""
        from trafficlens.datasets.prep import discover, prepare_capture

        if isinstance(captures, (str, os.PathLike)):
            captures = [captures]
        files, _ = discover(captures)
        if not files:
            raise ConfigError(f"no capture files found in {', '.join(map(str, captures))}")
        pending: list[Example] = []
        rejected: list[dict[str, Any]] = []
        out: list[list[dict[str, Any]]] = []

        def emit(example: Example) -> None:
            pending.append(example)
            if len(pending) >= _BATCH:
                out.append(self._rows_for(pending, top_k, min_confidence))
                pending.clear()

        def reject(meta: dict[str, Any], reason: str) -> None:
            row = _meta_row(meta)
            row.update(label=None, confidence=None, top_k=[], status="not_judged", reason=_REASONS.get(reason, reason))
            rejected.append(row)

        for path, relative in files:
            report = prepare_capture(path, relative, self.prep_config, None, emit, reject)
            if on_warning is not None:
                for message in report.warnings + ([report.error] if report.error else []):
                    on_warning(message)
            if pending:
                out.append(self._rows_for(pending, top_k, min_confidence))
                pending.clear()
            if rejected:
                out.append(list(rejected))
                rejected.clear()
            yield from out
            out.clear()

    def predict_pcap(self, captures, *, top_k: int = 1, min_confidence: float = 0.0):
        """One row per session of the capture(s), as a pandas DataFrame (columns: `COLUMNS`)."""
        import pandas as pd

        rows = [row for batch in self.iter_predictions(captures, top_k=top_k, min_confidence=min_confidence)
                for row in batch]
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def predict_sessions(self, dataset, rows: np.ndarray | None = None):
        """Label rows of a prepared dataset (made with this bundle's settings): DataFrame."""
        import pandas as pd

        from trafficlens.datasets import Dataset

        ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        mismatch = {k: (v, ds.config.get(k)) for k, v in self.bundle.preprocessing.items()
                    if k in _TENSOR_SETTINGS and ds.config.get(k) != v}
        if mismatch:
            raise ConfigError(f"{ds.path}: prepared with other settings than {self.bundle.path} ({mismatch})")
        rows = np.arange(len(ds)) if rows is None else np.asarray(rows)
        probs = np.concatenate([
            self.probabilities({name: ds.tensor(name)[rows[i : i + _BATCH]] for name in self.inputs})
            for i in range(0, len(rows), _BATCH)
        ]) if len(rows) else np.zeros((0, len(self.labels)))
        best = probs.argmax(axis=1) if len(rows) else np.zeros(0, dtype=int)
        return pd.DataFrame({"id": rows, "label": [self.labels[i] for i in best], "confidence": probs.max(axis=1) if len(rows) else []})


_TENSOR_SETTINGS = ("unit", "layer", "mask", "image_bytes", "packets", "packet_bytes", "sequence_length", "idle_timeout")
_REASONS = {
    "empty_sessions": "no payload",
    "min_packets": "fewer packets than the model's min_packets",
    "min_bytes": "fewer payload bytes than the model's min_bytes",
}


def _meta_row(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: meta.get(key) for key in ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                                            "ts_start", "ts_end", "packets", "bytes")}

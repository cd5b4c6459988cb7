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

from trafficlens.prep.config import PrepConfig
from trafficlens.errors import BundleError, ConfigError
from trafficlens.prep.tensors.examples import ExampleBatch, metas_of

UNKNOWN = "unknown"
# Output columns, named as Zeek / nfstream users know them (documented in the README).
COLUMNS = ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start", "ts_end",
           "packets", "bytes", "label", "confidence", "top_k", "status", "reason")
_BATCH = 1024
_CPU_CHUNK = 256


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
        self._inference_model = None  # batch norms folded, built on first use (explain keeps the bundle's)
        self._onnx = None  # the same model on ONNX Runtime (CPU), when it is installed and agrees
        self.runtime: str | None = None  # "onnxruntime" or "torch", once the model is built
        self.trusted_keys: tuple[str, ...] = ()  # the keys `load` verified the bundle with, if any

    def _model_for_inference(self):
        if self.kind == "baseline":
            self.runtime = self.bundle.config["model"]["runtime"]
            return self.bundle.model
        if self._inference_model is None:
            from trafficlens.prep.tensors.statistics import STATS_NAMES
            from trafficlens.inference.runtime import folded_for_inference, probe_inputs

            c = self.prep_config
            shapes = {"image": (c.image_bytes,), "packets": (c.packets, c.packet_bytes),
                      "sequence": (c.sequence_length, 2), "stats": (len(STATS_NAMES),)}
            probe = probe_inputs(self.inputs, shapes, device=self.device)
            self._inference_model = folded_for_inference(self.bundle.model, probe)
            self.runtime = "torch"
            if self.device.type == "cpu" and os.environ.get("TRAFFICLENS_INFERENCE", "auto") != "torch":
                import torch

                from trafficlens.inference.runtime import onnx_for_inference

                self._onnx = onnx_for_inference(self._inference_model, probe, torch.get_num_threads())
                if self._onnx is not None:
                    self.runtime = "onnxruntime"
        return self._inference_model

    def warm_up(self) -> "Classifier":
        """Build the inference model now (folded batch norms, the ONNX Runtime export: about a
        second) instead of at the first batch; live capture and servers call it before traffic.
        ONNX Runtime takes PyTorch's thread count at this moment."""
        self._model_for_inference()
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto",
             trusted_keys: Iterable[str | os.PathLike] = ()) -> "Classifier":
        """A deep model's or a baseline's run directory (`train -o`, `baseline -o`).

        `trusted_keys`: Ed25519 public keys (PEM files); when given, the bundle must carry a
        signature by one of them over every file loading reads (`trafficlens sign`), checked
        before anything is built."""
        from trafficlens.training.bundle import CONFIG, load_any_bundle, read_config
        from trafficlens.training.device import resolve_device

        dev = resolve_device(device)
        trusted_keys = tuple(os.fspath(k) for k in trusted_keys)
        config = read_config(path)
        if trusted_keys:
            from trafficlens.training.signing import verify_bundle

            weights = (config.get("weights") or {}).get("file") if isinstance(config.get("weights"), dict) else None
            calibration = ["calibration.json"] if (Path(path) / "calibration.json").is_file() else []  # groups read it
            verify_bundle(path, trusted_keys, needed=[CONFIG, *([weights] if weights else []), *calibration])
            config = read_config(path)  # as verified
        clf = cls(load_any_bundle(path, str(dev), config), dev)
        clf.trusted_keys = trusted_keys
        return clf

    @property
    def kind(self) -> str:
        """`deep` or `baseline`."""
        return self.bundle.kind

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.bundle.model.inputs)

    # -- inference ---------------------------------------------------------------------------
    def probabilities(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (n, classes) for stacked tensors keyed by dataset tensor name."""
        import torch

        model = self._model_for_inference()
        if self.kind == "baseline":
            return model.predict_proba(tensors)
        n = len(tensors[self.inputs[0]])
        # On a CPU, chunks of 256 sessions keep activations in cache: 1.2-1.6x the sessions/s of
        # chunks of 1024 for chen-cnn on 2 cores (measured); a GPU takes the whole batch.
        step = n if str(self.device).startswith("cuda") else _CPU_CHUNK
        out = []
        if self._onnx is not None:
            from trafficlens.training.metrics import softmax

            for i in range(0, n, max(step, 1)):
                out.append(softmax(self._onnx(*[np.ascontiguousarray(tensors[name][i : i + step]) for name in self.inputs])))
            return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, n, max(step, 1)):
                xs = [torch.from_numpy(np.ascontiguousarray(tensors[name][i : i + step])).to(self.device)
                      for name in self.inputs]
                out.append(torch.softmax(model(*xs).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def rows_for_batches(self, batches: list[ExampleBatch], top_k: int = 1,
                         min_confidence: float = 0.0) -> list[dict[str, Any]]:
        """One output row per session of `ExampleBatch`es (what a prep engine emits), inferred
        together: live hands over many small ones."""
        metas, tensors = self._inputs_of(batches)
        rows: list[dict[str, Any]] = []
        for i in range(0, len(metas), _BATCH):
            part = {name: tensors[name][i : i + _BATCH] for name in self.inputs}
            rows += self._rows(metas[i : i + _BATCH], part, top_k, min_confidence)
        return rows

    def session_probabilities(self, batches: list[ExampleBatch]) -> tuple[list[dict[str, Any]], np.ndarray]:
        """(session metadata, class probabilities (n, classes)) of `ExampleBatch`es: what group
        decisions (`inference.groups`) pool."""
        metas, tensors = self._inputs_of(batches)
        parts = [self.probabilities({name: tensors[name][i : i + _BATCH] for name in self.inputs})
                 for i in range(0, len(metas), _BATCH)]
        return metas, np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)

    def _inputs_of(self, batches: list[ExampleBatch]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        metas: list[dict[str, Any]] = []
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.inputs}
        derived = bool({"sequence", "stats"} & set(self.inputs))  # else not built at all
        for batch in batches:
            columns, sequence, stats = batch.rows(np.arange(len(batch)), tensors=derived)
            built = {"image": batch.image, "packets": batch.packets, "sequence": sequence, "stats": stats}
            metas += metas_of(columns)
            for name in self.inputs:
                parts[name].append(built[name])
        return metas, {name: np.concatenate(arrays) if len(arrays) > 1 else arrays[0] for name, arrays in parts.items()}

    def _rows(self, metas: list[dict[str, Any]], tensors: dict[str, np.ndarray], top_k: int,
              min_confidence: float) -> list[dict[str, Any]]:
        probs = self.probabilities(tensors)
        k = max(1, min(top_k, len(self.labels)))
        order = np.argsort(-probs, axis=1)[:, :k]
        rows = []
        for meta, p, best in zip(metas, probs, order):
            confidence = float(p[best[0]])
            confident = confidence >= min_confidence
            row = _meta_row(meta)
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
        from trafficlens.capture.formats import discover

        if isinstance(captures, (str, os.PathLike)):
            captures = [captures]
        files, _ = discover(captures)
        if not files:
            raise ConfigError(f"no capture files found in {', '.join(map(str, captures))}")
        for path, relative in files:
            yield from self._predict_file(path, relative, top_k, min_confidence, on_warning)

    def _predict_file(self, path: Path, relative: str, top_k: int, min_confidence: float,
                      on_warning: Callable[[str], None] | None, decide=None, watch=None) -> Iterator[list[dict[str, Any]]]:
        """Rows of one capture as they are made. The engine works by callbacks, so it runs in a
        thread that hands row batches over a small queue: memory stays bounded by a few batches
        however large the capture, and stopping the iterator stops the reading.
        `decide(batch)`: rows of an `ExampleBatch` instead of one per session, and no rows for
        rejected sessions (group decisions); `watch(block)`: sees every packet block (both run
        in the reading thread)."""
        import queue
        import threading

        from trafficlens.prep.capture_file import prepare_capture
        from trafficlens.prep.engines.base import EngineSink

        handoff: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        rejected: list[dict[str, Any]] = []

        def put(item) -> None:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stopped

        def flush_rejected() -> None:
            if rejected:
                put(("rows", list(rejected)))
                rejected.clear()

        def sessions(batch: ExampleBatch, trigger: str, times) -> None:
            flush_rejected()  # in the order the engine decided them
            put(("rows", decide(batch) if decide else self.rows_for_batches([batch], top_k, min_confidence)))

        def reject(meta: dict[str, Any], reason: str, trigger: str) -> None:
            rejected.append(rejected_row(meta, reason))
            if len(rejected) >= _BATCH:
                flush_rejected()

        def produce() -> None:
            try:
                report = prepare_capture(path, relative, self.prep_config, None,
                                         EngineSink(sessions, None if decide else reject), watch=watch)
                flush_rejected()
                put(("done", report))
            except _Stopped:
                pass
            except BaseException as error:  # handed to the consumer, raised there
                try:
                    put(("error", error))
                except _Stopped:
                    pass

        worker = threading.Thread(target=produce, name=f"predict {relative}", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = handoff.get()
                if kind == "rows":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    if on_warning is not None:
                        for message in value.warnings + ([value.error] if value.error else []):
                            on_warning(message)
                    return
        finally:
            stop.set()
            worker.join()

    def predict_pcap(self, captures, *, top_k: int = 1, min_confidence: float = 0.0):
        """One row per session of the capture(s), as a pandas DataFrame (columns: `COLUMNS`)."""
        import pandas as pd

        rows = [row for batch in self.iter_predictions(captures, top_k=top_k, min_confidence=min_confidence)
                for row in batch]
        return pd.DataFrame(rows, columns=list(COLUMNS))

    # -- groups of sessions --------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """The calibration temperature `evaluate --by` fitted on the run's validation split
        (RUN/calibration.json); 1.0 when none was fitted."""
        from trafficlens.inference.groups import read_calibration

        return read_calibration(self.bundle.path).get("temperature", 1.0)

    def iter_group_predictions(self, captures, config=None, *,
                               on_warning: Callable[[str], None] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Batches of group rows (`inference.groups.GROUP_COLUMNS`), capture by capture: hosts are
        named within their capture file, so memory holds one capture's groups (at most
        `config.max_groups`, the least recently updated closed early)."""
        from trafficlens.capture.formats import discover
        from trafficlens.inference.groups import GroupConfig, GroupDecisions, load_learned
        from trafficlens.prep.hosts import HostAddresses

        config = config or GroupConfig(temperature=self.temperature)
        learned = load_learned(self.bundle.path, config.by, len(self.labels)) if config.aggregator == "learned" else None
        if isinstance(captures, (str, os.PathLike)):
            captures = [captures]
        files, _ = discover(captures)
        if not files:
            raise ConfigError(f"no capture files found in {', '.join(map(str, captures))}")
        for path, relative in files:
            groups = GroupDecisions(self.labels, config, learned)
            hosts = HostAddresses() if config.host_key == "mac" and config.by != "capture" else None

            def decide(batch: ExampleBatch, groups=groups, hosts=hosts) -> list[dict[str, Any]]:
                metas, proba = self.session_probabilities([batch])
                groups.add(metas, proba, [hosts.mac_of(m) for m in metas] if hosts is not None else None)
                return groups.pop_evicted()

            for rows in self._predict_file(path, relative, 1, 0.0, on_warning, decide=decide,
                                           watch=hosts.watch if hosts is not None else None):
                if rows:
                    yield rows
            yield groups.rows()

    def predict_hosts(self, captures, *, by: str = "host", host_key: str = "ip", window: float = 300.0,
                      aggregator: str = "pool", top_k: int = 1, min_confidence: float = 0.0,
                      temperature: float | None = None):
        """One row per host (or capture, or host and time window) of the capture(s), as a pandas
        DataFrame (columns: `inference.groups.GROUP_COLUMNS`).

        >>> clf.predict_hosts("capture.pcap", by="host", host_key="mac", aggregator="pool")"""
        import pandas as pd

        from trafficlens.inference.groups import GROUP_COLUMNS, GroupConfig

        config = GroupConfig(by=by, host_key=host_key, window=window, aggregator=aggregator, top_k=top_k,
                             min_confidence=min_confidence,
                             temperature=self.temperature if temperature is None else temperature)
        rows = [row for batch in self.iter_group_predictions(captures, config) for row in batch]
        return pd.DataFrame(rows, columns=list(GROUP_COLUMNS))

    def predict_sessions(self, dataset, rows: np.ndarray | None = None):
        """Label rows of a prepared dataset (made with this bundle's settings): DataFrame."""
        import pandas as pd

        from trafficlens.datasets import Dataset

        ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        mismatch = {k: (v, ds.config.get(k)) for k, v in self.bundle.preprocessing.items()
                    if k in TENSOR_SETTINGS and ds.config.get(k) != v}
        if mismatch:
            raise ConfigError(f"{ds.path}: prepared with other settings than {self.bundle.path} ({mismatch})")
        rows = np.arange(len(ds)) if rows is None else np.asarray(rows)
        probs = np.concatenate([
            self.probabilities({name: ds.tensor(name)[rows[i : i + _BATCH]] for name in self.inputs})
            for i in range(0, len(rows), _BATCH)
        ]) if len(rows) else np.zeros((0, len(self.labels)))
        best = probs.argmax(axis=1) if len(rows) else np.zeros(0, dtype=int)
        return pd.DataFrame({"id": rows, "label": [self.labels[i] for i in best], "confidence": probs.max(axis=1) if len(rows) else []})


TENSOR_SETTINGS = ("unit", "layer", "mask", "image_bytes", "packets", "packet_bytes", "sequence_length", "idle_timeout")
def rejected_row(meta: dict[str, Any], reason: str) -> dict[str, Any]:
    """The output row of a session the model's prep filters keep it from judging."""
    from trafficlens.prep.tensors.filters import REJECTS

    row = _meta_row(meta)
    row.update(label=None, confidence=None, top_k=[], status="not_judged", reason=REJECTS.get(reason, reason))
    return row


def _meta_row(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: meta.get(key) for key in ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                                            "ts_start", "ts_end", "packets", "bytes")}


class _Stopped(Exception):
    """The consumer of `_predict_file` went away; the reading thread unwinds."""

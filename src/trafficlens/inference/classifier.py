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

from trafficlens.capture.flow_ids import community_id, zeek_uid
from trafficlens.prep.config import PrepConfig
from trafficlens.errors import BundleError, ConfigError
from trafficlens.prep.tensors.examples import ExampleBatch, metas_of

UNKNOWN = "unknown"
# Output columns, named as Zeek / nfstream users know them (documented in the README): `uid` and
# `community_id` join the rows to Zeek's conn.log, Suricata's and nfstream's flows; orig (the
# client, src_*) and resp counts and IP bytes are Zeek's orig_pkts, orig_ip_bytes, ...
COLUMNS = ("capture", "uid", "community_id", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start",
           "ts_end", "duration", "packets", "bytes", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
           "label", "confidence", "top_k", "status", "reason")
PROBABILITY_DIGITS = 4  # confidence and top-k probabilities, in every output format
_BATCH = 1024
_CPU_CHUNK = 256


class _CpuDevice(str):
    """"cpu" with torch.device's `type`: the device of a classifier built without PyTorch."""

    type = "cpu"


CPU = _CpuDevice("cpu")


def _threads(chosen: int | None = None) -> int:
    """ONNX Runtime's intra-op threads: `chosen` (`Classifier.set_cpu_threads`), else PyTorch's
    setting when PyTorch is loaded, else every core this process may use."""
    import sys

    if chosen is not None:
        return chosen
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    from trafficlens.system import cores

    return cores()


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
        self._cached_key: str | None = None  # set by `load` when the ONNX cache holds this bundle's export
        self._cpu_threads: int | None = None  # set_cpu_threads
        self._banks: dict = {}  # open-set banks read and checked (`open_set.load_bank`), by SHA-256

    def _model_for_inference(self):
        if self.kind == "baseline":
            self.runtime = self.bundle.config["model"]["runtime"]
            return self.bundle.model
        if self._cached_key is not None:  # loaded from the ONNX cache: PyTorch only if that fails now
            from trafficlens.inference.onnx_cache import load_cached

            self._onnx, self._cached_key = load_cached(self._cached_key, list(self.inputs), _threads(self._cpu_threads)), None
            if self._onnx is not None:
                self.runtime = "onnxruntime"
                shapes = self._input_shapes()  # one small batch now: ONNX Runtime sets itself up on its first run
                self._onnx(*[np.zeros((2, *shapes[name]), np.uint8 if name in ("image", "packets") else np.float32)
                             for name in self.inputs])
        if self._onnx is not None and self._inference_model is None:
            return None  # answered from the cached export: no PyTorch model is built
        if self._inference_model is None:
            from trafficlens.inference.runtime import folded_for_inference

            probe = self._probe()
            self._inference_model = folded_for_inference(self.bundle.model, probe)
            self.runtime = "torch"
            if self.device.type == "cpu" and os.environ.get("TRAFFICLENS_INFERENCE", "auto") != "torch":
                from trafficlens.inference.onnx_cache import onnx_cache_key
                from trafficlens.inference.runtime import onnx_for_inference

                try:
                    key = onnx_cache_key(self.bundle.config, list(self.inputs))
                except ImportError:  # no onnxruntime: onnx_for_inference says so by returning None
                    key = None
                self._onnx = onnx_for_inference(self._inference_model, probe, _threads(self._cpu_threads),
                                                names=list(self.inputs), cache_key=key)
                if self._onnx is not None:
                    self.runtime = "onnxruntime"
        return self._inference_model

    def _probe(self):
        """Random inputs of the bundle's tensor shapes, to check rewrites of the model against it."""
        from trafficlens.inference.runtime import probe_inputs

        return probe_inputs(self.inputs, self._input_shapes(), device=self.device)

    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each dataset tensor's shape per session under this bundle's prep settings."""
        from trafficlens.prep.tensors.statistics import STATS_NAMES

        c = self.prep_config
        return {"image": (c.image_bytes,), "packets": (c.packets, c.packet_bytes),
                "sequence": (c.sequence_length, 2), "stats": (len(STATS_NAMES),)}

    def export_onnx(self, path: str | os.PathLike) -> Path:
        """Write the ONNX model predict runs on ONNX Runtime (batch norms folded; checked to give
        the bundle's probabilities to 1e-4) to `path`. Inputs are named after the dataset tensors
        (`image`, `packets`, ... as uint8 or float32, batch first), the output is `logits`; the
        model's metadata holds the labels in logit order, the inputs and the prep settings.

        >>> Classifier.load("runs/cnn", device="cpu").export_onnx("cnn.onnx")
        """
        import json

        from trafficlens.files import atomic_output

        if self.kind == "baseline":
            raise ConfigError(f"{self.bundle.path}: a baseline run; its model file is already in the run "
                              "(model.onnx, .xgb.json or .lgb.txt), on features rather than tensors")
        if self.device.type != "cpu":
            raise ConfigError("export_onnx: load the run with device='cpu'")
        model = self._model_for_inference()
        onnx_model = self._onnx
        if onnx_model is None:
            import torch

            from trafficlens.inference.runtime import onnx_for_inference

            onnx_model = onnx_for_inference(model, self._probe(), torch.get_num_threads(), names=list(self.inputs))
        if onnx_model is None:
            raise ConfigError(f"{self.bundle.path}: {self.bundle.name} cannot be exported to ONNX here (onnx and "
                              "onnxruntime installed? pip install 'trafficlens[ml]'; or an operator the exporter lacks)")
        import onnx

        proto = onnx.load_from_string(onnx_model.model_bytes)
        onnx.helper.set_model_props(proto, {
            "trafficlens.model": self.bundle.name, "trafficlens.labels": json.dumps(self.labels),
            "trafficlens.inputs": json.dumps(list(self.inputs)),
            "trafficlens.preprocessing": json.dumps(self.bundle.preprocessing, sort_keys=True)})
        with atomic_output(path, "wb") as fh:
            fh.write(proto.SerializeToString())
        return Path(path)

    def set_cpu_threads(self, threads: int) -> "Classifier":
        """Intra-op threads for CPU inference; call it before `warm_up`. PyTorch's too when PyTorch
        runs or builds the model (not when the cached export answers without it)."""
        self._cpu_threads = threads
        if self._cached_key is None and self.kind == "deep":
            import torch

            torch.set_num_threads(threads)
        return self

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

        trusted_keys = tuple(os.fspath(k) for k in trusted_keys)
        config = read_config(path)
        if not trusted_keys:  # a signed bundle's check covers files the cache is not one of
            fast = cls._from_onnx_cache(path, config, device)
            if fast is not None:
                return fast
        from trafficlens.training.device import resolve_device

        dev = resolve_device(device)
        if trusted_keys:
            from trafficlens.training.signing import verify_bundle

            weights = (config.get("weights") or {}).get("file") if isinstance(config.get("weights"), dict) else None
            # groups read these; the bank is checked against calibration.json's SHA-256 when used
            calibration = ["calibration.json"] if (Path(path) / "calibration.json").is_file() else []
            verify_bundle(path, trusted_keys, needed=[CONFIG, *([weights] if weights else []), *calibration])
            config = read_config(path)  # as verified
        clf = cls(load_any_bundle(path, str(dev), config), dev)
        clf.trusted_keys = trusted_keys
        return clf

    @classmethod
    def _from_onnx_cache(cls, path, config: dict[str, Any], device: str) -> "Classifier | None":
        """A CPU classifier on this bundle's cached ONNX export, built without importing PyTorch
        (most of a small `predict`'s start-up); None where that does not apply: another device,
        a possible GPU under "auto", a baseline, TRAFFICLENS_INFERENCE=torch, no cache entry."""
        from trafficlens.inference.onnx_cache import cache_path, cuda_may_be_present, onnx_cache_key
        from trafficlens.training.bundle import DeferredBundle, bundle_kind

        if (device not in ("auto", "cpu") or (device == "auto" and cuda_may_be_present())
                or bundle_kind(config) != "deep" or os.environ.get("TRAFFICLENS_INFERENCE", "auto") == "torch"):
            return None
        bundle = DeferredBundle.of(path, config)
        if bundle is None:
            return None
        try:
            key = onnx_cache_key(config, list(bundle.inputs))
        except ImportError:
            return None
        cached = cache_path(key)
        if cached is None or not cached.is_file():
            return None
        try:
            clf = cls(bundle, CPU)
        except BundleError:
            return None  # the full load names the problem
        clf._cached_key = key
        return clf

    @property
    def kind(self) -> str:
        """`deep` or `baseline`."""
        return self.bundle.kind

    def __repr__(self) -> str:
        c = self.prep_config
        return (f"Classifier({os.fspath(self.bundle.path)!r}, model={self.bundle.name!r}, "
                f"kind={self.kind!r}, classes={len(self.labels)}, layer={c.layer!r}, mask={c.mask!r}, "
                f"device={str(self.device)!r})")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The dataset tensors the model reads (`image`, `packets`, `sequence`, `stats`)."""
        return tuple(self.bundle.inputs)

    # -- inference ---------------------------------------------------------------------------
    def probabilities(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (n, classes) for stacked tensors keyed by dataset tensor name."""
        return self.outputs(tensors)[0]

    def outputs(self, tensors: dict[str, np.ndarray], embed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(class probabilities (n, classes), and with `embed` each session's unit-length embedding
        (n, D), `runtime.WithEmbedding`, else None). A baseline has no embedding."""
        model = self._model_for_inference()
        if self.kind == "baseline":
            if embed:
                raise ConfigError(f"{self.bundle.path}: a {self.bundle.name} baseline has no embedding space")
            return model.predict_proba(tensors), None
        n = len(tensors[self.inputs[0]])
        # On a CPU, chunks of 256 sessions keep activations in cache: 1.2-1.6x the sessions/s of
        # chunks of 1024 for chen-cnn on 2 cores (measured); a GPU takes the whole batch.
        step = max(n if str(self.device).startswith("cuda") else _CPU_CHUNK, 1)
        chunks = [[np.ascontiguousarray(tensors[name][i : i + step]) for name in self.inputs] for i in range(0, n, step)]
        if self._onnx is not None and (not embed or self._onnx.has_embedding):
            outs = [self._onnx.outputs(*arrays) if embed else (self._onnx(*arrays), None) for arrays in chunks]
        else:
            outs = self._torch_outputs(model if model is not None else self.bundle.model, chunks, embed)
        from trafficlens.training.metrics import softmax

        proba = np.concatenate([softmax(o[0]) for o in outs]) if outs else np.zeros((0, len(self.labels)), np.float32)
        return proba, (np.concatenate([o[1] for o in outs]) if outs else np.zeros((0, 0), np.float32)) if embed else None

    def _torch_outputs(self, model, chunks: list[list[np.ndarray]], embed: bool) -> list[tuple]:
        import torch

        from trafficlens.inference.runtime import WithEmbedding

        run = WithEmbedding(model) if embed else model
        out = []
        with torch.inference_mode():
            for arrays in chunks:
                result = run(*[torch.from_numpy(a).to(self.device) for a in arrays])
                logits, embedding = result if embed else (result, None)
                out.append((logits.float().cpu().numpy(), embedding.cpu().numpy() if embed else None))
        return out

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
        metas, proba, _ = self.session_evidence(batches)
        return metas, proba

    def session_evidence(self, batches: list[ExampleBatch], bank=None) -> tuple[list[dict[str, Any]], np.ndarray,
                                                                                 np.ndarray | None]:
        """`session_probabilities`, and with an `open_set.EmbeddingBank` each session's distance
        to the training sessions (else None): everything `GroupDecisions.add` takes."""
        metas, tensors = self._inputs_of(batches)
        parts = [self.outputs({name: tensors[name][i : i + _BATCH] for name in self.inputs}, embed=bank is not None)
                 for i in range(0, len(metas), _BATCH)]
        proba = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)
        if bank is None:
            return metas, proba, None
        return metas, proba, np.concatenate([bank.distances(p[1]) for p in parts]) if parts else np.zeros(0)

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
                confidence=round(confidence, PROBABILITY_DIGITS),
                top_k=[(self.labels[j], round(float(p[j]), PROBABILITY_DIGITS)) for j in best],
                status="ok" if confident else "low_confidence",
                reason=None if confident else f"confidence {confidence:.3f} < {min_confidence}",
            )
            rows.append(row)
        return rows

    # -- captures ----------------------------------------------------------------------------
    def iter_predictions(self, captures: Iterable[str | os.PathLike] | str | os.PathLike, *, top_k: int = 1,
                         min_confidence: float = 0.0, on_warning: Callable[[str], None] | None = None,
                         bpf: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Batches of result rows, capture by capture, with memory bounded by the batch size.

        `captures`: files or folders of captures; "-" is standard input. `bpf`: a BPF expression
        (tcpdump's): only the packets it matches are read."""
        from trafficlens.capture.bpf import PacketFilter

        packet_filter = PacketFilter(bpf) if bpf is not None else None
        files = _capture_files(captures)
        for path, relative in files:
            yield from self._predict_file(path, relative, top_k, min_confidence, on_warning, packet_filter)

    def _predict_file(self, path: Path, relative: str, top_k: int, min_confidence: float,
                      on_warning: Callable[[str], None] | None, packet_filter=None, decide=None,
                      watch=None) -> Iterator[list[dict[str, Any]]]:
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
                                         EngineSink(sessions, None if decide else reject),
                                         packet_filter=packet_filter, watch=watch)
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

    def predict_pcap(self, captures, *, top_k: int = 1, min_confidence: float = 0.0, bpf: str | None = None):
        """One row per session of the capture(s), as a pandas DataFrame (columns: `COLUMNS`);
        `bpf`: read only the packets this BPF expression matches."""
        import pandas as pd

        rows = [row for batch in self.iter_predictions(captures, top_k=top_k, min_confidence=min_confidence, bpf=bpf)
                for row in batch]
        return pd.DataFrame(rows, columns=list(COLUMNS))

    # -- groups of sessions --------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """The calibration temperature `evaluate --by` fitted on the run's validation split
        (RUN/calibration.json); 1.0 when none was fitted."""
        from trafficlens.inference.groups import read_calibration

        return read_calibration(self.bundle.path).get("temperature", 1.0)

    def iter_group_predictions(self, captures, config=None, *, on_warning: Callable[[str], None] | None = None,
                               bpf: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Batches of group rows (`inference.groups.GROUP_COLUMNS`), capture by capture: hosts are
        named within their capture file, so memory holds one capture's groups (at most
        `config.max_groups`, the least recently updated closed early). `bpf`: as in `iter_predictions`."""
        from trafficlens.capture.bpf import PacketFilter
        from trafficlens.inference.groups import GroupConfig, GroupDecisions, decision_setup
        from trafficlens.inference.open_set import load_bank
        from trafficlens.prep.hosts import HostAddresses

        config = config or GroupConfig(temperature=self.temperature)
        packet_filter = PacketFilter(bpf) if bpf is not None else None
        config, learned = decision_setup(self.bundle.path, config, len(self.labels))
        bank = load_bank(self.bundle.path, config, self._banks)
        files = _capture_files(captures)
        for path, relative in files:
            groups = GroupDecisions(self.labels, config, learned)
            hosts = HostAddresses() if config.host_key == "mac" and config.by != "capture" else None

            def decide(batch: ExampleBatch, groups=groups, hosts=hosts) -> list[dict[str, Any]]:
                metas, proba, distances = self.session_evidence([batch], bank)
                groups.add(metas, proba, [hosts.mac_of(m) for m in metas] if hosts is not None else None, distances)
                return groups.pop_evicted()

            for rows in self._predict_file(path, relative, 1, 0.0, on_warning, packet_filter, decide=decide,
                                           watch=hosts.watch if hosts is not None else None):
                if rows:
                    yield rows
            yield groups.rows()

    def predict_hosts(self, captures, *, by: str = "host", host_key: str = "ip", window: float = 300.0,
                      aggregator: str = "auto", top_k: int = 1, min_confidence: float = 0.0,
                      temperature: float | None = None, open_set: bool = False):
        """One row per host (or capture, or host and time window) of the capture(s), as a pandas
        DataFrame (columns: `inference.groups.GROUP_COLUMNS`). `open_set`: a group whose sessions
        fit no known class is `unknown` (the threshold `evaluate --by` fitted on validation).
        `aggregator` "auto": the learned aggregator where `evaluate --by` fitted one, else pooling.

        >>> clf.predict_hosts("capture.pcap", by="host", host_key="mac", aggregator="pool")"""
        import pandas as pd

        from trafficlens.inference.groups import GROUP_COLUMNS, GroupConfig, read_open_set

        config = GroupConfig(by=by, host_key=host_key, window=window, aggregator=aggregator, top_k=top_k,
                             min_confidence=min_confidence,
                             temperature=self.temperature if temperature is None else temperature,
                             **(read_open_set(self.bundle.path, by) if open_set else {}))
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
        confidence = probs.max(axis=1).astype(np.float64).round(PROBABILITY_DIGITS) if len(rows) else []
        return pd.DataFrame({"id": rows, "label": [self.labels[i] for i in best], "confidence": confidence})


TENSOR_SETTINGS = ("unit", "layer", "mask", "image_bytes", "packets", "packet_bytes", "sequence_length", "idle_timeout")


def _capture_files(captures) -> list:
    """(path, relative name) of every capture in `captures` (a file, folder or "-", or several)."""
    from trafficlens.capture.formats import discover

    if isinstance(captures, (str, os.PathLike)):
        captures = [captures]
    files, _ = discover(captures)
    if not files:
        raise ConfigError(f"no capture files found in {', '.join(map(str, captures))}")
    return files


def rejected_row(meta: dict[str, Any], reason: str) -> dict[str, Any]:
    """The output row of a session the model's prep filters keep it from judging."""
    from trafficlens.prep.tensors.filters import REJECTS

    row = _meta_row(meta)
    row.update(label=None, confidence=None, top_k=[], status="not_judged", reason=REJECTS.get(reason, reason))
    return row


def _meta_row(meta: dict[str, Any]) -> dict[str, Any]:
    """A session's own columns of its output row, from the engine's metadata (which keeps the
    addresses and ports under every mask: the mask hides them from the tensors only)."""
    protocol = meta["protocol"].lower()  # as Zeek writes it
    cid = community_id(protocol, meta["src_ip"], meta["src_port"], meta["dst_ip"], meta["dst_port"])
    return {
        "capture": meta["capture"], "uid": zeek_uid(meta["capture"], cid, meta["ts_start"]), "community_id": cid,
        "src_ip": meta["src_ip"], "src_port": meta["src_port"], "dst_ip": meta["dst_ip"], "dst_port": meta["dst_port"],
        "protocol": protocol, "ts_start": meta["ts_start"], "ts_end": meta["ts_end"],
        "duration": round(meta["ts_end"] - meta["ts_start"], 6), "packets": meta["packets"], "bytes": meta["bytes"],
        "orig_pkts": meta["packets_fwd"], "orig_ip_bytes": meta["bytes_fwd"],
        "resp_pkts": meta["packets_bwd"], "resp_ip_bytes": meta["bytes_bwd"],
    }


class _Stopped(Exception):
    """The consumer of `_predict_file` went away; the reading thread unwinds."""

"""`trafficlens export RUN --format onnx`: the file holds the model predict runs, and ONNX
Runtime alone (no trafficlens, no PyTorch model code) gives the bundle's probabilities from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_predict import reference_sessions
from trafficlens.cli import cli
from trafficlens.errors import ConfigError
from trafficlens.serving import Classifier
from trafficlens.training.metrics import softmax

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

LAB = Path(__file__).resolve().parents[1] / "examples" / "lab"


def test_exported_model_gives_the_bundle_s_probabilities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(LAB / "model"), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "model.onnx"  # the run's name, in the current directory
    assert result.stderr.strip() == "onnx model -> model.onnx"
    clf = Classifier.load(LAB / "model", device="cpu")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["trafficlens.labels"]) == clf.labels and meta["trafficlens.model"] == "chen-cnn"
    assert json.loads(meta["trafficlens.inputs"]) == list(clf.inputs)
    assert json.loads(meta["trafficlens.preprocessing"]) == clf.bundle.preprocessing
    # real sessions' tensors, as a dataset of the bundle's settings holds them
    ds, _ = reference_sessions(clf, [LAB / "capture-002.pcap.gz"], tmp_path / "ds")
    tensors = {name: np.asarray(ds.tensor(name)) for name in clf.inputs}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(clf.inputs) and session.get_outputs()[0].name == "logits"
    logits = session.run(None, tensors)[0]
    assert logits.shape == (len(ds), len(clf.labels)) == (30, 7)
    np.testing.assert_allclose(softmax(logits), clf.probabilities(tensors), atol=1e-4)
    # the batch axis is free: one session alone gives its own probabilities
    np.testing.assert_allclose(softmax(session.run(None, {k: v[3:4] for k, v in tensors.items()})[0]),
                               clf.probabilities(tensors)[3:4], atol=1e-4)


def test_the_export_gives_each_session_s_embedding_as_pytorch_does(tmp_path, monkeypatch):
    """The second output, `embedding`: the unit-length vector before the model's last layer, which
    the open-set distance compares (inference.open_set); the same from ONNX Runtime and PyTorch."""
    import torch

    monkeypatch.setenv("TRAFFICLENS_CACHE", "off")
    clf = Classifier.load(LAB / "model", device="cpu")
    ds, _ = reference_sessions(clf, [LAB / "capture-002.pcap.gz"], tmp_path / "ds")
    tensors = {name: np.asarray(ds.tensor(name)) for name in clf.inputs}
    proba, embedding = clf.outputs(tensors, embed=True)
    assert clf.runtime == "onnxruntime" and embedding.shape == (30, clf.bundle.model.num_features)
    np.testing.assert_allclose(proba, clf.probabilities(tensors), atol=1e-6)
    model = clf.bundle.model.eval()
    with torch.inference_mode():
        vector = model.forward_head(model.forward_features(torch.from_numpy(tensors["image"].copy())), pre_logits=True)
    np.testing.assert_allclose(embedding, torch.nn.functional.normalize(vector, dim=1).numpy(), atol=1e-3)
    session = ort.InferenceSession(clf.export_onnx(tmp_path / "m.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    np.testing.assert_allclose(session.run(["embedding"], tensors)[0], embedding, atol=1e-6)
    monkeypatch.setenv("TRAFFICLENS_INFERENCE", "torch")  # the PyTorch path gives the same
    torch_proba, torch_embedding = Classifier.load(LAB / "model", device="cpu").outputs(tensors, embed=True)
    np.testing.assert_allclose(torch_embedding, embedding, atol=1e-3)
    np.testing.assert_allclose(torch_proba, proba, atol=1e-4)


def test_export_with_torch_inference_still_writes_the_onnx_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAFFICLENS_INFERENCE", "torch")  # predict would not build ONNX; export does
    out = Classifier.load(LAB / "model", device="cpu").export_onnx(tmp_path / "x.onnx")
    assert out == tmp_path / "x.onnx" and onnx.load(str(out)).graph.output[0].name == "logits"


def test_export_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(LAB / "model"), "--format", "tflite"])
    assert result.exit_code == 2 and "'tflite' is not 'onnx'" in result.output
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "nothing" in str(result.exception) and "\n" not in str(result.exception)
    clf = Classifier.load(LAB / "model", device="cpu")
    clf.bundle.kind = "baseline"
    with pytest.raises(ConfigError, match="a baseline run"):
        clf.export_onnx(tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


def test_the_onnx_export_is_cached_per_bundle_and_checked_before_use(tmp_path, monkeypatch):
    import shutil

    import torch

    monkeypatch.setenv("TRAFFICLENS_CACHE", str(tmp_path / "cache"))
    first = Classifier.load(LAB / "model", device="cpu").warm_up()
    files = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert first.runtime == "onnxruntime" and len(files) == 1
    tensors = {name: np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8)
               for name, shape in (("image", (784,)), ("packets", (6, 96))) if name in first.inputs}

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this bundle's model")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = Classifier.load(LAB / "model", device="cpu").warm_up()
    assert second.runtime == "onnxruntime"
    np.testing.assert_allclose(second.probabilities(tensors), first.probabilities(tensors), atol=1e-6)

    # another bundle (same model, other weights) never takes this one's export
    other = tmp_path / "other"
    shutil.copytree(LAB / "model", other)
    config = json.loads((other / "config.json").read_text())
    config["labels"] = list(reversed(config["labels"]))  # the bundle's hash changes with its config
    (other / "config.json").write_text(json.dumps(config))
    monkeypatch.undo()
    monkeypatch.setenv("TRAFFICLENS_CACHE", str(tmp_path / "cache"))
    Classifier.load(other, device="cpu").warm_up()
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2

    # a damaged cache file fails the probe check or does not load: exported again and replaced
    files[0].write_bytes(b"\x08\x07garbage")
    third = Classifier.load(LAB / "model", device="cpu").warm_up()
    assert third.runtime == "onnxruntime" and files[0].read_bytes() != b"\x08\x07garbage"
    monkeypatch.setenv("TRAFFICLENS_CACHE", "off")
    Classifier.load(LAB / "model", device="cpu").warm_up()
    assert not (Path("off") / "onnx").exists()


def _probabilities_in_a_fresh_process(run: Path, cache: Path, **env: str) -> dict:
    """Load `run` in a new interpreter (so that nothing is imported yet) with the export cache
    at `cache`; what it computed and whether PyTorch got imported."""
    import os
    import subprocess
    import sys

    code = ("import json, sys, numpy as np\n"
            "from trafficlens.serving import Classifier\n"
            f"clf = Classifier.load({str(run)!r}, device='auto')\n"
            "x = np.random.default_rng(0).integers(0, 256, (7, 784), dtype=np.uint8)\n"
            "p = clf.probabilities({'image': x})\n"
            "assert np.allclose(clf.probabilities({'image': x[:3]}), p[:3], atol=1e-6)  # a second batch, same model\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'runtime': clf.runtime, 'p': p.tolist(),"
            " 'inputs': list(clf.inputs), 'device': str(clf.device)}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRAFFICLENS_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "", **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_cached_export_answers_without_importing_pytorch(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(LAB / "model", run)
    cold = _probabilities_in_a_fresh_process(run, tmp_path / "cache")  # builds the model, exports, caches
    warm = _probabilities_in_a_fresh_process(run, tmp_path / "cache")
    assert cold["torch"] and not warm["torch"]
    assert warm["runtime"] == "onnxruntime" and warm["device"] == "cpu" and warm["inputs"] == ["image"]
    np.testing.assert_allclose(warm["p"], cold["p"], atol=1e-6)
    # PyTorch asked for, or weights that no longer match config.json: the full load, never the cache
    assert _probabilities_in_a_fresh_process(run, tmp_path / "cache", TRAFFICLENS_INFERENCE="torch")["torch"]
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    with pytest.raises(Exception, match="does not match the sha256"):
        Classifier.load(run, device="cpu")


def test_a_deferred_bundle_builds_its_model_on_first_use(tmp_path, monkeypatch):
    from trafficlens.training.bundle import DeferredBundle, read_config

    monkeypatch.setenv("TRAFFICLENS_CACHE", str(tmp_path / "cache"))
    Classifier.load(LAB / "model", device="cpu").warm_up()  # fills the cache
    clf = Classifier.load(LAB / "model", device="cpu")
    assert isinstance(clf.bundle, DeferredBundle) and clf.bundle._model is None
    assert clf.bundle.model.inputs == ("image",) and clf.bundle._model is not None  # explain's path still works
    assert DeferredBundle.of(LAB / "model", {**read_config(LAB / "model"), "weights": {"sha256": "0" * 64}}) is None
    # a signed bundle's check covers its own files, not the cache: it never takes the deferred path
    monkeypatch.setattr(DeferredBundle, "of", classmethod(lambda cls, *a: pytest.fail("deferred a signed bundle")))
    with pytest.raises(Exception, match="missing.pem"):  # the signature check fails; the cache is never consulted
        Classifier.load(LAB / "model", device="cpu", trusted_keys=[tmp_path / "missing.pem"])


def test_cuda_may_be_present_reads_the_build_and_the_environment(monkeypatch):
    from trafficlens.inference import onnx_cache

    monkeypatch.setattr(onnx_cache, "_version", lambda package: "2.13.0+cpu")
    assert onnx_cache.cuda_may_be_present() is False
    monkeypatch.setattr(onnx_cache, "_version", lambda package: "2.13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert onnx_cache.cuda_may_be_present() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    nvidia = Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
    assert onnx_cache.cuda_may_be_present() is nvidia

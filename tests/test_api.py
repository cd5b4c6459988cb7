"""The top-level Python API: `from trafficlens import Classifier, Dataset, ...` without making
`import trafficlens` slow, reprs that say what an object is, and docstrings on the public surface."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import trafficlens

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "examples" / "lab"
SAMPLE = ROOT / "examples" / "sample"


def test_import_trafficlens_loads_no_heavy_library():
    code = ("import sys, trafficlens; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'pyarrow', 'sklearn', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert json.loads(done.stdout.replace("'", '"')) == []


def test_top_level_names_are_the_library_s_own():
    from trafficlens import Classifier, Dataset, PrepConfig, TrafficClassifier
    from trafficlens.datasets.dataset import Dataset as DatasetClass
    from trafficlens.inference.classifier import Classifier as ClassifierClass
    from trafficlens.prep.config import PrepConfig as PrepConfigClass
    from trafficlens.training.estimator import TrafficClassifier as Estimator

    assert (Classifier, Dataset, PrepConfig, TrafficClassifier) == (ClassifierClass, DatasetClass, PrepConfigClass, Estimator)
    assert set(trafficlens.__all__) <= set(dir(trafficlens))
    with pytest.raises(AttributeError, match="module 'trafficlens' has no attribute 'Classifer'"):
        trafficlens.Classifer  # noqa: B018


def test_reprs_say_what_an_object_is(tmp_path):
    from trafficlens import Classifier, Dataset
    from trafficlens.capture import CaptureReader
    from trafficlens.capture.bpf import PacketFilter
    from trafficlens.serving.live import LiveClassifier

    clf = Classifier.load(LAB / "model", device="cpu")
    assert repr(clf) == (f"Classifier({str(LAB / 'model')!r}, model='chen-cnn', kind='deep', classes=7, layer='all', "
                         "mask='strict', device='cpu')")
    reader = CaptureReader(LAB / "capture-000.pcap.gz")
    assert repr(reader) == f"CaptureReader({str(LAB / 'capture-000.pcap.gz')!r}, pcap, gzip, packets read=0)"
    assert repr(PacketFilter("tcp port 443")) == "PacketFilter('tcp port 443')"
    live = LiveClassifier(clf, lambda row: None, after=6)
    assert repr(live) == f"LiveClassifier({clf!r}, after=6, tracked=0, decisions=0)"
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    ds = Dataset.open(prep([SAMPLE / "capture-1.pcapng"], tmp_path / "ds", PrepConfig(labels="name:x"), workers=1,
                           backend="python"))
    assert repr(ds) == f"Dataset({str(tmp_path / 'ds')!r}, sessions={len(ds)}, classes=1)" and len(ds) > 10


def _public_members(cls) -> list[str]:
    """The public methods and properties `cls` itself defines."""
    return [name for name, member in vars(cls).items() if not name.startswith("_") and (
        inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod)))]


@pytest.mark.parametrize("name", ["Classifier", "Dataset", "PrepConfig", "TrafficClassifier"])
def test_public_classes_and_their_methods_have_docstrings(name):
    cls = getattr(trafficlens, name)
    assert (cls.__doc__ or "").strip() and not cls.__doc__.startswith(name + "(")  # not the dataclass default
    undocumented = [m for m in _public_members(cls) if not (inspect.getdoc(getattr(cls, m)) or "").strip()
                    or (isinstance(vars(cls)[m], property) and not (vars(cls)[m].__doc__ or "").strip())]
    assert undocumented == [], f"{name}: {undocumented}"
    for method in ("load", "open"):
        if hasattr(cls, method):
            assert ">>>" in inspect.getdoc(getattr(cls, method)) or "`" in inspect.getdoc(getattr(cls, method))


def test_new_modules_document_every_public_function():
    from trafficlens.capture import bpf, flow_ids, formats
    from trafficlens.serving import output, zeek_log

    for module in (bpf, flow_ids, formats, output, zeek_log):
        for name, member in vars(module).items():
            if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(member) or inspect.isclass(member):
                assert (member.__doc__ or "").strip(), f"{module.__name__}.{name}"

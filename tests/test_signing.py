"""Signed bundles: a run loads under --trusted-key only if a trusted key signed every file it reads."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trafficlens.errors import BundleError, ConfigError
from trafficlens.serving import Classifier
from trafficlens.training.signing import generate_keys, sign_bundle, verify_bundle

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lab" / "model"
CAPTURE = ROOT / "examples" / "lab" / "capture-004.pcap.gz"


@pytest.fixture()
def signed(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(MODEL, run, ignore=shutil.ignore_patterns("evaluation"))
    private, public = generate_keys(tmp_path / "keys" / "lab")
    sign_bundle(run, private)
    return run, private, public, tmp_path


def test_keys_are_private_and_never_overwritten(signed):
    run, private, public, tmp = signed
    assert oct(private.stat().st_mode & 0o777) == "0o600" and b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ConfigError, match="keys are never overwritten"):
        generate_keys(tmp / "keys" / "lab")


def test_a_signed_run_loads_with_its_key_and_labels_as_before(signed):
    run, _, public, _ = signed
    record = json.loads((run / "signature.json").read_text())
    assert set(record["files"]) == {"config.json", "model.safetensors", "metrics.json", "history.json", "split.npy",
                                    "README.md"}  # the model card is signed like every other file
    verified = Classifier.load(run, trusted_keys=[public])
    plain = Classifier.load(run)
    assert verified.predict_pcap(CAPTURE).label.tolist() == plain.predict_pcap(CAPTURE).label.tolist()
    assert verified.trusted_keys == (str(public),)


@pytest.mark.parametrize("damage", ["weights", "config", "signature", "unsigned-weights", "other-key", "no-signature"])
def test_anything_changed_or_unsigned_is_refused(signed, damage):
    run, private, public, tmp = signed
    expected = {"weights": "model.safetensors changed after signing", "config": "config.json changed after signing",
                "signature": "the signature does not verify", "unsigned-weights": "model.safetensors is not covered",
                "other-key": "not among the trusted keys", "no-signature": "not signed"}[damage]
    if damage == "weights":
        data = bytearray((run / "model.safetensors").read_bytes())
        data[-1] ^= 1
        (run / "model.safetensors").write_bytes(bytes(data))
    elif damage == "config":
        config = json.loads((run / "config.json").read_text())
        config["labels"][0] = "evil"
        (run / "config.json").write_text(json.dumps(config))
    elif damage in ("signature", "unsigned-weights"):
        record = json.loads((run / "signature.json").read_text())
        if damage == "signature":
            record["files"]["metrics.json"] = "0" * 64
        else:
            del record["files"]["model.safetensors"]
            # re-signed by the same key: the record is genuine but does not cover the weights
            from trafficlens.training import signing

            key = signing._load_key(private, private=True)
            record["signature"] = base64.b64encode(key.sign(signing._message(record["files"], record["key"]))).decode()
        (run / "signature.json").write_text(json.dumps(record))
    elif damage == "other-key":
        _, other = generate_keys(tmp / "keys" / "other")
        public = other
    else:
        (run / "signature.json").unlink()
    with pytest.raises(BundleError, match=expected):
        Classifier.load(run, trusted_keys=[public])


def test_a_baseline_bundle_is_signed_and_verified_too(tmp_path):
    from test_baselines import make_dataset
    from trafficlens.training.baselines import train_baseline
    from trafficlens.training.config import TrainConfig

    ds = make_dataset(tmp_path / "ds", per_class=20)
    run = tmp_path / "rf"
    train_baseline(ds.path, "xgboost", None, TrainConfig(split="random"), out=run, log=lambda m: None, n_jobs=1)
    private, public = generate_keys(tmp_path / "k")
    sign_bundle(run, private)
    assert verify_bundle(run, [public], needed=["config.json", "model.xgb.json"])["files"]["model.xgb.json"]
    assert Classifier.load(run, trusted_keys=[public]).kind == "baseline"
    (run / "model.xgb.json").write_text("{}")
    with pytest.raises(BundleError, match="model.xgb.json changed after signing"):
        Classifier.load(run, trusted_keys=[public])


def test_cli_sign_and_predict_with_trusted_key(tmp_path):
    from trafficlens.cli import cli

    run = tmp_path / "run"
    shutil.copytree(MODEL, run, ignore=shutil.ignore_patterns("evaluation"))
    runner = CliRunner()
    assert runner.invoke(cli, ["keygen", "-o", str(tmp_path / "k")]).exit_code == 0
    result = runner.invoke(cli, ["sign", str(run), "--key", str(tmp_path / "k.key")])
    assert result.exit_code == 0 and "signature.json" in result.output
    result = runner.invoke(cli, ["predict", str(run), str(CAPTURE), "--trusted-key", str(tmp_path / "k.pub"),
                                 "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 31  # header + 30 sessions

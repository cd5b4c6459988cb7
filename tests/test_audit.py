"""`trafficlens audit` on captures whose classes differ only by server port (a planted shortcut)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from captures import tcp_session, write_pcap
from trafficlens.cli import cli
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.evaluation.audit import AuditConfig, audit

PORTS = {"alpha": 443, "beta": 8443}


@pytest.fixture(scope="module")
def shortcut_dataset(tmp_path_factory):
    """10 captures per class; a class is told apart by its server port and nothing else."""
    tmp = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(3)
    for label, port in PORTS.items():
        for c in range(10):
            frames = []
            for s in range(10):
                size = int(rng.integers(40, 300))
                frames += tcp_session(sport=20000 + 10 * c + s, dport=port, t0=1000.0 * c + 5 * s,
                                      isn_c=int(rng.integers(1, 2**31)), isn_s=int(rng.integers(1, 2**31)),
                                      requests=(rng.bytes(size),), responses=(rng.bytes(size + 60),),
                                      ident=int(rng.integers(1, 60000)))
            write_pcap(tmp / "captures" / label / f"{label}-{c}.pcap", frames)
    ds = prep([tmp / "captures"], tmp / "ds", PrepConfig(labels="dir"), workers=1)
    return tmp, ds


def test_audit_exposes_the_port_shortcut(shortcut_dataset):
    tmp, ds = shortcut_dataset
    out = tmp / "report"
    lines = []
    result = audit(ds, out, AuditConfig(model="chen-cnn", max_epochs=2, time_budget=60, batch_size=32,
                                        min_class_sessions=0, workers=1), log=lambda m: lines.append(m))
    steps = [line for line in lines if line.startswith("[")]  # step i of n, the deep model included
    assert len(steps) == 12 and steps[0].startswith("[1/11] (a) rf on header") and "(c) chen-cnn" in steps[-4]
    assert steps[-1].startswith("[11/11] done in")
    f1 = {(r["setting"], r["model"], r["features"]): r["macro_f1"] for r in result["rows"]}
    # ports are kept by the paper mask and by no mask: header bytes alone separate the classes
    assert f1[("b", "rf", "header")] >= 0.95
    assert f1[("d-capture", "rf", "header")] >= 0.95
    # the strict mask zeroes ports: nothing is left to tell the classes apart
    assert f1[("c", "rf", "header")] <= 0.8
    assert ("c", "chen-cnn", "image") in f1 and ("a", "rf", "stats") in f1
    assert set(result["datasets"]) == {"paper", "strict", "none"}
    assert json.loads((out / "datasets" / "mask-paper" / "manifest.json").read_text())["config"]["mask"] == "paper"
    table = (out / "audit.md").read_text()
    assert table.count("\n| (") == 5 and "chen-cnn on image" in table
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 1
    assert len((out / "audit.csv").read_text().splitlines()) == len(result["rows"]) + 1


def test_audit_cli_reuses_prepared_masks_and_names_missing_captures(shortcut_dataset, tmp_path):
    tmp, ds = shortcut_dataset
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", str(ds), "-o", str(tmp_path / "r"), "--model", "none",
                                 "--min-class-sessions", "0", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "(d-capture)" in result.output and "rf on header" in result.output
    # a manifest without `sources` (older datasets) and no --captures: one clear line (on a copy:
    # the dataset is the module's, other tests audit it too)
    old = shutil.copytree(ds, tmp_path / "old-ds")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("sources")
    (old / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "-m", "trafficlens", "audit", str(old), "-o", str(tmp_path / "r2"),
                           "--model", "none"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "pass --captures PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_audit_cv_compare_take_trains_options():
    """One option set: every training option of `train` is on compare, cv and audit too."""
    from trafficlens.cli import COMMANDS
    from trafficlens.training.cli import TRAINING_OPTIONS

    for name in ("train", "compare", "cv", "audit"):
        command = cli.get_command(None, name)
        params = {p.name for p in command.params}
        assert set(TRAINING_OPTIONS) <= params, (name, set(TRAINING_OPTIONS) - params)
        flags = {o for p in command.params for o in p.opts}
        assert {"--batch-size", "--epochs", "--max-epochs", "--lr", "--patience"} <= flags, name
    assert "audit" in COMMANDS
    # audit keeps every class unless asked, as train does (a 7 x 30 sample must not lose them all)
    assert next(p for p in cli.get_command(None, "audit").params if p.name == "min_class_sessions").default == 0
    assert AuditConfig().min_class_sessions == 0


def test_audit_passes_training_options_to_its_deep_runs(shortcut_dataset, tmp_path):
    tmp, ds = shortcut_dataset
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["audit", str(ds), "-o", str(out), "--model", "wang-1dcnn", "--workers", "1",
                                      "--epochs", "1", "--batch-size", "8", "--lr", "0.002", "--patience", "2",
                                      "--time-budget", "30"])
    assert result.exit_code == 0, result.output
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3
    for run in runs:
        train = json.loads((run / "config.json").read_text())["train"]
        assert (train["batch_size"], train["lr"], train["patience"], train["max_epochs"], train["time_budget"]) == \
            (8, 0.002, 2, 1, 30.0)


def test_compare_and_cv_settings_reach_the_trainer():
    from trafficlens.evaluation.cli import _config

    cfg = _config(batch_size=16, lr=0.01, patience=7, focal_gamma=1.5, threads=2, max_epochs=3, loss="focal",
                  split="capture").train_config(seed=4)
    assert (cfg.batch_size, cfg.lr, cfg.patience, cfg.focal_gamma, cfg.num_threads, cfg.max_epochs, cfg.loss,
            cfg.seed) == (16, 0.01, 7, 1.5, 2, 3, "focal", 4)

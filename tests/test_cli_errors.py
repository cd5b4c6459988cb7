"""Every user error is one `error:` line and exit code 2, never a traceback.

Each bad command line runs through `trafficlens.cli.main`, the entry point of the `trafficlens`
script, whose boundary turns trafficlens errors and errors about a named file into one line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample"
CAPTURE = SAMPLE / "capture-1.pcapng"
MODEL = ROOT / "examples" / "lab" / "model"


def _damage(path: Path, how) -> None:
    path.write_bytes(how(path.read_bytes()))


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A folder with a small dataset, damaged copies of it, and things in the way of -o."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    ds = prep([SAMPLE], tmp / "ds", PrepConfig(labels=f"csv:{SAMPLE / 'labels.csv'}"), workers=1, backend="python")
    damage = {
        "ds-npy-cut": ("image.npy", lambda b: b[:-100]),
        "ds-npy-garbled": ("packets.npy", lambda b: b[:10] + b"x" * 30 + b[40:]),
        "ds-npy-shape": ("stats.npy", lambda b: b.replace(b"(168, ", b"(167, ")),  # row count off, size unchanged
        "ds-parquet-cut": ("sessions.parquet", lambda b: b[:-30]),
        "ds-parquet-pages": ("sessions.parquet", lambda b: b[:8] + b"\x55" * (len(b) // 2 - 8) + b[len(b) // 2 :]),
    }
    for name, (file, how) in damage.items():
        shutil.copytree(ds, tmp / name)
        _damage(tmp / name / file, how)
    (tmp / "afile").write_text("a regular file")
    (tmp / "notds").mkdir()
    (tmp / "notds" / "keep.txt").write_text("someone's files")
    (tmp / "dir.csv").mkdir()
    (tmp / "x.partial").mkdir()
    (tmp / "x.partial" / "notes.txt").write_text("not left by prep")
    (tmp / "latin1.csv").write_bytes("file,label\ncapture-1.pcapng,caf\u00e9\n".encode("latin-1"))
    # crafted bundles: each config.json edit must be refused before anything is built
    crafted = {
        "bundle-negative": lambda c: c["model"]["config"].__setitem__("channels", [-8, 16, 32, 64]),
        "bundle-huge": lambda c: c["model"]["config"].__setitem__("channels", [1 << 20] * 4),
        "bundle-image": lambda c: c["preprocessing"].__setitem__("image_bytes", 10**9),
        "bundle-labels": lambda c: (c.__setitem__("labels", [f"x{i}" for i in range(100_000)]),
                                    c["model"]["config"].__setitem__("num_classes", 100_000)),
    }
    for name, edit in crafted.items():
        shutil.copytree(MODEL, tmp / name)
        config = json.loads((tmp / name / "config.json").read_text())
        edit(config)
        (tmp / name / "config.json").write_text(json.dumps(config))
    shutil.copytree(MODEL, tmp / "bundle-pickle")
    np.save(tmp / "bundle-pickle" / "split.npy", np.array([{"side": 2}] * 168, dtype=object), allow_pickle=True)
    from trafficlens.training.signing import generate_keys

    generate_keys(tmp / "keys" / "ours")
    return tmp


PREP = ["prep", str(SAMPLE), "--quiet", "--workers", "1"]
PREDICT = ["predict", str(MODEL), str(CAPTURE)]
TRAIN = ["train", "--model", "chen-cnn", "--epochs", "1", "--batch-size", "64"]

CASES = {
    # prep -o: unwritable places, and what --overwrite must not delete
    "prep -o /proc": (PREP + ["-o", "/proc/ds"], "/proc/ds: cannot create the dataset there"),
    "prep -o file/sub": (PREP + ["-o", "afile/sub"], "afile/sub: cannot create the dataset there (Not a directory)"),
    "prep -o ''": (PREP + ["-o", ""], "-o is empty"),
    "prep -o file --overwrite": (PREP + ["-o", "afile", "--overwrite"], "afile: is a file but not a trafficlens dataset"),
    "prep -o dir --overwrite": (PREP + ["-o", "notds", "--overwrite"], "notds: is a directory but not a trafficlens dataset"),
    "prep foreign .partial": (PREP + ["-o", "x"], "x.partial: is in the way and was not left by trafficlens prep"),
    # label specs that can never work, and a label table that is not UTF-8
    "prep --labels csv latin-1": (PREP + ["-o", "new", "--labels", "csv:latin1.csv"], "latin1.csv: not UTF-8 text (byte 0xe9 on line 2)"),
    "prep --labels file:": (PREP + ["-o", "new", "--labels", "file:"], "--labels file:REGEX needs a regular expression"),
    "prep --labels dir:extra": (PREP + ["-o", "new", "--labels", "dir:extra"], "--labels dir takes nothing after it"),
    # predict -o
    "predict -o /proc": (PREDICT + ["-o", "/proc/x.csv"], "/proc/x.csv: No such file or directory"),
    "predict -o file/sub": (PREDICT + ["-o", "afile/sub.csv"], "afile/sub.csv: Not a directory"),
    "predict -o ''": (PREDICT + ["-o", ""], "-o is empty"),
    "predict -o dir": (PREDICT + ["-o", "dir.csv"], "dir.csv: is a directory"),
    "predict --by host as Zeek": (PREDICT + ["--by", "host", "--format", "zeek"], "a Zeek log holds one row per session"),
    # damaged datasets, at train and at info
    "train npy cut": (TRAIN + ["ds-npy-cut", "-o", "r"], "image.npy: 131740 bytes where its header promises 131840"),
    "train npy garbled": (TRAIN + ["ds-npy-garbled", "-o", "r"], "packets.npy: not a readable .npy file"),
    "train npy shape": (TRAIN + ["ds-npy-shape", "-o", "r"], "stats.npy: holds 167x"),
    "train parquet cut": (TRAIN + ["ds-parquet-cut", "-o", "r"], "sessions.parquet: unreadable"),
    "train parquet pages": (TRAIN + ["ds-parquet-pages", "-o", "r"], "sessions.parquet: unreadable"),
    "info npy cut": (["info", "ds-npy-cut"], "image.npy: 131740 bytes"),
    "info npy garbled": (["info", "ds-npy-garbled"], "packets.npy: not a readable .npy file"),
    "info parquet cut": (["info", "ds-parquet-cut"], "sessions.parquet: unreadable"),
    # train -o: checked before training starts
    "train -o /proc": (TRAIN + ["ds", "-o", "/proc/run"], "/proc/run: No such file or directory"),
    # crafted bundles: refused before any model or tensor is built
    "bundle negative layer size": (["predict", "bundle-negative", str(CAPTURE)], "model settings do not build 'chen-cnn'"),
    "bundle huge layer size": (["predict", "bundle-huge", str(CAPTURE)], "would hold more than 2,147,483,648 weights"),
    "bundle image_bytes 10^9": (["predict", "bundle-image", str(CAPTURE)], "preprocessing.image_bytes = 1000000000 is out of range"),
    "bundle 100k labels": (["predict", "bundle-labels", str(CAPTURE)], "labels: a list of 100000 items"),
    "pickled split.npy at evaluate": (["evaluate", "bundle-pickle", "--dataset", "ds"], "split.npy: not a plain integer array"),
    "pickled split.npy at explain": (["explain", "bundle-pickle", "--dataset", "ds", "--session", "0"],
                                     "split.npy: not a plain integer array"),
    # signatures
    "unsigned bundle with --trusted-key": (PREDICT + ["--trusted-key", "keys/ours.pub"], "not signed (no signature.json)"),
    "--trusted-key not a key": (PREDICT + ["--trusted-key", "latin1.csv"], "latin1.csv: not an unencrypted PEM public key"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_command_lines_are_one_error_line(place, case, monkeypatch, capsys):
    import torch

    from trafficlens.cli import main

    args, message = CASES[case]
    monkeypatch.chdir(place)
    monkeypatch.setattr(sys, "argv", ["trafficlens", *args])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_:
            main()  # anything but SystemExit (a traceback) fails the test here
    finally:
        torch.set_num_threads(threads)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2, stderr
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr

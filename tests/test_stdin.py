"""Captures from standard input: `predict RUN -`, `live -r -` and `prep - --label NAME` read a
pcap stream, in chunks (never whole), once, and give what the same capture as a file gives."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from captures import tcp_session, udp_frame, write_pcap
from trafficlens.capture import CaptureReader
from trafficlens.cli import cli
from trafficlens.datasets import Dataset
from trafficlens.errors import CaptureError, ConfigError
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep

LAB = Path(__file__).resolve().parents[1] / "examples" / "lab"
SRC = Path(__file__).resolve().parents[1] / "src"


class Pipe(io.RawIOBase):
    """A pipe-like stream: no seeking, at most `piece` bytes per read."""

    def __init__(self, data: bytes, piece: int = 4096):
        self.data, self.pos, self.piece = data, 0, piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        out = self.data[self.pos : self.pos + min(len(buffer), self.piece)]
        buffer[: len(out)] = out
        self.pos += len(out)
        return len(out)


class Stdin(io.BufferedReader):
    """sys.stdin.buffer over a `Pipe`: remembers the largest read asked for and fails a read of
    everything (read() or read(-1))."""

    largest = 0

    def read(self, n=-1):
        assert n is not None and n >= 0, "standard input read whole"
        self.largest = max(self.largest, n)
        return super().read(n)

    def read1(self, n=-1):
        assert n is not None and n >= 0, "standard input read whole"
        self.largest = max(self.largest, n)
        return super().read1(n)


def _stdin(monkeypatch, data: bytes) -> Stdin:
    stream = Stdin(Pipe(data), 1 << 16)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
    return stream


def _capture(tmp_path: Path) -> Path:
    frames = [f for i in range(40) for f in tcp_session(sport=40000 + i, t0=i * 0.5)]
    frames += [(30.0 + i * 0.01, udp_frame(b"dns query %d" % i)) for i in range(5)]
    return write_pcap(tmp_path / "c.pcap", frames)


@pytest.mark.parametrize("compress", [False, True])
def test_reader_streams_stdin_once_in_chunks(tmp_path, monkeypatch, compress):
    data = _capture(tmp_path).read_bytes()
    expected = [(p.ts, p.data) for p in CaptureReader(tmp_path / "c.pcap")]
    pipe = _stdin(monkeypatch, gzip.compress(data) if compress else data)
    reader = CaptureReader("-", chunk_size=8192)
    assert reader.format == "pcap" and reader.compressed == compress
    assert [(p.ts, p.data) for p in reader] == expected and reader.packets == len(expected) > 200
    assert pipe.largest == (1 << 15 if compress else 8192)  # the reader's chunks (gzip: its slices), never all
    with pytest.raises(CaptureError, match=r"^-: standard input can be read only once$"):
        list(reader)


def test_stdin_that_is_no_capture_is_a_one_line_error(monkeypatch):
    _stdin(monkeypatch, b"hello, this is text")
    with pytest.raises(CaptureError, match=r"^-: not a pcap or pcapng file \(first bytes 68 65 6c 6c\)$"):
        CaptureReader("-")


def test_predict_dash_gives_the_rows_of_the_file(tmp_path):
    capture = LAB / "capture-001.pcap.gz"
    by_file = CliRunner().invoke(cli, ["predict", str(LAB / "model"), str(capture), "--format", "jsonl", "--device", "cpu"])
    assert by_file.exit_code == 0, by_file.output
    by_stdin = CliRunner().invoke(cli, ["predict", str(LAB / "model"), "-", "--format", "jsonl", "--device", "cpu"],
                                  input=capture.read_bytes())
    assert by_stdin.exit_code == 0, by_stdin.output
    want = [json.loads(line) for line in by_file.stdout.splitlines()]
    got = [json.loads(line) for line in by_stdin.stdout.splitlines()]
    assert len(got) == len(want) == 30 and {r["capture"] for r in got} == {"-"}
    drop = ("capture", "uid")  # named after the capture
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == [
        {k: v for k, v in r.items() if k not in drop} for r in want]


def test_live_reads_a_real_pipe(tmp_path):
    """`cat x.pcap | trafficlens live -r -` through an OS pipe, in a fresh process."""
    capture = LAB / "capture-001.pcap.gz"
    with open(capture, "rb") as fh:
        done = subprocess.run([sys.executable, "-m", "trafficlens", "live", str(LAB / "model"), "-r", "-",
                               "--speed", "0", "--device", "cpu"], stdin=fh, capture_output=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr.decode()
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(rows) == 30 and {r["capture"] for r in rows} == {"-"}
    assert json.loads(done.stderr.decode().splitlines()[-1])["decisions"] == 30


def test_prep_dash_with_label(tmp_path):
    capture = _capture(tmp_path)
    result = CliRunner().invoke(cli, ["prep", "-", "--label", "web", "-o", str(tmp_path / "ds"), "--quiet",
                                      "--min-packets", "1", "--keep-duplicates"], input=capture.read_bytes())
    assert result.exit_code == 0, result.output
    from_stdin = Dataset.open(tmp_path / "ds")
    from_file = Dataset.open(prep([capture], tmp_path / "file-ds", PrepConfig(labels="name:web", min_packets=1,
                                                                                deduplicate=False), workers=1))
    assert len(from_stdin) == len(from_file) == 41 and set(from_stdin.table.column("label").to_pylist()) == {"web"}
    assert from_stdin.table.column("capture").to_pylist() == ["-"] * 41
    [given] = from_stdin.manifest["inputs"]
    [file] = from_file.manifest["inputs"]
    assert given["path"] == "-" and (given["bytes"], given["sha256"], given["packets"]) == (
        capture.stat().st_size, file["sha256"], file["packets"])
    assert from_stdin.manifest["sources"] == ["-"]
    assert (from_stdin.tensor("image")[:] == from_file.tensor("image")[:]).all()


def test_prep_dash_needs_a_label_and_stdin_once(tmp_path):
    for args, message in ((["-"], "prep -: name the label of the sessions read from standard input with --label NAME"),
                          (["-", "--label", "a", "--labels", "dir"], "--label NAME and --labels both"),
                          (["-", "-", "--label", "a"], "given more than once")):
        result = CliRunner().invoke(cli, ["prep", *args, "-o", str(tmp_path / "x")])
        assert result.exit_code != 0 and isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)

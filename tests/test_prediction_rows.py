"""Prediction rows value by value, on the bundled lab model (no training, so fast): each row holds
its session's own values, label, confidence and top-k follow the model's probabilities for that
session's tensors, --min-confidence says 'unknown' below the bar, filtered sessions are listed
with their reason, and every output format writes back exactly those values."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_predict import FIELDS, KEY, assert_rows_hold_their_sessions, reference_sessions
from trafficlens.errors import ConfigError
from trafficlens.prep.engines import numba_available
from trafficlens.serving import Classifier
from trafficlens.inference.classifier import COLUMNS
from trafficlens.serving.output import output_format, write_rows

LAB = Path(__file__).resolve().parents[1] / "examples" / "lab"
CAPTURE = LAB / "capture-002.pcap.gz"  # 30 sessions, every class
BACKENDS = ["python", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]


def predict(clf: Classifier, **settings) -> list[dict]:
    """The rows as `iter_predictions` makes them (no DataFrame in between to turn None into NaN)."""
    return [row for batch in clf.iter_predictions(CAPTURE, **settings) for row in batch]


@pytest.fixture(scope="module")
def clf():
    return Classifier.load(LAB / "model", device="cpu")


@pytest.fixture(scope="module")
def reference(clf, tmp_path_factory):
    """The capture's sessions in a dataset of the model's settings, and the model's probabilities for them."""
    ds, index = reference_sessions(clf, [CAPTURE], tmp_path_factory.mktemp("rows") / "reference")
    probabilities = clf.probabilities({name: np.asarray(ds.tensor(name)) for name in clf.inputs})
    return index, probabilities


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_hold_their_sessions_values_and_probabilities(clf, reference, backend, monkeypatch):
    monkeypatch.setenv("TRAFFICLENS_BACKEND", backend)
    index, probabilities = reference
    rows = predict(clf, top_k=3)
    assert list(rows[0]) == list(COLUMNS) and len(rows) == len(index) == 30
    assert_rows_hold_their_sessions(rows, index)
    labels = clf.labels
    assert len({r["label"] for r in rows}) >= 5
    for row in rows:
        p = probabilities[index[tuple(row[f] for f in KEY)][0]]
        order = np.argsort(-p, kind="stable")
        # probabilities are rounded to 4 decimals, the same in every row and format
        assert row["label"] == labels[order[0]] and row["confidence"] == pytest.approx(p[order[0]], abs=5.1e-5)
        assert [label for label, _ in row["top_k"]] == [labels[j] for j in order[:3]]
        assert [q for _, q in row["top_k"]] == pytest.approx(p[order[:3]].tolist(), abs=5.1e-5)
        assert all(q == round(q, 4) for q in [row["confidence"]] + [q for _, q in row["top_k"]])
        assert row["status"] == "ok" and row["reason"] is None


def test_top_k_is_between_one_and_every_class(clf):
    for top_k, expected in ((1, 1), (3, 3), (100, len(clf.labels))):
        assert {len(r["top_k"]) for r in predict(clf, top_k=top_k)} == {expected}, top_k
    everything = [r["top_k"] for r in predict(clf, top_k=100)]
    assert all(sorted(label for label, _ in k) == sorted(clf.labels) for k in everything)
    rounding = 0.5e-4 * len(clf.labels) + 1e-6  # each probability is rounded to 4 decimals
    assert all(sum(p for _, p in k) == pytest.approx(1.0, abs=rounding) for k in everything)


def test_min_confidence_says_unknown_below_the_bar(clf):
    plain = predict(clf, top_k=2)
    bar = float(np.median([r["confidence"] for r in plain]))
    rows = predict(clf, top_k=2, min_confidence=bar)
    low = 0
    for row, before in zip(rows, plain, strict=True):
        assert row["top_k"] == before["top_k"] and row["confidence"] == before["confidence"]
        if before["confidence"] >= bar:
            assert (row["label"], row["status"], row["reason"]) == (before["label"], "ok", None)
        else:
            low += 1
            assert (row["label"], row["status"]) == ("unknown", "low_confidence")
            assert row["reason"] == f"confidence {before['confidence']:.3f} < {bar}"
    assert 0 < low < len(rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_filtered_sessions_are_listed_with_their_reason_and_values(clf, reference, backend, monkeypatch):
    monkeypatch.setenv("TRAFFICLENS_BACKEND", backend)
    index, _ = reference
    counts = sorted(ref["packets"] for _, ref in index.values())
    strict = Classifier.load(LAB / "model", device="cpu")
    strict.prep_config = dataclasses.replace(clf.prep_config, min_packets=counts[10])  # a third under it
    rows = predict(strict)
    assert_rows_hold_their_sessions(rows, index)
    judged = [r for r in rows if r["status"] == "ok"]
    skipped = [r for r in rows if r["status"] == "not_judged"]
    assert len(judged) + len(skipped) == 30 and len(skipped) == sum(c < counts[10] for c in counts) > 0
    assert all(r["packets"] < counts[10] for r in skipped) and all(r["packets"] >= counts[10] for r in judged)
    assert {(r["label"], r["confidence"], r["reason"]) for r in skipped} == {
        (None, None, "fewer packets than the model's min_packets")}
    assert all(r["top_k"] == [] for r in skipped)


# -- output.py: every format writes the rows' own values ------------------------------------------------
@pytest.fixture(scope="module")
def rows(clf):
    return predict(clf, top_k=2)


JOIN_FIELDS = ("uid", "community_id", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes")


def _check_plain_fields(got: dict, want: dict) -> None:
    for name in FIELDS + JOIN_FIELDS + ("label", "status"):
        assert got[name] == want[name], name
    assert got["confidence"] == want["confidence"]  # rounded once, written as it is
    assert got["duration"] == pytest.approx(want["duration"], abs=1e-9)


def test_csv_jsonl_and_parquet_hold_the_rows(rows, tmp_path):
    assert write_rows([rows[:10], rows[10:]], str(tmp_path / "r.csv")) == len(rows) == 30
    with open(tmp_path / "r.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(COLUMNS)
    for got, want in zip(table, rows, strict=True):
        typed = {k: (int(v) if k in ("src_port", "dst_port", "packets", "bytes") + JOIN_FIELDS[2:] else float(v) if k in (
            "ts_start", "ts_end", "duration", "confidence") else v or None) for k, v in got.items()}
        _check_plain_fields(typed, want)
        assert got["top_k"] == ";".join(f"{label}:{p:.4f}" for label, p in want["top_k"])
        assert got["reason"] == ""
    assert write_rows([rows], str(tmp_path / "r.jsonl")) == 30
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    for line, want in zip(lines, rows, strict=True):
        got = json.loads(line)
        assert list(got) == list(COLUMNS)
        _check_plain_fields(got, want)
        assert got["top_k"] == [{"label": label, "probability": p} for label, p in want["top_k"]]
    assert write_rows([rows[:1], [], rows[1:]], str(tmp_path / "r.parquet")) == 30
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column_names == list(COLUMNS)
    for got, want in zip(table.to_pylist(), rows, strict=True):
        _check_plain_fields(got, want)
        assert got["top_k"] == [{"label": label, "probability": p} for label, p in want["top_k"]]


def test_dash_is_csv_on_stdout(rows, capsys):
    assert write_rows([rows], "-") == 30
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(COLUMNS) and len(out.splitlines()) == 31
    assert list(csv.DictReader(io.StringIO(out)))[3]["src_port"] == str(rows[3]["src_port"])


def test_output_format_is_taken_from_the_name():
    assert [output_format(t) for t in ("-", "a.csv", "b.JSONL", "c.parquet")] == [".csv", ".csv", ".jsonl", ".parquet"]
    with pytest.raises(ConfigError, match="-o is empty"):
        output_format("")
    with pytest.raises(ConfigError, match=r"-o x.txt: unknown output format '.txt'; use .csv, .jsonl, .parquet, .log \(Zeek\) or -"):
        output_format("x.txt")
    assert [output_format(t, name) for t, name in (("-", "zeek"), ("x.txt", "jsonl"), ("p.log", None))] == [".log", ".jsonl", ".log"]
    with pytest.raises(ConfigError, match="--format parquet needs a file"):
        output_format("-", "parquet")


def test_confidence_exactly_at_the_bar_keeps_the_label(clf, monkeypatch):
    """--min-confidence: 'unknown' strictly below the bar (0.625 is exact in binary)."""
    def fixed(tensors):
        n = len(tensors[clf.inputs[0]])
        p = np.full((n, len(clf.labels)), 0.375 / (len(clf.labels) - 1))
        p[:, 2] = 0.625
        return p

    monkeypatch.setattr(clf, "probabilities", fixed)
    rows = [r for r in predict(clf, min_confidence=0.625) if r["status"] != "not_judged"]
    assert rows and {(r["label"], r["status"], r["confidence"]) for r in rows} == {(clf.labels[2], "ok", 0.625)}


def test_uids_tell_apart_captures_times_and_flows(clf, tmp_path):
    """The uid names one session: the same file gives the same uids on every run; the same bytes
    under another capture name, the same 5-tuple at another time, and another flow at the same
    time each get another one. Durations are to the microsecond, as Zeek's."""
    from captures import CLIENT, SERVER, udp_frame, write_pcap
    from trafficlens.capture import PcapWriter
    from trafficlens.capture.flow_ids import zeek_uid

    frames = []
    for t0, sport in ((100.0, 5000), (100.0, 5001), (900.0, 5000)):  # the third reuses the first's tuple later
        for i in range(8):
            frames.append((t0 + i * 0.1234567, udp_frame(bytes([sport % 256, i]) * 40, sport=sport)))
            frames.append((t0 + i * 0.1234567 + 0.01, udp_frame(bytes([i]) * 60, src=SERVER, dst=CLIENT,
                                                                    sport=53, dport=sport)))
    one = write_pcap(tmp_path / "one.pcap", frames)
    two = tmp_path / "two.pcap"
    two.write_bytes(one.read_bytes())
    nano = tmp_path / "nano.pcap"
    with PcapWriter(nano, nanosecond=True) as w:
        for ts, frame in sorted(frames):
            w.write(frame, ts)
    rows = [r for batch in clf.iter_predictions([one, two, nano]) for r in batch]
    by = {(r["capture"], r["src_port"], round(r["ts_start"])): r for r in rows}
    assert len(rows) == 9 and len({r["uid"] for r in rows}) == 9
    again = [r["uid"] for batch in clf.iter_predictions([one]) for r in batch]
    assert again == [r["uid"] for r in rows if r["capture"] == "one.pcap"]
    first = by[("one.pcap", 5000, 100)]
    assert first["uid"] == zeek_uid("one.pcap", first["community_id"], first["ts_start"])
    assert by[("one.pcap", 5000, 900)]["community_id"] == first["community_id"]  # same tuple, later: another uid
    assert by[("nano.pcap", 5000, 100)]["duration"] == round(7 * 0.1234567 + 0.01, 6) == 0.874197

"""predict: a bundle labels new captures, rebuilding its tensors; every session is accounted for."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from captures import CLIENT, SERVER, tcp_session, write_pcap
from trafficlens.cli import cli
from trafficlens.prep.config import MASK_VERSION
from trafficlens.datasets import Dataset
from trafficlens.prep.config import PrepConfig
from trafficlens.prep.local import prep
from trafficlens.serving import Classifier
from trafficlens.inference.classifier import COLUMNS
from trafficlens.training import TrainConfig, train_run

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"
# The session's own values in every predict, live and serve row; `KEY` finds the session.
FIELDS = ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start", "ts_end", "packets", "bytes")
KEY = FIELDS[:7]


def reference_sessions(clf: Classifier, captures, out: Path) -> tuple[Dataset, dict[tuple, tuple[int, dict]]]:
    """Every session of `captures`, prepared by the Python reference engine with the bundle's own
    settings but none of its filters (predict lists filtered sessions too): (dataset, KEY -> (row, table row))."""
    config = dataclasses.replace(clf.prep_config, min_packets=1, min_bytes=0)
    ds = Dataset.open(prep(captures, out, config, workers=1, backend="python"))
    rows = ds.table.to_pylist()
    for r in rows:
        r["protocol"] = r["protocol"].lower()  # datasets say TCP; rows say tcp, as Zeek does
    index = {tuple(r[f] for f in KEY): (i, r) for i, r in enumerate(rows)}
    assert len(index) == len(rows)
    return ds, index


def assert_rows_hold_their_sessions(rows: list[dict], index: dict, capture: str | None = None) -> None:
    """Each row's addresses, ports, protocol, times, packets and bytes are its session's, field by
    field; every session with payload has one row. `capture`: what the rows call the capture."""
    judged = [r for r in rows if r["reason"] != "no payload"]
    assert len(judged) == len(index)
    for row in judged:
        key = tuple(capture if f == "capture" and capture else row[f] for f in KEY)
        _, ref = index[key]
        got = {f: row[f] for f in FIELDS if f != "capture"}
        assert got == {f: ref[f] for f in FIELDS if f != "capture"}, (key, got)
        assert_flow_columns(row, ref)


def assert_flow_columns(row: dict, ref: dict) -> None:
    """The join keys and Zeek-like columns of a row whose session is `ref` (a dataset row):
    community_id as the reference implementation computes it, a Zeek-shaped uid, the duration,
    and the client's (orig) and server's (resp) packets and IP bytes."""
    import communityid

    make = communityid.FlowTuple.make_tcp if ref["protocol"] == "tcp" else communityid.FlowTuple.make_udp
    flow = make(ref["src_ip"], ref["dst_ip"], ref["src_port"], ref["dst_port"])
    assert row["community_id"] == communityid.CommunityID(0).calc(flow)
    assert len(row["uid"]) == 18 and row["uid"][0] == "C" and row["uid"].isalnum()
    assert row["duration"] == pytest.approx(ref["ts_end"] - ref["ts_start"], abs=1e-6)
    assert (row["orig_pkts"], row["resp_pkts"]) == (ref["packets_fwd"], ref["packets_bwd"])
    assert row["orig_ip_bytes"] + row["resp_ip_bytes"] == ref["bytes"]
    assert row["orig_ip_bytes"] >= 20 * row["orig_pkts"] and row["resp_ip_bytes"] >= 20 * row["resp_pkts"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    config = PrepConfig(labels=f"csv:{SAMPLE / 'labels.csv'}", min_packets=5)
    ds = prep([SAMPLE], tmp / "ds", config, workers=1)
    train_run(ds, tmp / "run", "chen-cnn", TrainConfig(batch_size=16, max_epochs=8), progress=False, log=lambda m: None)
    return tmp / "run", Dataset.open(ds)


def test_predict_pcap_schema_and_labels(run):
    clf = Classifier.load(run[0])
    table = clf.predict_pcap(SAMPLE / "capture-2.pcapng", top_k=3)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 28 and (table.status == "ok").all()
    assert set(table.label) <= set(clf.labels)
    assert all(len(k) == 3 and k[0][1] >= k[1][1] >= k[2][1] and k[0][0] == label for k, label in zip(table.top_k, table.label))
    assert table.confidence.between(0, 1).all()


def test_bundle_of_strict_mask_version_1_predicts_with_a_warning(run, tmp_path):
    """Bundles made before `mask_version` existed (version 1) load and predict on today's tensors, saying so."""
    old = tmp_path / "old-run"
    shutil.copytree(run[0], old)
    config = json.loads((old / "config.json").read_text())
    del config["preprocessing"]["mask_version"]
    (old / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="strict mask version 1") as caught:
        clf = Classifier.load(old)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert clf.prep_config.mask_version == MASK_VERSION
    table = clf.predict_pcap(SAMPLE / "capture-2.pcapng")
    assert len(table) == 28 and (table.status == "ok").all()
    assert len(clf.predict_sessions(run[1])) == len(run[1])  # a current-version dataset is no settings mismatch


def test_same_labels_through_api_cli_and_dataset(run, tmp_path):
    run_dir, ds = run
    clf = Classifier.load(run_dir)
    api = clf.predict_pcap(SAMPLE)
    out = tmp_path / "flows.csv"
    result = CliRunner().invoke(cli, ["predict", str(run_dir), str(SAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    via_cli = pd.read_csv(out)
    assert via_cli.label.tolist() == api.label.tolist()
    # the training dataset's own tensors give the same labels for the same sessions
    by_key = {(r.capture, r.src_port, r.ts_start): r.label for r in api.itertuples()}
    table = ds.table.to_pandas()
    sessions = clf.predict_sessions(ds)
    for row, label in zip(table.itertuples(), sessions.label):
        assert by_key[(row.capture, row.src_port, row.ts_start)] == label


def test_predict_rows_hold_each_session_s_own_values(run, tmp_path):
    """Field by field against the sessions of the same captures in a dataset of the bundle's settings."""
    clf = Classifier.load(run[0])
    table = clf.predict_pcap(SAMPLE)
    _, index = reference_sessions(clf, [SAMPLE], tmp_path / "reference")
    assert len(index) > 150 and (table.status == "ok").sum() > 150
    assert_rows_hold_their_sessions(table.to_dict("records"), index)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_sessions_under_the_filters_are_listed_with_a_reason(run, tmp_path, monkeypatch, backend):
    """Values counted by hand: pure ACKs are not counted; bytes are IP lengths (40-byte headers)."""
    monkeypatch.setenv("TRAFFICLENS_BACKEND", backend)
    capture = write_pcap(tmp_path / "short.pcap", tcp_session(requests=(b"hi",), responses=(b"yo",), close=False)
                         + tcp_session(sport=40001, requests=(), responses=()))
    table = Classifier.load(run[0]).predict_pcap(capture)
    rows = sorted(table.to_dict("records"), key=lambda r: r["src_port"])
    common = dict(capture="short.pcap", src_ip=CLIENT, dst_ip=SERVER, dst_port=443, protocol="tcp", ts_start=0.0,
                  label=None, confidence=None, top_k=[], status="not_judged", duration=pytest.approx(0.04),
                  orig_pkts=2, resp_pkts=2)
    ids = {r["src_port"]: (r.pop("uid"), r.pop("community_id")) for r in rows}
    # SYN, SYN-ACK, "hi", "yo": 4 packets of 40 + 40 + 42 + 42 bytes, the last at 0.04 s
    assert rows[0] == {**common, "src_port": 40000, "ts_end": pytest.approx(0.04), "packets": 4, "bytes": 164,
                       "orig_ip_bytes": 82, "resp_ip_bytes": 82, "reason": "fewer packets than the model's min_packets"}
    # SYN, SYN-ACK, FIN, FIN: no payload
    assert rows[1] == {**common, "src_port": 40001, "ts_end": pytest.approx(0.04), "packets": 4, "bytes": 160,
                       "orig_ip_bytes": 80, "resp_ip_bytes": 80, "reason": "no payload"}
    # join keys: the reference Community ID, and one uid per session
    import communityid

    for port, (uid, cid) in ids.items():
        assert cid == communityid.CommunityID(0).calc(communityid.FlowTuple.make_tcp(CLIENT, SERVER, port, 443))
    assert len({uid for uid, _ in ids.values()}) == 2


def test_dash_o_writes_csv_to_stdout(run):
    """`-o -` (the default) writes the CSV on stdout and nothing else there."""
    clf = Classifier.load(run[0])
    expected = clf.predict_pcap(SAMPLE / "capture-3.pcapng", top_k=2)
    for args in (["-o", "-"], []):
        result = CliRunner().invoke(cli, ["predict", str(run[0]), str(SAMPLE / "capture-3.pcapng"), "--top-k", "2", *args])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == ",".join(COLUMNS)
        got = pd.read_csv(io.StringIO(result.stdout))
        assert len(got) == len(expected) == 28
        pd.testing.assert_frame_equal(got[list(FIELDS) + ["label", "status"]], expected[list(FIELDS) + ["label", "status"]],
                                      check_dtype=False)
        assert got.top_k[0] == ";".join(f"{label}:{p:.4f}" for label, p in expected.top_k[0])


def test_min_confidence_and_output_formats(run, tmp_path):
    runner = CliRunner()
    for suffix in ("jsonl", "parquet"):
        out = tmp_path / f"flows.{suffix}"
        result = runner.invoke(cli, ["predict", str(run[0]), str(SAMPLE / "capture-3.pcapng"), "-o", str(out),
                                     "--min-confidence", "1.0", "--top-k", "2"])
        assert result.exit_code == 0, result.output
        rows = pd.read_parquet(out) if suffix == "parquet" else pd.DataFrame([json.loads(l) for l in out.read_text().splitlines()])
        assert len(rows) == 28 and set(rows.label) == {"unknown"} and set(rows.status) == {"low_confidence"}
        assert len(rows.top_k.iloc[0]) == 2


def test_broken_bundle_is_a_one_line_error(run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "history.json"):
        (broken / name).write_bytes((run[0] / name).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "trafficlens", "predict", str(broken), str(SAMPLE / "capture-1.pcapng")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "model.safetensors" in proc.stderr


def test_both_prep_backends_give_the_same_rows(run, monkeypatch):
    """predict takes the compiled backend's batches whole; the Python reference gives the same rows."""
    clf = Classifier.load(run[0])
    monkeypatch.setenv("TRAFFICLENS_BACKEND", "python")
    reference = clf.predict_pcap(SAMPLE, top_k=2)
    monkeypatch.setenv("TRAFFICLENS_BACKEND", "numba")
    fast = clf.predict_pcap(SAMPLE, top_k=2)
    assert len(fast) == len(reference) > 50
    key = ["capture", "src_ip", "src_port", "dst_port", "ts_start"]
    a, b = (t.sort_values(key).reset_index(drop=True) for t in (reference, fast))
    pd.testing.assert_frame_equal(a.drop(columns=["top_k", "confidence"]), b.drop(columns=["top_k", "confidence"]))
    assert (a.confidence - b.confidence).abs().max() < 1e-5


def test_stopping_early_stops_the_reading_thread(run):
    import threading

    clf = Classifier.load(run[0])
    before = threading.active_count()
    batches = clf.iter_predictions(SAMPLE)
    next(batches)
    batches.close()
    assert threading.active_count() == before


def test_onnx_runtime_and_pytorch_give_the_same_rows(run, monkeypatch):
    pytest.importorskip("onnxruntime")
    fast = Classifier.load(run[0])
    table = fast.predict_pcap(SAMPLE / "capture-2.pcapng", top_k=2)
    assert fast.runtime == "onnxruntime"
    monkeypatch.setenv("TRAFFICLENS_INFERENCE", "torch")
    plain = Classifier.load(run[0])
    reference = plain.predict_pcap(SAMPLE / "capture-2.pcapng", top_k=2)
    assert plain.runtime == "torch"
    assert table.label.tolist() == reference.label.tolist()
    assert np.allclose(table.confidence, reference.confidence, atol=1e-5)


def test_an_unreadable_gzip_is_one_warning_and_the_run_goes_on(run, tmp_path):
    folder = tmp_path / "caps"
    folder.mkdir()
    (folder / "a.pcapng").write_bytes((SAMPLE / "capture-3.pcapng").read_bytes())
    (folder / "zz.pcap.gz").write_bytes(b"\x1f\x8b")  # last: nothing may depend on the order
    out = tmp_path / "flows.csv"
    result = CliRunner().invoke(cli, ["predict", str(run[0]), str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 28
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "zz.pcap.gz: cannot read (gzip stream cut short" in warnings[0]


def test_an_existing_output_is_replaced_only_by_a_complete_one(run, tmp_path):
    from trafficlens.serving.output import write_rows

    empty = tmp_path / "empty"
    empty.mkdir()
    for suffix in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"flows.{suffix}"
        out.write_text("earlier\n")
        result = CliRunner().invoke(cli, ["predict", str(run[0]), str(empty), "-o", str(out)])
        assert result.exit_code != 0 and "no capture files" in str(result.exception)
        assert out.read_text() == "earlier\n"

        def failing():
            yield Classifier.load(run[0]).predict_pcap(SAMPLE / "capture-3.pcapng").to_dict("records")
            raise RuntimeError("stopped half-way")

        with pytest.raises(RuntimeError, match="half-way"):
            write_rows(failing(), str(out))
        assert out.read_text() == "earlier\n"
        result = CliRunner().invoke(cli, ["predict", str(run[0]), str(SAMPLE / "capture-3.pcapng"), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert len(pd.read_parquet(out) if suffix == "parquet" else pd.read_csv(out) if suffix == "csv"
                   else out.read_text().splitlines()) == 28
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "flows.csv", "flows.jsonl", "flows.parquet"]

"""serve: the HTTP API on loopback gives the same labels as predict, and refuses bad uploads."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from test_predict import FIELDS, assert_rows_hold_their_sessions, reference_sessions  # noqa: E402
from trafficlens.serving import Classifier  # noqa: E402
from trafficlens.serving.http import create_app, server_config  # noqa: E402
from trafficlens.serving.workers import WorkerPool  # noqa: E402

LAB = Path(__file__).resolve().parents[1] / "examples" / "lab"
MODEL = LAB / "model"  # chen-cnn trained on the lab captures, strict mask


def _start(app):
    srv = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(1200):  # an app that starts its own workers takes seconds
        if srv.started:
            break
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", srv, thread


def _stop(srv, thread):
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server():
    clf = Classifier.load(MODEL)
    with WorkerPool(MODEL, workers=1) as pool:
        base, srv, thread = _start(create_app(clf, max_upload_bytes=600_000, timeout_s=30, pool=pool))
        yield base, clf, pool
        _stop(srv, thread)


def _request(url, data=None):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_model(server):
    base, clf, _ = server
    assert _request(f"{base}/healthz") == (200, {"status": "ok"})
    status, body = _request(f"{base}/v1/model")
    assert status == 200 and body["labels"] == clf.labels and body["model"] == "chen-cnn"
    assert body["preprocessing"]["mask"] == "strict" and body["metrics"]["side"] == "test"


def test_classify_matches_predict(server, tmp_path):
    base, clf, _ = server
    capture = LAB / "capture-002.pcap.gz"
    status, body = _request(f"{base}/v1/classify", capture.read_bytes())
    assert status == 200
    expected = clf.predict_pcap(capture)
    assert len(body["sessions"]) == len(expected) == 30
    assert [s["label"] for s in body["sessions"]] == expected.label.tolist()
    assert [s["confidence"] for s in body["sessions"]] == pytest.approx(expected.confidence.tolist(), abs=1e-5)
    assert {s["capture"] for s in body["sessions"]} == {"upload"}
    # every session's own values, field by field: the same as predict's, and as the dataset's
    for got, want in zip(body["sessions"], expected.to_dict("records")):
        assert {f: got[f] for f in FIELDS[1:] + ("status", "reason")} == {f: want[f] for f in FIELDS[1:] + ("status", "reason")}
    _, index = reference_sessions(clf, [capture], tmp_path / "reference")
    assert_rows_hold_their_sessions(body["sessions"], index, capture=capture.name)


def test_per_host_endpoint_decides_as_predict_by_host(server):
    base, clf, _ = server
    capture = LAB / "capture-002.pcap.gz"
    status, body = _request(f"{base}/v1/classify/hosts?by=host&host_key=ip", capture.read_bytes())
    assert status == 200, body
    expected = clf.predict_hosts(capture, by="host", host_key="ip").sort_values("host")
    groups = sorted(body["groups"], key=lambda g: g["host"])
    assert [g["host"] for g in groups] == expected.host.tolist() and len(groups) > 1
    assert [g["label"] for g in groups] == expected.label.tolist()
    assert [g["sessions"] for g in groups] == expected.sessions.tolist() and sum(g["sessions"] for g in groups) == 30
    assert [g["confidence"] for g in groups] == pytest.approx(expected.confidence.tolist(), abs=1e-5)
    assert {g["capture"] for g in groups} == {"upload"} and "sessions" not in body
    status, body = _request(f"{base}/v1/classify/hosts?by=capture", capture.read_bytes())
    assert status == 200 and len(body["groups"]) == 1 and body["groups"][0]["sessions"] == 30
    status, body = _request(f"{base}/v1/classify/hosts?by=device", capture.read_bytes())
    assert status == 400 and "by must be one of" in body["error"]
    status, body = _request(f"{base}/v1/classify/hosts?by=host-window&window=soon", capture.read_bytes())
    assert status == 400 and "window" in body["error"]
    status, body = _request(f"{base}/v1/classify/hosts?by=capture&open_set=true", capture.read_bytes())
    assert status == 400 and "no open-set threshold for capture groups" in body["error"]  # the bundled run has none


def test_bad_and_oversized_uploads(server):
    base, _, _ = server
    status, body = _request(f"{base}/v1/classify", b"<html>no capture</html>")
    assert status == 400 and "not a pcap or pcapng file" in body["error"] and "/tmp" not in body["error"]
    status, body = _request(f"{base}/v1/classify", b"")
    assert status == 400
    status, body = _request(f"{base}/v1/classify", bytes(700_000))
    assert status == 413 and "limit" in body["error"]


def test_slow_classification_times_out(server):
    _, clf, pool = server
    before = pool.pids
    base, srv, thread = _start(create_app(clf, timeout_s=0.001, pool=pool))
    try:
        status, body = _request(f"{base}/v1/classify", (LAB / "capture-002.pcap.gz").read_bytes())
        assert status == 408 and "longer than 0.001 s" in body["error"]
        # the abandoned work does not run on: its process is gone (tests/test_serve_hostile.py
        # measures the CPU time after the 408), and a fresh worker takes its place
        assert not set(before) & set(pool.pids)
    finally:
        _stop(srv, thread)
    base, srv, thread = _start(create_app(clf, timeout_s=60, pool=pool))
    try:
        assert _request(f"{base}/v1/classify", (LAB / "capture-002.pcap.gz").read_bytes())[0] == 200
        assert len(pool.pids) == 1 and not set(before) & set(pool.pids)
    finally:
        _stop(srv, thread)

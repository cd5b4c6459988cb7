"""serve: the HTTP API on loopback gives the same labels as predict, and refuses bad uploads."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from test_predict import SAMPLE, run  # noqa: E402,F401  (the trained bundle fixture)
from trafficlens.serving import Classifier  # noqa: E402
from trafficlens.serving.http import create_app  # noqa: E402


def _start(app):
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", srv, thread


def _stop(srv, thread):
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(run):  # noqa: F811
    clf = Classifier.load(run[0])
    base, srv, thread = _start(create_app(clf, max_upload_bytes=400_000, timeout_s=30))
    yield base, clf
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
    base, clf = server
    assert _request(f"{base}/healthz") == (200, {"status": "ok"})
    status, body = _request(f"{base}/v1/model")
    assert status == 200 and body["labels"] == clf.labels and body["model"] == "chen-cnn"
    assert body["preprocessing"]["mask"] == "strict" and body["metrics"]["side"] == "test"


def test_classify_matches_predict(server):
    base, clf = server
    capture = SAMPLE / "capture-4.pcapng"
    status, body = _request(f"{base}/v1/classify", capture.read_bytes())
    assert status == 200
    expected = clf.predict_pcap(capture)
    assert [s["label"] for s in body["sessions"]] == expected.label.tolist()
    assert {s["capture"] for s in body["sessions"]} == {"upload"}


def test_bad_and_oversized_uploads(server):
    base, _ = server
    status, body = _request(f"{base}/v1/classify", b"<html>no capture</html>")
    assert status == 400 and "not a pcap or pcapng file" in body["error"] and "/tmp" not in body["error"]
    status, body = _request(f"{base}/v1/classify", b"")
    assert status == 400
    status, body = _request(f"{base}/v1/classify", bytes(500_000))
    assert status == 413 and "limit" in body["error"]


def test_slow_classification_times_out(server):
    _, clf = server
    base, srv, thread = _start(create_app(clf, timeout_s=0.001))
    try:
        status, body = _request(f"{base}/v1/classify", (SAMPLE / "capture-1.pcapng").read_bytes())
        assert status == 408 and "longer than" in body["error"]
        # the abandoned work stops at its next batch instead of running on in the background
        import threading
        import time

        deadline = time.monotonic() + 10
        while any(t.name.startswith("predict ") for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(t.name.startswith("predict ") for t in threading.enumerate())
    finally:
        _stop(srv, thread)

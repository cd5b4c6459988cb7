"""serve on a real network: hostile uploads, slow clients, authentication, TLS, what it exposes.

One pool of two classifier processes (examples/lab/model) serves every app of this module; each
test starts a server with its own limits on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
psutil = pytest.importorskip("psutil")

from captures import inflating_pcap_gz, udp_frame, write_pcap  # noqa: E402
from trafficlens.serving import Classifier  # noqa: E402
from trafficlens.serving import http  # noqa: E402
from trafficlens.errors import ConfigError  # noqa: E402
from trafficlens.serving.http import ServeConfig, create_app, is_loopback, server  # noqa: E402
from trafficlens.serving.workers import WorkerPool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lab" / "model"
CAPTURE = ROOT / "examples" / "lab" / "capture-003.pcap.gz"  # 30 sessions, 7489 packets
TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def clf():
    return Classifier.load(MODEL)


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(MODEL, workers=2, threads=1) as workers:
        yield workers


@contextlib.contextmanager
def serving(clf, pool, *, certfile=None, keyfile=None, **settings):
    """A server on a free loopback port; yields its base URL."""
    app = create_app(clf, pool=pool, **settings)
    srv = server(app, host="127.0.0.1", port=0, certfile=certfile, keyfile=keyfile,
                 log_config=None, log_level="warning")  # log_config=None: records reach caplog
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if certfile else 'http'}://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def request(url, data=None, headers=None, context=None, timeout=60):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, body, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), exc.headers
    return status, (json.loads(body) if headers.get("content-type") == "application/json" else body), headers


def connect(base):
    host, port = base.rsplit("//", 1)[1].split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def read_until_closed(sock, deadline):
    """Everything the server sends until it closes the connection; TimeoutError past `deadline`."""
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        except socket.timeout:
            raise TimeoutError(f"still open; received {received[:60]!r}") from None
        if not data:
            return received
        received += data


def upload_head(length, path="/v1/classify", extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n{extra}"
            f"Content-Length: {length}\r\n\r\n").encode()


def errors_logged(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- what one upload may cost --------------------------------------------------------------------
def test_upload_inflating_past_the_limit_is_refused_before_work(clf, pool):
    bomb = inflating_pcap_gz(24)  # 24 MiB inflated, about 90 kB sent
    with serving(clf, pool, max_capture_bytes=8 << 20) as base:
        start = time.monotonic()
        status, body, _ = request(f"{base}/v1/classify", bomb)
        assert status == 413 and "--max-capture-mb" in body["error"] and "8 MiB" in body["error"]
        assert time.monotonic() - start < 5
        # within the limits, the same server still classifies
        status, body, _ = request(f"{base}/v1/classify", CAPTURE.read_bytes())
        assert status == 200 and len(body["sessions"]) == 30


def test_upload_with_too_many_packets_is_refused(clf, pool):
    with serving(clf, pool, max_packets=7488) as base:
        status, body, _ = request(f"{base}/v1/classify", CAPTURE.read_bytes())
        assert status == 413 and "7488 packets" in body["error"] and "--max-packets" in body["error"]
    with serving(clf, pool, max_packets=7489) as base:
        assert request(f"{base}/v1/classify", CAPTURE.read_bytes())[0] == 200


# -- slow and vanishing clients ------------------------------------------------------------------
def test_connections_that_never_finish_their_headers_are_closed(clf, pool, caplog):
    with serving(clf, pool, header_timeout_s=1.0, max_connections_per_ip=200) as base:  # all from 127.0.0.1
        idle = [connect(base) for _ in range(50)]  # connect, send nothing
        partial = [connect(base) for _ in range(50)]
        for sock in partial:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Le")
        start = time.monotonic()
        # meanwhile the server answers others
        assert request(f"{base}/v1/classify", CAPTURE.read_bytes())[0] == 200
        for sock in idle + partial:
            assert read_until_closed(sock, start + 4) == b""  # closed without an answer
            sock.close()
        assert time.monotonic() - start < 4
    assert not errors_logged(caplog)


def test_one_address_cannot_hold_more_connections_than_its_cap(clf, pool):
    with serving(clf, pool, max_connections_per_ip=3) as base:
        held = [connect(base) for _ in range(3)]  # open, sending nothing (under the header timeout)
        time.sleep(0.2)
        extra = connect(base)
        assert read_until_closed(extra, time.monotonic() + 2) == b""  # closed unread, at once
        extra.close()
        for sock in held:  # the three are still open and served
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        for sock in held:
            sock.close()
        time.sleep(0.2)  # the server has counted them closed: the address may connect again
        assert request(f"{base}/v1/classify", CAPTURE.read_bytes())[0] == 200
    with pytest.raises(ConfigError, match="max_connections_per_ip=0"):
        ServeConfig(max_connections_per_ip=0)


def test_keep_alive_connection_must_send_its_next_headers_in_time(clf, pool):
    with serving(clf, pool, header_timeout_s=1.0) as base:
        sock = connect(base)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        for _ in range(4):  # a byte of the next request every 0.4 s: each one used to reset uvicorn's timer
            with contextlib.suppress(OSError):
                sock.sendall(b"G")
            time.sleep(0.4)
            if time.monotonic() - start > 1.2:
                break
        assert read_until_closed(sock, start + 3) == b""
        sock.close()


def test_trickled_body_gets_408_and_is_closed(clf, pool, caplog):
    with serving(clf, pool, body_timeout_s=1.5) as base:
        sock = connect(base)
        sock.sendall(upload_head(100_000))
        start = time.monotonic()
        received = b""
        with contextlib.suppress(OSError):
            while time.monotonic() - start < 5 and not received:
                sock.sendall(b"x")
                sock.settimeout(0.1)
                with contextlib.suppress(socket.timeout):
                    received = sock.recv(65536)
        received += read_until_closed(sock, start + 5)
        sock.close()
        assert received.startswith(b"HTTP/1.1 408") and b"--body-timeout" in received
        assert 1.4 < time.monotonic() - start < 3
    assert not errors_logged(caplog)


def refused_by_server(sock, chunk, tries=20):
    """Whether sending `chunk` every 0.05 s meets a reset (or broken pipe) within `tries` sends."""
    for _ in range(tries):
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(0.05)
    return False


def test_answer_before_the_body_lingers_for_the_rest_of_it(clf, pool, monkeypatch):
    """A 413 sent before the body is read, to a client that asked for `Connection: close` (urllib
    always does): the server stops writing (FIN after the answer) but reads and drops the rest
    of the body, so the client, still sending, meets no reset that could destroy the answer. At
    most 1 MiB and `_LINGER_S` of it: then the connection is closed."""
    monkeypatch.setattr(http, "_LINGER_S", 1.5)
    with serving(clf, pool, max_upload_bytes=600_000) as base:
        sock = connect(base)
        sock.sendall(upload_head(700_000, extra="Connection: close\r\n"))
        answer = read_until_closed(sock, time.monotonic() + 5)
        assert answer.startswith(b"HTTP/1.1 413") and b"--max-upload-mb" in answer
        sock.sendall(bytes(700_000))
        assert not refused_by_server(sock, bytes(1000), tries=10)  # within the linger time
        assert refused_by_server(sock, bytes(100_000))  # past 1 MiB dropped: closed
        sock.close()

        sock = connect(base)
        sock.sendall(upload_head(700_000, extra="Connection: close\r\n"))
        assert read_until_closed(sock, time.monotonic() + 5).startswith(b"HTTP/1.1 413")
        time.sleep(2.0)  # past the linger time, nothing sent
        assert refused_by_server(sock, bytes(1000))
        sock.close()


def test_client_hanging_up_mid_upload_logs_no_traceback(clf, pool, caplog):
    with serving(clf, pool) as base:
        for _ in range(5):
            sock = connect(base)
            sock.sendall(upload_head(100_000) + b"x" * 30_000)
            time.sleep(0.05)
            sock.close()
        time.sleep(0.5)
        assert request(f"{base}/healthz")[0] == 200
    assert not errors_logged(caplog)


def test_uploads_past_the_cap_get_503_at_once_and_others_still_work(clf, pool):
    with serving(clf, pool, max_uploads=3) as base:
        slow = [connect(base) for _ in range(3)]
        for sock in slow:
            sock.sendall(upload_head(10_000) + b"x" * 100)  # uploading, and staying so
        time.sleep(0.3)
        start = time.monotonic()
        status, body, headers = request(f"{base}/v1/classify", CAPTURE.read_bytes())
        assert status == 503 and "--max-uploads" in body["error"] and headers["Retry-After"] == "1"
        assert time.monotonic() - start < 1
        assert request(f"{base}/v1/model")[0] == 200
        for sock in slow:
            sock.close()
        time.sleep(0.3)
        assert request(f"{base}/v1/classify", CAPTURE.read_bytes())[0] == 200


def test_an_answer_left_unread_is_dropped_after_the_write_timeout(clf, pool, tmp_path, caplog):
    """A client that uploads and then never reads its (large) answer: the answer waits in the
    server's memory for as long as the client keeps the connection open; with --write-timeout the
    connection is dropped once its buffer has been full that long, and the rest never sent."""
    caplog.set_level(logging.DEBUG, logger=http.log.name)
    # 16,000 sessions: an answer of about 7 MB, more than the kernel buffers of a loopback
    # connection take (here the server's send buffer grows to 4 MB)
    frames = [(1.0 + i * 0.001, udp_frame(b"q" * 24, sport=20000 + i, dport=53)) for i in range(16_000)]
    capture = write_pcap(tmp_path / "many.pcap", frames).read_bytes()
    with serving(clf, pool, write_timeout_s=1.0) as base:
        host, port = base.rsplit("//", 1)[1].split(":")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it does not read
        stalled.connect((host, int(port)))
        stalled.sendall(upload_head(len(capture)) + capture)
        deadline = time.monotonic() + 30
        while not any("read nothing of the answer" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the unread answer was never dropped"
            time.sleep(0.1)
        answer = read_until_closed(stalled, time.monotonic() + 10)  # what the kernel held, then the end
        length = int(answer.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        assert answer.startswith(b"HTTP/1.1 200") and len(answer.split(b"\r\n\r\n", 1)[1]) < length
        stalled.close()
        assert request(f"{base}/v1/model")[0] == 200


# -- who may use it ------------------------------------------------------------------------------
def test_bearer_token(clf, pool, monkeypatch):
    import trafficlens.serving.http as http_mod

    compared = []
    real = http_mod.hmac.compare_digest
    monkeypatch.setattr(http_mod.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    capture = CAPTURE.read_bytes()
    with serving(clf, pool, token=TOKEN) as base:
        status, body, headers = request(f"{base}/v1/classify", capture)
        assert status == 401 and "bearer token" in body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert request(f"{base}/v1/model", headers={"Authorization": f"Bearer {TOKEN[:-1]}"})[0] == 401
        assert request(f"{base}/v1/model", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert request(f"{base}/healthz")[0] == 200  # health checks need no token
        assert request(f"{base}/docs")[0] == 401  # not served, and not even that is told
        status, body, _ = request(f"{base}/v1/classify", capture, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and len(body["sessions"]) == 30
    assert compared  # the token is compared in constant time


def tls_files(directory: Path) -> tuple[dict[str, str], ssl.SSLContext]:
    """(the server's certfile and keyfile, a client context that trusts them): the throwaway CA of
    `generate.certs`, made by trustme."""
    pytest.importorskip("trustme")
    from trafficlens.generate.certs import make

    certs = make(str(directory), ("127.0.0.1",))
    return {"certfile": certs.certfile, "keyfile": certs.keyfile}, ssl.create_default_context(cafile=certs.cafile)


def test_tls(clf, pool, tmp_path):
    files, context = tls_files(tmp_path)
    with serving(clf, pool, token=TOKEN, **files) as base:
        assert base.startswith("https://")
        status, body, _ = request(f"{base}/v1/classify", CAPTURE.read_bytes(), context=context,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and len(body["sessions"]) == 30
        with pytest.raises((urllib.error.URLError, ConnectionError, http_remote_errors())):
            request(base.replace("https", "http") + "/healthz", timeout=5)


def test_a_tls_handshake_must_end_within_the_header_timeout(clf, pool, tmp_path):
    """A client that connects and never starts (or never finishes) its handshake is dropped after
    --header-timeout, not asyncio's 60 s, and a client that does handshake is still served."""
    files, context = tls_files(tmp_path)
    with serving(clf, pool, header_timeout_s=1.0, **files) as base:
        port = int(base.rsplit(":", 1)[1])
        silent, partial = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes, then nothing
        start = time.monotonic()
        for sock in (silent, partial):
            sock.settimeout(20)
            try:
                closed = sock.recv(1024) == b""  # the server closed it
            except ConnectionResetError:
                closed = True
            assert closed
            sock.close()
        assert time.monotonic() - start < 8  # about 1 s each; 60 s before
        assert request(f"{base}/healthz", context=context)[0] == 200


def http_remote_errors():
    import http.client

    return http.client.HTTPException


def test_docs_are_opt_in(clf, pool):
    with serving(clf, pool) as base:
        assert request(f"{base}/docs")[0] == 404
        assert request(f"{base}/openapi.json")[0] == 404
    with serving(clf, pool, docs=True, token=TOKEN) as base:
        assert request(f"{base}/docs")[0] == 200
        status, schema, _ = request(f"{base}/openapi.json")
        assert status == 200 and "/v1/classify" in schema["paths"]
        assert request(f"{base}/v1/model")[0] == 401


def test_is_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.org"))


def _serve_cli(*args, tmp_path=None):
    return subprocess.run([sys.executable, "-m", "trafficlens", "serve", str(MODEL), "--port", "0", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})


def test_cli_listens_on_loopback_unless_host_says_otherwise(monkeypatch):
    """README: serve listens on 127.0.0.1 unless --host names another address (which needs a token or --insecure)."""
    from click.testing import CliRunner

    from trafficlens.cli import cli

    bound = []

    class Recorder:  # uvicorn.Server, without serving
        def __init__(self, config):
            bound.append((config.host, config.port))

        def run(self):
            pass

    monkeypatch.setattr(uvicorn, "Server", Recorder)
    for extra in ([], ["--host", "0.0.0.0", "--insecure"]):
        result = CliRunner().invoke(cli, ["serve", str(MODEL), "--port", "8099", "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
    assert bound == [("127.0.0.1", 8099), ("0.0.0.0", 8099)]


def test_cli_refuses_a_public_address_without_a_token(tmp_path):
    result = _serve_cli("--host", "0.0.0.0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token-file" in lines[0] and "--insecure" in lines[0]
    short = tmp_path / "token"
    short.write_text("short\n")
    result = _serve_cli("--host", "0.0.0.0", "--token-file", str(short))
    assert result.returncode == 2 and "at least 16 characters" in result.stderr


# -- a timeout stops the work ------------------------------------------------------------------
def test_timeout_kills_the_work(clf, pool):
    """Last in the module: it costs a worker, replaced in the background."""
    bomb = inflating_pcap_gz(160)  # 2.5 M packets: several seconds of work, refused only by time here
    me = psutil.Process()
    before = set(pool.pids)

    def cpu_seconds():  # this process (the server's threads) and the workers that were there before
        procs = [me] + [p for p in me.children(recursive=True) if p.pid in before]
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    with serving(clf, pool, timeout_s=1.0, max_capture_bytes=1 << 30, max_packets=10**9) as base:
        start = time.monotonic()
        status, body, _ = request(f"{base}/v1/classify", bomb)
        assert status == 408 and "longer than 1 s" in body["error"]
        assert time.monotonic() - start < 3
        spent = cpu_seconds()
        time.sleep(2)
        # nothing of the request runs on (0.01 s measured; the thread that main left running took
        # 0.5 s of these 2 s on the loaded 2-core VM, and 2 s on an idle one)
        assert cpu_seconds() - spent < 0.2
        assert len(before - set(pool.pids)) == 1  # its worker was killed
        # the other worker still answers
        status, body, _ = request(f"{base}/v1/classify", CAPTURE.read_bytes())
        assert status == 200 and len(body["sessions"]) == 30

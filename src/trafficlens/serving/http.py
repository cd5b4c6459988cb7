"""`trafficlens serve`: a small HTTP API over one model bundle (FastAPI on uvicorn).

    POST /v1/classify   body: a capture (pcap, pcapng or gzip) -> {"sessions": [...rows...]}
    POST /v1/classify/hosts?by=host|capture|host-window&window=300s&host_key=ip|mac&aggregator=auto|pool|vote|learned
                           &open_set=false|true
                        the same body -> {"groups": [...]}: one decision per host (predict --by)
    GET  /v1/model      labels, model, preprocessing settings, test metrics
    GET  /healthz       {"status": "ok"}            (never needs the token)
    GET  /docs, /openapi.json                       (only with docs=True)

Built for a network where clients may be hostile; every limit is a `ServeConfig` field (a
`serve` option) and answered with a JSON body `{"error": "..."}` that names the option:

- 413: a body over `max_upload_bytes` (checked while streaming), an upload that inflates past
  `max_capture_bytes` or holds more than `max_packets` packets (counted before any work).
- 408: classification past `timeout_s` (its worker process is killed: nothing keeps running),
  or a body not received within `body_timeout_s`. Headers (and with TLS the handshake) not
  received within `header_timeout_s` close the connection without an answer; so does an answer
  the client leaves unread for `write_timeout_s`.
- 503: more than `max_uploads` classify requests at once (answered at once, before reading the
  body), or no worker free within `timeout_s`.
- 401: a token is set and the request lacks `Authorization: Bearer <token>`.
- A connection from an address that already holds `max_connections_per_ip` open connections is
  closed at once, before it is read: one client cannot hold every slot the server has.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hmac
import ipaddress
import json
import logging
import os
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from trafficlens.errors import CaptureError, ConfigError
from trafficlens.inference.classifier import Classifier
from trafficlens.inference.groups import GroupConfig, parse_window, read_calibration, read_open_set
from trafficlens.serving.limits import UploadTooLarge
from trafficlens.serving.workers import Job, PoolBusy, WorkerPool, WorkFailed, WorkTimeout

log = logging.getLogger("trafficlens.serve")
_DRAIN_BYTES = 1 << 20  # an unread body rest up to this is read and dropped rather than the connection closed
_LINGER_S = 5.0  # after an answer that closes the connection: the longest wait for the rest of the client's body


@dataclass(frozen=True)
class ServeConfig:
    """Limits, timeouts and access of one server; the `serve` options, in bytes and seconds."""

    max_upload_bytes: int = 64 << 20  # the body as sent (compressed or not)
    max_capture_bytes: int = 512 << 20  # the capture once decompressed
    max_packets: int = 2_000_000
    timeout_s: float = 60.0  # classification of one upload; also the longest wait for a free worker
    header_timeout_s: float = 10.0  # from connecting (or the previous answer) to the end of the headers
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body
    write_timeout_s: float = 60.0  # an answer the client stops reading: how long it may wait to be read
    max_uploads: int = 64  # classify requests at once (uploading, queued or running)
    max_connections_per_ip: int = 64  # open connections one client address may hold; past it, closed at once
    workers: int = 2  # classifier processes
    token: str | None = None  # bearer token; None: no authentication
    docs: bool = False  # serve /docs and /openapi.json
    top_k: int = 1
    min_confidence: float = 0.0

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_capture_bytes", "max_packets", "timeout_s", "header_timeout_s",
                     "body_timeout_s", "write_timeout_s", "max_uploads", "max_connections_per_ip", "workers", "top_k"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ServeConfig.{name}={getattr(self, name)!r}: must be positive")


def create_app(clf: Classifier, config: ServeConfig | None = None, *, pool: WorkerPool | None = None,
               **settings: Any) -> FastAPI:
    """The API over `clf`'s bundle. `settings` override fields of `config` (`timeout_s=5`).

    Without `pool`, the app starts its own `config.workers` classifier processes at start-up
    and stops them at shutdown; a given pool is used as it is and left running."""
    config = dataclasses.replace(config or ServeConfig(), **settings)
    own_pool = pool is None
    pool = pool or WorkerPool(clf.bundle.path, device=str(clf.device), workers=config.workers,
                              trusted_keys=clf.trusted_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from starlette.concurrency import run_in_threadpool

        if own_pool:
            await run_in_threadpool(pool.start)
        try:
            yield
        finally:
            if own_pool:
                pool.close()

    app = FastAPI(title="trafficlens", version="1", lifespan=lifespan, docs_url="/docs" if config.docs else None,
                  redoc_url=None, openapi_url="/openapi.json" if config.docs else None)
    app.state.serve_config = config
    app.state.pool = pool
    if config.token is not None:
        open_paths = {"/healthz"} | ({"/docs", "/docs/oauth2-redirect", "/openapi.json"} if config.docs else set())
        app.add_middleware(_BearerAuth, token=config.token, open_paths=open_paths)

    metrics_path = Path(clf.bundle.path) / "metrics.json"
    model_info = {
        "model": clf.bundle.name,
        "labels": clf.labels,
        "preprocessing": clf.bundle.preprocessing,
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
    }
    classifier = _Uploads(clf.bundle.name, pool, config)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return model_info

    @app.post("/v1/classify")
    async def classify(request: Request):
        return await classifier.handle(request)

    temperature = read_calibration(clf.bundle.path).get("temperature", 1.0)

    @app.post("/v1/classify/hosts")
    async def classify_hosts(request: Request, by: str = "host", window: str = "300s", host_key: str = "ip",
                             aggregator: str = "auto", open_set: bool = False):
        """One decision per host (or capture, or host and time window) of the uploaded capture, as
        `predict --by`: the learned aggregator where `evaluate --by` fitted one, else pooled
        calibrated log-probabilities; `open_set`: as `--open-set`."""
        try:
            group = GroupConfig(by=by, host_key=host_key, window=parse_window(window), aggregator=aggregator,
                                temperature=temperature, top_k=config.top_k, min_confidence=config.min_confidence,
                                **(read_open_set(clf.bundle.path, by) if open_set else {}))
        except ConfigError as exc:
            return _error(400, str(exc), unread=request)
        return await classifier.handle(request, dataclasses.replace(classifier.job, group=group))

    return app


class _Uploads:
    """POST /v1/classify: at most `max_uploads` at once, each written to a temporary file (counted
    against the size limit as it comes) and classified by a worker process under the timeout."""

    def __init__(self, model: str, pool: WorkerPool, config: ServeConfig):
        self.model, self.pool, self.config = model, pool, config
        self.job = Job(top_k=config.top_k, min_confidence=config.min_confidence,
                       max_capture_bytes=config.max_capture_bytes, max_packets=config.max_packets)
        self.uploads = _Counter()
        self.threads = _Threads(config.max_uploads)

    async def handle(self, request: Request, job: Job | None = None):
        if self.uploads.value >= self.config.max_uploads:
            return _error(503, f"{self.config.max_uploads} uploads in progress already, the limit (--max-uploads); "
                               "retry later", unread=request, retry_after=1)
        self.uploads.value += 1
        try:
            return await self._classify(request, job or self.job)
        finally:
            self.uploads.value -= 1

    async def _classify(self, request: Request, job: Job):
        limit = self.config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, f"upload of {declared} bytes exceeds the limit of {limit} (--max-upload-mb)",
                          unread=request)
        fd, name = tempfile.mkstemp(prefix="trafficlens-upload-", suffix=".capture")
        try:
            size = 0
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        return _error(413, f"upload exceeds the limit of {limit} bytes (--max-upload-mb)",
                                      unread=request, read=size)
                    fh.write(chunk)
            if size == 0:
                return _error(400, "empty body: POST a pcap or pcapng capture")
            return await self._run(name, job)
        except ClientDisconnect:  # the client hung up (or its body timed out): nobody to answer
            return Response(status_code=400)
        finally:
            Path(name).unlink(missing_ok=True)
            Path(name + ".raw").unlink(missing_ok=True)  # a killed worker's decompressed copy

    async def _run(self, name: str, job: Job):
        timeout = self.config.timeout_s
        try:
            rows = await self.threads.run(functools.partial(self.pool.classify, name, job, timeout_s=timeout))
        except WorkTimeout as exc:
            return _error(408, str(exc))
        except PoolBusy as exc:
            return _error(503, f"{exc}; retry later", retry_after=max(1, round(timeout)))
        except UploadTooLarge as exc:
            return _error(413, str(exc))
        except (CaptureError, ConfigError) as exc:
            return _error(400, str(exc))
        except WorkFailed as exc:
            log.error("classification failed: %s", exc)
            return _error(500, "classification failed (logged on the server)")
        return {"model": self.model, "groups" if job.group is not None else "sessions": rows}


def _error(status: int, message: str, *, unread: Request | dict | None = None, read: int = 0,
           retry_after: int | None = None) -> JSONResponse:
    """A JSON error. `unread`: the request (or its ASGI scope) whose body is not read, past `read`
    bytes. A small rest is left to the server to read and drop, so that the client, still sending,
    gets this answer instead of a reset; past `_DRAIN_BYTES` (or of unknown size) the connection
    is closed after the answer instead."""
    headers = {}
    if unread is not None:
        declared = dict(unread["headers"]).get(b"content-length", b"") if isinstance(unread, dict) \
            else (unread.headers.get("content-length") or "").encode()
        if not declared.isdigit() or int(declared) - read > _DRAIN_BYTES:
            headers["Connection"] = "close"
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Counter:
    """A number changed only on the event loop's thread (no lock needed)."""

    value = 0


class _Threads:
    """Threads that wait on the worker pool: one per classify request allowed at once, so the wait
    for a free worker is never hidden behind a wait for a thread."""

    def __init__(self, size: int):
        self.size = size
        self.limiter = None

    async def run(self, fn):
        import anyio.to_thread

        if self.limiter is None:  # made on the event loop that uses it
            self.limiter = anyio.CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)


class _BearerAuth:
    """ASGI middleware: every path but `open_paths` needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str, open_paths: set[str]):
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            return await self.app(scope, receive, send)
        response = _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)", unread=scope)
        response.headers["WWW-Authenticate"] = 'Bearer realm="trafficlens"'
        await response(scope, receive, send)

    def _authorized(self, scope) -> bool:
        value = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = value.partition(b" ")
        # compare_digest: the time taken does not tell how much of a guess was right
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)


# -- the server: timeouts below the app, TLS, where it may listen -----------------------------------
def server_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080, certfile: str | None = None,
                  keyfile: str | None = None, **uvicorn_options: Any):
    """A `uvicorn.Config` for `app` with its header and body timeouts (and TLS when `certfile`).
    With TLS the event loop is asyncio's, whose TLS handshakes `server` can bound."""
    import uvicorn

    config: ServeConfig = app.state.serve_config
    protocol = _guarded_protocol(config.header_timeout_s, config.body_timeout_s, config.max_connections_per_ip,
                                 config.write_timeout_s)
    if certfile:
        uvicorn_options.setdefault("loop", "asyncio")
    return uvicorn.Config(app, host=host, port=port, http=protocol, ssl_certfile=certfile, ssl_keyfile=keyfile,
                          **uvicorn_options)


def server(app: FastAPI, **options: Any):
    """A `uvicorn.Server` for `app` (`server_config(app, **options)`) whose TLS handshakes must end
    within the header timeout. uvicorn leaves asyncio's default of 60 s, and the header timeout
    and the per-address cap start only once a handshake is done (that is when the HTTP protocol
    sees the connection), so a client that opened connections and never finished a handshake
    held each for a minute, unlimited in number."""
    import asyncio

    import uvicorn

    handshake_s = app.state.serve_config.header_timeout_s

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            # uvicorn passes no handshake timeout to `create_server`; add it for this start-up
            loop = asyncio.get_running_loop()
            create_server = loop.create_server

            async def with_deadline(*args, **kwargs):
                if kwargs.get("ssl") is not None:
                    kwargs.setdefault("ssl_handshake_timeout", handshake_s)
                return await create_server(*args, **kwargs)

            loop.create_server = with_deadline
            try:
                await super().startup(sockets=sockets)
            finally:
                del loop.create_server

    return _Server(server_config(app, **options))


class _WriteDeadline:
    """For an asyncio protocol with uvicorn's flow control: an answer the client stops reading
    stays in the server's memory (a classify answer is one write, tens of MB for a large
    capture) for as long as the client keeps the connection open. The transport says when its
    buffer is full (`pause_writing`) and when it has drained (`resume_writing`); a buffer still
    full `write_timeout_s` later drops the connection and what it held."""

    write_timeout_s: float = 60.0
    _stall = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.write_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        log.debug("closing %s: it read nothing of the answer for %g s", self.client, self.write_timeout_s)
        self.transport.raw.abort()  # close() would wait to flush what the client does not read


class _PhaseDeadlines:
    """For uvicorn's h11 protocol: one timer for the phase the client is in (sending headers,
    sending a body, or none), from `_phases` ({h11 state: (phase, seconds)}); a phase past its
    deadline closes the connection, a body first answered 408 when no answer has started."""

    _phases: dict = {}
    body_timeout_s: float = 60.0
    _phase: str | None = None
    _timer = None

    def _watch(self) -> None:
        phase = None if self.transport.is_closing() else self._phases.get(self.conn.their_state)
        if (phase and phase[0]) != self._phase:
            self._set_timer(phase)

    def _set_timer(self, phase) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._phase = phase[0] if phase else None
        if phase:
            self._timer = self.loop.call_later(phase[1], self._expired, phase[0])

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if phase == "body" and cycle is not None and not cycle.response_started:
            self.transport.write(_timeout_answer(self.conn, self.body_timeout_s))
        if cycle is not None:  # the app sees a disconnect and stops reading; nothing is logged
            cycle.disconnected = True
            cycle.message_event.set()
        log.debug("closing %s: %s not complete in time", self.client, phase)
        self.transport.raw.close()  # a client this slow gets no time to linger


def _timeout_answer(conn, body_timeout_s: float) -> bytes:
    """The bytes of the 408 a body past its deadline gets; b"" when h11 can no longer send one."""
    import h11

    body = json.dumps({"error": f"upload not complete {body_timeout_s:g} s after its headers "
                                "(--body-timeout)"}).encode()
    try:
        out = conn.send(h11.Response(status_code=408, reason=b"Request Timeout", headers=[
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]))
        return out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return b""


@functools.lru_cache(maxsize=None)
def _guarded_protocol(header_timeout_s: float, body_timeout_s: float, per_ip: int, write_timeout_s: float = 60.0):
    """uvicorn's h11 protocol with two deadlines per request, which uvicorn lacks: the headers must
    be complete `header_timeout_s` after the connection opens (or the previous answer ends), the
    body `body_timeout_s` after the headers (`_PhaseDeadlines`). A client address holding `per_ip`
    open connections has the next one closed unread (uvicorn's own limit counts all clients
    together, so one client could take every slot). An answer left unread drops the connection
    after `write_timeout_s` (`_WriteDeadline`)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(_PhaseDeadlines, _WriteDeadline, H11Protocol):
        _counted: str | None = None  # the client address this connection counts against

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.transport = _LingeringTransport(transport, self.loop, lambda: self.conn.their_state is h11.SEND_BODY)
            address = self.client[0] if self.client else None  # None: a Unix socket, nothing to count
            if address is not None and not _count_connection(self.server_state, address, per_ip):
                log.debug("closing %s: %d connections from its address already open", self.client, per_ip)
                self.transport.raw.close()
                return
            self._counted = address
            self._watch()

        def data_received(self, data: bytes) -> None:
            if self.transport.dropped is not None:
                self.transport.drop(len(data))
                return
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc) -> None:
            if self._counted is not None:
                _uncount_connection(self.server_state, self._counted)
            self._set_timer(None)
            self._cancel_stall()
            self.transport.stop_lingering()
            super().connection_lost(exc)

    GuardedH11Protocol._phases = {h11.IDLE: ("headers", header_timeout_s), h11.SEND_BODY: ("body", body_timeout_s)}
    GuardedH11Protocol.body_timeout_s = body_timeout_s
    GuardedH11Protocol.write_timeout_s = write_timeout_s
    return GuardedH11Protocol


def _count_connection(server_state, address: str, per_ip: int) -> bool:
    """Count one more open connection from `address`; False (and not counted) when it holds `per_ip`."""
    open_by = _open_by_address(server_state)
    if open_by[address] >= per_ip:
        return False
    open_by[address] += 1
    return True


def _uncount_connection(server_state, address: str) -> None:
    open_by = _open_by_address(server_state)
    open_by[address] -= 1
    if not open_by[address]:
        del open_by[address]


def _open_by_address(server_state) -> "collections.Counter[str]":
    """Open connections by client address, kept on uvicorn's state of one server."""
    counts = getattr(server_state, "trafficlens_open_by_address", None)
    if counts is None:
        counts = server_state.trafficlens_open_by_address = collections.Counter()
    return counts


class _LingeringTransport:
    """A connection's transport whose `close`, while the client is still sending its body (a client
    that asked for `Connection: close`, or an answer that closes), stops writing and reads and
    drops the rest for a while instead: closing a socket with unread data sends a reset, which can
    destroy the answer before the client reads it. At most `_DRAIN_BYTES` and `_LINGER_S`, then
    closed. Everything else is the transport's own."""

    def __init__(self, raw, loop, still_sending: Callable[[], bool]):
        self.raw, self._loop, self._still_sending = raw, loop, still_sending
        self.dropped: int | None = None  # body bytes dropped since lingering began; None: not lingering
        self._timer = None

    def __getattr__(self, name: str):
        return getattr(self.raw, name)

    def is_closing(self) -> bool:
        return self.dropped is not None or self.raw.is_closing()

    def close(self) -> None:
        if self.dropped is not None or self.raw.is_closing() or not self._still_sending():
            self.raw.close()
            return
        self.dropped = 0
        if self.raw.can_write_eof():  # not over TLS: there the answer simply stays the last thing sent
            self.raw.write_eof()
        self.raw.resume_reading()  # flow control may have paused it
        self._timer = self._loop.call_later(_LINGER_S, self.raw.close)

    def drop(self, size: int) -> None:
        self.dropped += size
        if self.dropped > _DRAIN_BYTES:
            self.raw.close()

    def stop_lingering(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def read_token(path: str | os.PathLike) -> str:
    """The bearer token in `path` (surrounding whitespace removed); at least 16 characters."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {path}: cannot read it ({exc})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: the token must be one word of at least 16 characters; make one "
                          "with: python -c 'import secrets; print(secrets.token_urlsafe(32))' > TOKEN_FILE")
    return token

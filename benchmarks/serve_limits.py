"""`trafficlens serve` under hostile clients, against main's server in the same run.

    git archive $(git merge-base HEAD main) src | tar -x -C /tmp/tl-main     # main's code, once
    PYTHONPATH=src python benchmarks/serve_limits.py --baseline /tmp/tl-main/src

Every scenario starts the real command (`python -m trafficlens serve --model examples/lab/model`)
in a fresh process, once with this tree's code and once with `--baseline`'s, and measures it
from outside:

- valid: N concurrent POSTs of the lab captures (0.3-0.6 MB gzip, 30 sessions each), default
  options: latency p50/p99 and how many got 200.
- bomb: a gzip pcapng of one 50-byte UDP frame repeated (built here; 1 GiB inflated from 3.7 MB
  sent, like the one of issue 13) with `--timeout 2`, the limits raised so that the timeout is
  what stops it: the answer, and the CPU seconds the server (every process of it, workers
  included) spends after the answer until it goes quiet, the start-up of the worker that
  replaces the killed one included (and shown apart). Then the same bomb with the default
  limits: 413 once 2,000,000 packets are counted, before any classification.
- slow: N connections that never finish their headers and M uploads trickling a byte every
  0.5 s, watched for `--window` s: when the server closes them, whether a valid request sent
  meanwhile is answered, and the tracebacks the server logs (after the client closes what is
  left). This tree runs with `--header-timeout 5 --body-timeout 10` here (defaults 10 and 60).
- cap: `--max-uploads 8` and 12 trickling uploads: how fast the 4 over the cap get their 503.
- unread: M clients upload a capture of 16,000 one-packet sessions (an answer of about 7 MB) and
  never read the answer, watched for `--window` s: the server's resident memory (all its
  processes) before and after, and whether it closed them. This tree runs with
  `--write-timeout 5` here (default 60).
- handshake: with TLS (`--certfile`, a certificate made here by `trustme`), N connections that
  send nothing and M that send the first bytes of a ClientHello and stop, watched for
  `--handshake-window` s (default options: `--header-timeout 10`): when the server closes them,
  and whether a valid request over TLS sent meanwhile is answered.
"""

from __future__ import annotations

import argparse
import gzip
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lab" / "model"
CAPTURES = sorted((ROOT / "examples" / "lab").glob("capture-*.pcap.gz"))


def build_bomb(mib: int) -> bytes:
    """A gzip pcapng of `mib` MiB once inflated: one 50-byte UDP frame repeated in enhanced packet
    blocks, one gzip member per MiB (gzip members concatenate: the one member, repeated)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 0, 0, 64, 17, 0, bytes([10, 1, 1, 1]), bytes([10, 2, 2, 2]))
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 5353, 53, 16, 0) + b"x" * 8
    padded = frame + bytes(-len(frame) % 4)
    length = 32 + len(padded)
    epb = struct.pack("<IIIIIII", 6, length, 0, 0, 0, len(frame), len(frame)) + padded + struct.pack("<I", length)
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHII", 1, 20, 1, 0, 65535, 20)
    block = epb * ((1 << 20) // len(epb))
    return gzip.compress(shb + idb + block, 9, mtime=0) + gzip.compress(block, 9, mtime=0) * (mib - 1)


class Server:
    """`trafficlens serve` in its own process, from the code under `src`."""

    def __init__(self, src: Path, *options: str, context=None, model: Path = MODEL):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.context = context  # the client's TLS context when the server runs with --certfile
        self.base = f"{'https' if context else 'http'}://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-bench-", suffix=".log")
        env = dict(os.environ, PYTHONPATH=str(src))
        self.popen = subprocess.Popen([sys.executable, "-m", "trafficlens", "serve", "--model", str(model),
                                       "--port", str(self.port), *options],
                                      cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.proc = psutil.Process(self.popen.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"server exited: {self.text()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2, context=self.context):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        # One request before measuring: main's server loads the prep kernels at its first request
        # (and compiles them, the first time a copy of the code runs: numba caches by file path).
        # With --timeout 2 that first request may get its 408 while the kernels load: try again.
        for _ in range(10):
            status, _ = post(f"{self.base}/v1/classify", CAPTURES[0].read_bytes(), context=self.context)
            if status == 200:
                return
            time.sleep(2)
        raise RuntimeError(f"warm-up request answered {status}: {self.text()}")

    def text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def processes(self) -> list[psutil.Process]:
        return [self.proc] + self.proc.children(recursive=True)

    def cpu(self) -> float:
        """CPU seconds of the server and its processes, those ended and reaped included."""
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for p in reversed(self.processes()):
                p.kill()
            self.popen.wait()
        self.log.close()


def post(url: str, data: bytes, timeout: float = 300, context=None) -> tuple[int, float]:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0  # reset or timed out
    return status, time.perf_counter() - start


# -- scenarios ---------------------------------------------------------------------------------
def valid(server: Server, n: int) -> dict:
    bodies = [p.read_bytes() for p in CAPTURES]
    results: list[tuple[int, float]] = [(0, 0.0)] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        gate.wait()
        results[i] = post(f"{server.base}/v1/classify", bodies[i % len(bodies)])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = sorted(s for _, s in results)
    return {"ok": sum(status == 200 for status, _ in results), "n": n, "p50": statistics.median(times),
            "p99": times[min(n - 1, round(0.99 * (n - 1)))]}


def bomb(server: Server, data: bytes, quiet_s: float = 3.0, max_wait_s: float = 240.0) -> dict:
    before = {p.pid for p in server.processes()}
    status, seconds = post(f"{server.base}/v1/classify", data)
    at_answer = server.cpu()
    # after the answer: sample until the server has been quiet for `quiet_s`
    samples = [(time.monotonic(), at_answer)]
    while time.monotonic() - samples[0][0] < max_wait_s:
        time.sleep(0.5)
        samples.append((time.monotonic(), server.cpu()))
        recent = [c for t, c in samples if t >= samples[-1][0] - quiet_s]
        if samples[-1][0] - samples[0][0] >= quiet_s and recent[-1] - recent[0] < 0.05 * quiet_s:
            break
    fresh = [p for p in server.processes() if p.pid not in before]
    replacement = 0.0
    for p in fresh:
        try:
            t = p.cpu_times()
            replacement += t.user + t.system
        except psutil.Error:
            pass
    after = samples[-1][1] - at_answer
    quiet_at = next((t for t, c in samples if samples[-1][1] - c < 0.05 * quiet_s), samples[-1][0]) - samples[0][0]
    return {"status": status, "seconds": seconds, "cpu_after": after, "replacement": replacement,
            "busy_for": quiet_at}


def slow(server: Server, headers: int, trickles: int, window: float) -> dict:
    socks: dict[socket.socket, tuple[str, float]] = {}
    closed: dict[str, list[float]] = {"headers": [], "trickle": []}
    answers: list[bytes] = []
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    for i in range(headers + trickles):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i < headers:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: bench\r\nContent-Ty")
            kind = "headers"
        else:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: bench\r\nContent-Length: 10000000\r\n\r\n")
            kind = "trickle"
        s.setblocking(False)
        socks[s] = (kind, time.monotonic())
        sel.register(s, selectors.EVENT_READ)
    valid_result: list[tuple[int, float]] = []
    capture = CAPTURES[3].read_bytes()
    probe = threading.Timer(2.0, lambda: valid_result.append(post(f"{server.base}/v1/classify", capture)))
    probe.start()
    next_byte = time.monotonic()
    while time.monotonic() - start < window and socks:
        if time.monotonic() >= next_byte:  # every trickler sends its next byte
            next_byte += 0.5
            for s, (kind, _) in list(socks.items()):
                if kind == "trickle":
                    try:
                        s.send(b"x")
                    except OSError:
                        pass
        _read_or_record_close(sel, socks, closed, answers, 0.05)
    probe.join()
    still_open = _give_up(sel, socks, closed)  # the client gives up: this is when main logs its tracebacks
    time.sleep(2)
    log = server.text()
    return {"closed": closed, "open": still_open, "valid": valid_result[0] if valid_result else (0, float("nan")),
            "answers_408": sum(a.startswith(b"HTTP/1.1 408") for a in answers),
            "tracebacks": log.count("Traceback (most recent call last)")}


def handshake(server: Server, silent: int, partial: int, window: float) -> dict:
    """TLS connections that never finish a handshake: when the server closes them."""
    socks: dict[socket.socket, tuple[str, float]] = {}
    closed: dict[str, list[float]] = {"silent": [], "partial": []}
    sel = selectors.DefaultSelector()
    for i in range(silent + partial):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        kind = "silent" if i < silent else "partial"
        if kind == "partial":
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
        s.setblocking(False)
        socks[s] = (kind, time.monotonic())
        sel.register(s, selectors.EVENT_READ)
    valid_result: list[tuple[int, float]] = []
    probe = threading.Timer(2.0, lambda: valid_result.append(
        post(f"{server.base}/v1/classify", CAPTURES[3].read_bytes(), context=server.context)))
    probe.start()
    start = time.monotonic()
    while time.monotonic() - start < window and socks:
        _read_or_record_close(sel, socks, closed, [], 0.1)
    probe.join()
    still_open = _give_up(sel, socks, closed)
    return {"closed": closed, "open": still_open, "valid": valid_result[0] if valid_result else (0, float("nan"))}


def many_sessions(n: int) -> bytes:
    """A pcap of `n` one-packet UDP sessions (distinct source ports), written with trafficlens."""
    from trafficlens.capture import PcapWriter, build

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.pcap"
        with PcapWriter(path) as writer:
            for i in range(n):
                datagram = build.udp(b"q" * 24, sport=20000 + i % 40000, dport=53, src="10.1.1.1", dst="10.2.2.2")
                writer.write(build.ethernet(build.ipv4(datagram, src="10.1.1.1", dst="10.2.2.2", proto=17)), 1.0 + i / 1000)
        return path.read_bytes()


def unread(server: Server, clients: int, capture: bytes, window: float) -> dict:
    """Uploads whose answers are never read, watched from the server's side for `window` s (the
    clients read nothing, so nothing drains): its connections on the port and its memory."""
    rss = lambda: round(sum(p.memory_info().rss for p in server.processes()) / 2**20)  # noqa: E731
    before = rss()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(capture)}\r\n\r\n").encode()
    socks = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(head + capture)
        socks.append(s)
    start, seen = time.monotonic(), []
    while time.monotonic() - start < window:
        open_now = sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
                       for c in server.proc.net_connections(kind="tcp"))
        seen.append((time.monotonic() - start, open_now, rss()))
        time.sleep(1.0)
    for s in socks:
        s.close()
    dropped = next((t for t, n, _ in seen if n == 0), None)
    return {"open_at_end": seen[-1][1], "all_dropped_at": dropped, "rss_mb": (before, max(m for _, _, m in seen), seen[-1][2])}


def tls_files(directory: Path):
    """(server options, client context): a certificate for 127.0.0.1 from a throwaway CA (`generate.certs`)."""
    import ssl

    from trafficlens.generate.certs import make

    certs = make(str(directory), ("127.0.0.1",))
    return ["--certfile", certs.certfile, "--keyfile", certs.keyfile], ssl.create_default_context(cafile=certs.cafile)


def _read_or_record_close(sel, socks: dict, closed: dict[str, list[float]], answers: list[bytes], timeout: float) -> None:
    """One round of the watch: keep what the server sent; a socket it closed leaves `socks`, its
    time open recorded under its kind."""
    for key, _ in sel.select(timeout=timeout):
        s = key.fileobj
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            answers.append(data)
            continue
        kind, opened = socks.pop(s)
        closed[kind].append(time.monotonic() - opened)
        sel.unregister(s)
        s.close()


def _give_up(sel, socks: dict, closed: dict[str, list[float]]) -> dict[str, int]:
    """Close what the server left open; how many of each kind that was."""
    still_open = {kind: 0 for kind in closed}
    for s, (kind, _) in socks.items():
        still_open[kind] += 1
        sel.unregister(s)
        s.close()
    return still_open


def cap(server: Server, uploads: int) -> dict:
    socks, answers = [], []
    for _ in range(uploads):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        t0 = time.monotonic()
        s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\nxx")
        s.settimeout(0.5)
        try:
            data = s.recv(4096)
            answers.append((data[:12].decode(errors="replace"), time.monotonic() - t0))
        except socket.timeout:
            pass
        socks.append(s)
    for s in socks:
        s.close()
    refused = [seconds for status, seconds in answers if status.startswith("HTTP/1.1 503")]
    return {"refused": len(refused), "max_ms": 1000 * max(refused, default=float("nan"))}


# -- the table ---------------------------------------------------------------------------------
def summary(result: dict | None) -> dict | None:
    """The result for the progress line: close times as count and range, not every one."""
    if result is None or "closed" not in result:
        return result
    closed = {k: f"{len(v)} at {min(v):.2f}-{max(v):.2f} s" if v else "none" for k, v in result["closed"].items()}
    return dict(result, closed=closed)


def fmt_closed(r: dict, kind: str, window: float) -> str:
    times = r["closed"][kind]
    if not times:
        return f"all {r['open'][kind]} open at {window:.0f} s"
    text = f"{len(times)} closed at {min(times):.1f}-{max(times):.1f} s"
    return text + (f", {r['open'][kind]} open at {window:.0f} s" if r["open"][kind] else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="src/ of main's code (see the module docstring)")
    parser.add_argument("--baseline-model", type=Path, default=MODEL,
                        help="the run the baseline serves (a copy of the bundled one for code older than its config)")
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--bomb-mib", type=int, default=1024)
    parser.add_argument("--slow-headers", type=int, default=300)
    parser.add_argument("--trickles", type=int, default=20)
    parser.add_argument("--window", type=float, default=30.0, help="seconds the slow clients are watched")
    parser.add_argument("--unread", type=int, default=8, help="clients that never read their answer")
    parser.add_argument("--handshakes", type=int, default=100, help="stalled TLS handshakes (half silent, half partial)")
    parser.add_argument("--handshake-window", type=float, default=75.0)
    parser.add_argument("--only", default="valid,bomb,slow,cap,unread,handshake")
    args = parser.parse_args()
    here = ROOT / "src"
    only = set(args.only.split(","))
    rows: list[tuple[str, str, str, str]] = []
    data = build_bomb(args.bomb_mib)
    print(f"bomb: {len(data) / 1e6:.2f} MB sent, {args.bomb_mib} MiB inflated", flush=True)

    def both(options_here: list[str], options_main: list[str], fn, *fn_args, context=None):
        with Server(here, *options_here, context=context) as server:
            mine = fn(server, *fn_args)
        theirs = None
        if args.baseline:
            with Server(args.baseline, *options_main, context=context, model=args.baseline_model) as server:
                theirs = fn(server, *fn_args)
        print(fn.__name__, summary(mine), summary(theirs), flush=True)
        return mine, theirs

    if "valid" in only:
        mine, theirs = both([], [], valid, args.concurrent)
        slowest = round(0.99 * (args.concurrent - 1)) == args.concurrent - 1
        for key, label in (("p50", "latency p50, s"), ("p99", "latency p99, s" + (" (the slowest)" if slowest else ""))):
            rows.append((f"{args.concurrent} concurrent valid requests", label, f"{mine[key]:.2f}",
                         f"{theirs[key]:.2f} ({theirs[key] / mine[key]:.2f}x)" if theirs else "-"))
        rows.append((f"{args.concurrent} concurrent valid requests", "answered 200", f"{mine['ok']}/{mine['n']}",
                     f"{theirs['ok']}/{theirs['n']}" if theirs else "-"))
    if "bomb" in only:
        raised = ["--timeout", "2", "--max-capture-mb", "1000000", "--max-packets", "1000000000"]
        mine, theirs = both(raised, ["--timeout", "2"], bomb, data)
        name = f"bomb {len(data) / 1e6:.1f} MB -> {args.bomb_mib} MiB, --timeout 2"
        rows.append((name, "answer, after s", f"{mine['status']}, {mine['seconds']:.1f}",
                     f"{theirs['status']}, {theirs['seconds']:.1f}" if theirs else "-"))
        rows.append((name, "server CPU s after the answer, all its processes", f"{mine['cpu_after']:.2f}",
                     f"{theirs['cpu_after']:.1f} ({theirs['cpu_after'] / max(mine['cpu_after'], 0.01):.0f}x)"
                     if theirs else "-"))
        rows.append((name, "of which a fresh worker's start-up (replacing the killed one)",
                     f"{mine['replacement']:.2f}", "-"))
        rows.append((name, "server busy for s after the answer", f"{mine['busy_for']:.1f}",
                     f"{theirs['busy_for']:.1f}" if theirs else "-"))
        with Server(here) as server:
            limited = bomb(server, data)
        rows.append(("same bomb, default limits", "answer, after s", f"{limited['status']}, {limited['seconds']:.2f}",
                     "-"))
    if "slow" in only:
        mine, theirs = both(["--header-timeout", "5", "--body-timeout", "10"], [], slow, args.slow_headers,
                            args.trickles, args.window)
        name = f"{args.slow_headers} unfinished headers + {args.trickles} trickling uploads"
        rows.append((name, "unfinished headers", fmt_closed(mine, "headers", args.window),
                     fmt_closed(theirs, "headers", args.window) if theirs else "-"))
        rows.append((name, "trickling uploads", fmt_closed(mine, "trickle", args.window)
                     + f" ({mine['answers_408']} with 408)",
                     fmt_closed(theirs, "trickle", args.window) if theirs else "-"))
        rows.append((name, "valid request meanwhile: status, s", "%d, %.2f" % mine["valid"],
                     "%d, %.2f" % theirs["valid"] if theirs else "-"))
        rows.append((name, "tracebacks logged", str(mine["tracebacks"]), str(theirs["tracebacks"]) if theirs else "-"))
    if "cap" in only:
        with Server(here, "--max-uploads", "8") as server:
            result = cap(server, 12)
        rows.append(("12 uploads, --max-uploads 8", "503 answers, slowest ms",
                     f"{result['refused']}, {result['max_ms']:.0f}", "-"))
    if "unread" in only:
        mine, theirs = both(["--write-timeout", "5"], [], unread, args.unread, many_sessions(16_000), args.window)
        name = f"{args.unread} clients leave a 7 MB answer unread"
        def dropped(r: dict) -> str:
            return (f"all closed by {r['all_dropped_at']:.0f} s" if r["all_dropped_at"] is not None
                    else f"{r['open_at_end']} of {args.unread} open at {args.window:.0f} s")

        rows.append((name, "connections, seen from the server", dropped(mine), dropped(theirs) if theirs else "-"))
        rows.append((name, "server RSS MB: before, peak, at the end", " / ".join(map(str, mine["rss_mb"])),
                     " / ".join(map(str, theirs["rss_mb"])) if theirs else "-"))
    if "handshake" in only:
        with tempfile.TemporaryDirectory() as tmp:
            options, context = tls_files(Path(tmp))
            half = args.handshakes // 2
            mine, theirs = both(options, options, handshake, half, args.handshakes - half, args.handshake_window,
                                context=context)
        name = f"TLS: {half} silent + {args.handshakes - half} partial handshakes"
        for kind in ("silent", "partial"):
            rows.append((name, f"{kind} handshakes", fmt_closed(mine, kind, args.handshake_window),
                         fmt_closed(theirs, kind, args.handshake_window) if theirs else "-"))
        rows.append((name, "valid request meanwhile: status, s", "%d, %.2f" % mine["valid"],
                     "%d, %.2f" % theirs["valid"] if theirs else "-"))
    print()
    print("| scenario | measure | this tree | main (main / this tree) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

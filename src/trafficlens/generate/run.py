"""`generate()`: plan the sessions from the seed, build the namespaces, serve, play, capture, label.

    from trafficlens.generate import GenerateConfig, generate
    summary = generate(GenerateConfig(out="lab", classes=("robot-mqtt", "dns"), sessions=20, seed=7))

Sessions are played in rounds; each round is one capture file with classes mixed in time, so
that `--split capture` has files to split on and no file holds one class. Everything the run
starts is stopped in `finally`, and the namespaces go with their processes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass

from trafficlens.errors import ConfigError, TrafficlensError
from trafficlens.generate import capture as cap
from trafficlens.generate import labels as lab
from trafficlens.generate.apps import CLASSES, HOSTS
from trafficlens.generate.topology import Topology

CLIENT_NET = ipaddress.ip_network("10.64.0.0/11")
SERVER_NET = ipaddress.ip_network("10.160.0.0/11")
SERVERS_PER_CLASS = 6
OUTPUT_NAMES = re.compile(r"capture-\d+\.pcap(\.gz)?|labels\.csv|manifest\.json")


@dataclass
class GenerateConfig:
    out: str
    classes: tuple[str, ...] = ("robot-mqtt", "robot-https", "robot-wss", "robot-grpc", "quic", "ssh", "dns")
    sessions: int = 20  # per class
    seed: int = 0
    rtt: tuple[float, float] = (0.010, 0.080)  # seconds, drawn per session
    jitter: tuple[float, float] = (0.0, 0.10)  # standard deviation as a share of the one-way delay
    rate_mbit: tuple[float, float] = (5.0, 100.0)  # per session and direction
    loss: tuple[float, float] = (0.0, 0.002)
    resume_share: float = 0.3  # sessions that resume TLS with an earlier session's ticket (classes that can)
    per_capture: int = 50  # sessions per capture file
    concurrency: int = 24
    spread: float = 0.15  # mean seconds between session starts within a capture
    snaplen: int = 0  # 0 = whole frames
    gzip: bool = False  # compress each capture once it has been checked and labelled
    session_timeout: float = 90.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise ConfigError(f"--classes: unknown {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
        if not self.classes:
            raise ConfigError("--classes: name at least one class")
        if self.sessions < 1:
            raise ConfigError(f"--sessions must be at least 1, got {self.sessions}")
        lo, hi = self.rtt
        if not 0 <= lo <= hi <= 5:
            raise ConfigError(f"--rtt: need 0 <= low <= high <= 5 s, got {lo}-{hi}")
        if self.snaplen and self.snaplen < 96:
            raise ConfigError(f"--snaplen must be 0 (whole frames) or at least 96, got {self.snaplen}")
        if len(self.classes) * self.sessions > 250_000:
            raise ConfigError("too many sessions for the address plan (250000 at most)")


def plan(config: GenerateConfig, classes: tuple[str, ...]) -> tuple[list[dict], dict[str, list[str]]]:
    """Sessions and server addresses, all drawn from the seed (independent of class where it matters)."""
    rng = random.Random(config.seed)
    total = len(classes) * config.sessions
    client_ips = [str(CLIENT_NET[i]) for i in rng.sample(range(1, CLIENT_NET.num_addresses - 1), total)]
    server_idx = rng.sample(range(1, SERVER_NET.num_addresses - 1), SERVERS_PER_CLASS * len(CLASSES))
    servers = {name: [str(SERVER_NET[i]) for i in server_idx[k * SERVERS_PER_CLASS:(k + 1) * SERVERS_PER_CLASS]]
               for k, name in enumerate(CLASSES) if name in classes}
    sessions = []
    for name in classes:
        spec = CLASSES[name]
        for _ in range(config.sessions):
            rtt = rng.uniform(*config.rtt)
            sessions.append({
                "cls": name, "command": rng.choice(spec.commands), "server_ip": rng.choice(servers[name]),
                "server_pool": servers[name], "port": rng.choice(spec.ports), "host": rng.choice(HOSTS),
                "hosts": list(HOSTS), "resume": rng.random() < config.resume_share, "seed": rng.getrandbits(32),
                "impairment": {"delay": rtt / 2, "jitter": rtt / 2 * rng.uniform(*config.jitter),
                               "rate": rng.uniform(*config.rate_mbit) * 1e6, "loss": rng.uniform(*config.loss)},
            })
    rng.shuffle(sessions)  # classes mixed in time
    for i, (session, ip) in enumerate(zip(sessions, client_ips)):
        session["id"] = i
        session["client_ip"] = ip
        session["round"] = i // config.per_capture
    starts: dict[int, float] = {}
    for session in sessions:  # Poisson arrivals within each capture
        starts[session["round"]] = starts.get(session["round"], 0.0) + rng.expovariate(1 / config.spread)
        session["start"] = round(starts[session["round"]], 4)
    # A resuming session returns to the server and name of an earlier session of its class in the
    # same capture, as a client reconnecting does; the client agent starts it once that one is done.
    for session in sessions:
        if not (session["resume"] and CLASSES[session["cls"]].resumes):
            session["resume"] = False
            continue
        earlier = [e for e in sessions if e["round"] == session["round"] and e["cls"] == session["cls"]
                   and e["start"] < session["start"] and not e["resume"]]
        if earlier:
            first = rng.choice(earlier)
            session.update(server_ip=first["server_ip"], host=first["host"], port=first["port"], resume_from=first["id"])
        else:
            session["resume"] = False
    return sessions, servers


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "kernel": platform.release()}
    for dist in ("trafficlens", "paho-mqtt", "hypercorn", "httpx", "h2", "websockets", "grpcio", "aioquic",
                 "asyncssh", "dnspython", "aiosmtpd", "pyftpdlib", "aiortc", "av", "libtorrent", "cryptography",
                 "trustme"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    for prog, args in (("tcpdump", ["--version"]), ("mosquitto", ["-h"]), ("dovecot", ["--version"])):
        path = shutil.which(prog) or shutil.which(prog, path="/usr/sbin")
        if path:
            text = subprocess.run([path, *args], capture_output=True, text=True).stdout.splitlines()
            out[prog] = text[0].strip() if text else "?"
    return out


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise _Interrupted(f"signal {signum}")


def generate(config: GenerateConfig, log=print) -> dict:
    """Run a generation; returns the manifest (also written to OUT/manifest.json)."""
    out = _clear_output(config)
    classes, skipped = _runnable_classes(config)
    from trafficlens.generate.topology import USERNS_ENV

    tool = cap.choose_tool(bool(os.environ.get(USERNS_ENV)))  # fail before building anything
    sessions, servers = plan(config, tuple(classes))
    work = tempfile.mkdtemp(prefix="tlg-work-")
    topo = Topology(server_addresses=[ip for ips in servers.values() for ip in ips],
                    client_addresses=[s["client_ip"] for s in sessions])
    # Children run in their own sessions, so a Ctrl-C reaches only this process, and the
    # `finally` below stops them in order instead of each dying mid-write.
    procs: list[subprocess.Popen] = []
    server_log = None
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.time()
    results: dict[int, dict] = {}
    captures, label_rows = [], []
    try:
        from trafficlens.generate import certs

        paths = certs.make(work, HOSTS)
        topo.up()
        procs.append(_start_wire(topo, sessions, work, config.seed))
        server_log = open(os.path.join(work, "server.log"), "w")
        server, status = _start_servers(topo, classes, servers, paths, work, server_log)
        procs.append(server)
        for name, reason in status["failed"].items():
            skipped[name] = f"server failed: {reason}"
            warnings.warn(f"skipping {name}: server failed: {reason}", stacklevel=2)
        sessions = [s for s in sessions if s["cls"] in set(status["ready"])]
        if not sessions:
            raise TrafficlensError(f"no server started: {status['failed']}")
        for k, r in enumerate(sorted({s["round"] for s in sessions})):
            batch = [s for s in sessions if s["round"] == r]
            capture, rows, round_results = _capture_round(k, batch, out, topo, paths, work, config, tool, procs, log)
            results.update(round_results)
            captures.append(capture)
            label_rows += rows
    except (_Interrupted, KeyboardInterrupt) as exc:
        raise TrafficlensError(f"interrupted ({exc or 'Ctrl-C'}); everything was torn down") from None
    finally:
        _stop(procs)
        if server_log is not None:
            server_log.close()
        topo.down()
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)

    n_labels = lab.write(os.path.join(out, "labels.csv"), label_rows)
    manifest = _manifest(config, classes, skipped, sessions, results, captures, n_labels, time.time() - started)
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    return manifest


def _clear_output(config: GenerateConfig) -> str:
    """The output folder, emptied of an earlier run's files (only those: a README stays)."""
    out = os.path.abspath(config.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"{config.out}: exists and is not a directory")
    ours = [n for n in os.listdir(out) if OUTPUT_NAMES.fullmatch(n)] if os.path.isdir(out) else []
    if ours and not config.overwrite:
        raise ConfigError(f"{config.out}: holds the output of an earlier run ({ours[0]}, ...); pass --overwrite to replace it")
    for name in ours:
        os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    return out


def _runnable_classes(config: GenerateConfig) -> tuple[list[str], dict[str, str]]:
    """The classes whose programs are installed, and why the others are skipped."""
    classes, skipped = [], {}
    for name in config.classes:
        missing = CLASSES[name].missing()
        if missing:
            skipped[name] = f"missing {', '.join(missing)} ({CLASSES[name].install})"
            warnings.warn(f"skipping {name}: {skipped[name]}", stacklevel=2)
        else:
            classes.append(name)
    if not classes:
        raise TrafficlensError(f"no class can run here: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    return classes, skipped


def _capture_round(k: int, batch: list[dict], out: str, topo: Topology, paths, work: str, config: GenerateConfig,
                   tool: str, procs: list, log) -> tuple[dict, list[dict], dict[int, dict]]:
    """One capture file: its sessions' clients run while tcpdump records; (capture entry, label
    rows, results per session)."""
    path = os.path.join(out, f"capture-{k:03d}.pcap")
    dump = cap.Tcpdump(topo.exec_prefix(topo.server_ns), topo.SERVER_IF, path, config.snaplen, tool=tool).start()
    try:
        client = _start_clients(topo, batch, k, paths, work, config)
        procs.append(client)
        # Sessions time out on their own; this bounds a client agent that hangs regardless.
        try:
            client.wait(timeout=max(s["start"] for s in batch) + 2 * config.session_timeout + 30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
        procs.remove(client)
        time.sleep(0.5)  # closing handshakes still on the wire
    finally:
        stats = dump.stop()
    round_results = _results(os.path.join(work, f"result-{k}.json"), batch, client.returncode, log)
    ok = {s["client_ip"]: s for s in batch if round_results[s["id"]]["ok"]}
    rows = lab.flows(path, ok)
    frames = cap.check_frames(path)
    name = _gzip(path) if config.gzip else os.path.basename(path)
    for row in rows:
        row["file"] = name
    log(f"{name}: {len(ok)}/{len(batch)} sessions ok, {stats.captured} packets, {stats.dropped} dropped, "
        f"{frames['ip_bad'] + frames['l4_bad']} bad checksums")
    return ({"file": name, "tool": tool, "sessions": len(batch), "sessions_ok": len(ok), "flows": len(rows),
             **asdict(stats), **frames}, rows, round_results)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the wire, the servers and any client left, newest first, then reap them."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _start_wire(topo: Topology, sessions: list[dict], work: str, seed: int) -> subprocess.Popen:
    """The forwarder in the wire namespace, with every session's impairment keyed by its address."""
    plan_path = os.path.join(work, "wire.json")
    with open(plan_path, "w") as fh:
        json.dump({s["client_ip"]: s["impairment"] for s in sessions}, fh)
    wire = subprocess.Popen([*topo.exec_prefix(topo.wire_ns), sys.executable, "-m", "trafficlens.generate.wire",
                             plan_path, topo.WIRE_CLIENT_IF, topo.WIRE_SERVER_IF, str(seed)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    if wire.stdout.readline().strip() != "ready":
        wire.kill()
        raise TrafficlensError("the wire forwarder did not start")
    return wire


def _start_servers(topo: Topology, classes: list[str], servers: dict, paths, work: str, log_file) -> tuple:
    """The server agent in the server namespace; returns it and its {"ready", "failed"} line."""
    spec = {"classes": {c: {"addresses": servers[c], "ports": list(CLASSES[c].ports)} for c in classes},
            "certfile": paths.certfile, "keyfile": paths.keyfile, "cafile": paths.cafile, "workdir": work}
    spec_path = os.path.join(work, "servers.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    server = subprocess.Popen([*topo.exec_prefix(topo.server_ns), sys.executable, "-m", "trafficlens.generate.agent",
                               "server", spec_path], stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=work,
                              start_new_session=True)
    line = server.stdout.readline()
    if not line:
        server.kill()
        with open(os.path.join(work, "server.log")) as fh:
            raise TrafficlensError(f"the server agent died: {fh.read()[-500:].strip()}")
    return server, json.loads(line)


def _start_clients(topo: Topology, batch: list[dict], k: int, paths, work: str, config: GenerateConfig) -> subprocess.Popen:
    """The client agent of round k in the client namespace; it writes result-k.json."""
    round_path = os.path.join(work, f"round-{k}.json")
    with open(round_path, "w") as fh:
        json.dump({"sessions": batch, "cafile": paths.cafile, "workdir": work, "concurrency": config.concurrency,
                   "timeout": config.session_timeout, "debug": bool(os.environ.get("TRAFFICLENS_GENERATE_DEBUG"))}, fh)
    return subprocess.Popen([*topo.exec_prefix(topo.client_ns), sys.executable, "-m", "trafficlens.generate.agent",
                             "client", round_path, os.path.join(work, f"result-{k}.json")], cwd=work,
                            start_new_session=True)


def _results(path: str, batch: list[dict], returncode: int | None, log) -> dict[int, dict]:
    """Each session's outcome; a round whose agent left no results fails as a whole (unlabelled)."""
    if os.path.exists(path):
        with open(path) as fh:
            return {res["id"]: res for res in json.load(fh)}
    log(f"warning: the client agent of a round ended without results (exit {returncode})")
    return {s["id"]: {"id": s["id"], "ok": False, "error": f"ClientAgentFailed: exit {returncode}"} for s in batch}


def _gzip(path: str) -> str:
    import gzip

    with open(path, "rb") as src, gzip.open(path + ".gz", "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.remove(path)
    return os.path.basename(path) + ".gz"


def _manifest(config, classes, skipped, sessions, results, captures, n_labels, seconds) -> dict:
    counts: dict[str, dict] = {}
    errors: dict[str, dict[str, int]] = {}
    for s in sessions:
        res = results.get(s["id"], {"ok": False, "error": "not run"})
        c = counts.setdefault(s["cls"], {"planned": 0, "ok": 0, "resumed": 0, "commands": {}})
        c["planned"] += 1
        if res["ok"]:
            c["ok"] += 1
            c["resumed"] += bool(res.get("resumed"))
            c["commands"][s["command"]] = c["commands"].get(s["command"], 0) + 1
        else:
            kind = (res.get("error") or "?").split(":")[0]
            errors.setdefault(s["cls"], {})[kind] = errors.setdefault(s["cls"], {}).get(kind, 0) + 1
    return {
        "generator": "trafficlens generate",
        "config": asdict(config),
        "versions": _versions(),
        "classes": classes,
        "skipped": skipped,
        "sessions": counts,
        "errors": errors,
        "labels": n_labels,
        "captures": captures,
        "totals": {k: sum(c[k] for c in captures) for k in ("captured", "dropped", "dropped_by_interface",
                                                            "ip_bad", "l4_bad", "l4_checked")},
        "seconds": round(seconds, 1),
        "link": {"mtu": 1500, "offloads": "tso, gso, gro, sg, rx/tx checksum off",
                 "impairment": "userspace wire (per-session delay, jitter, rate, loss)",
                 "capture_point": "server-side veth", "capture_tool": captures[0]["tool"] if captures else None},
        "randomised": [
            "client address (one per session) and client port (kernel ephemeral)",
            "server address within a per-class pool and server port from ports shared across classes",
            "host name / SNI from one pool shared by every class",
            "round-trip time, jitter, rate and loss per session, independent of class",
            "command per session and its message sizes, counts and timing",
            "order of sessions and their start times: classes mixed within every capture",
            "TLS resumption: a share of QUIC and MQTT/TLS sessions resume with an earlier session's ticket "
            "(sessions.<class>.resumed counts the handshakes that did resume)",
            "absolute time: captures carry real timestamps; never use them as a feature",
        ],
    }

"""The traffic classes: each a real server and a real client from a PyPI or Debian implementation.

A class module has `async def serve(ctx: ServerContext)`, which starts its servers on the
addresses and ports it was given and returns, and `async def run(session: dict, ctx: ClientContext)`,
which plays one session from the client namespace, sending from `session["client_ip"]` so that
every packet of the session can be labelled by that address. `run` may return a dict of facts
about the session (`{"resumed": True}`), which end up in the manifest's counts.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass, field

from trafficlens.generate.apps.robot import COMMANDS as ROBOT_COMMANDS


@dataclass(frozen=True)
class AppClass:
    name: str
    module: str  # module under trafficlens.generate.apps
    transport: str  # "tcp" or "udp": what the client ports are
    ports: tuple[int, ...]  # the server ports it listens on; shared with other classes where real services are
    commands: tuple[str, ...]  # robot commands, or the activities of a non-robot class
    python: tuple[str, ...] = ()  # importable modules it needs
    binaries: tuple[str, ...] = ()  # programs it needs
    install: str = ""  # how to get what it needs
    resumes: bool = False  # its client can resume TLS with a ticket from an earlier session

    def missing(self) -> list[str]:
        lost = [m for m in self.python if importlib.util.find_spec(m) is None]
        lost += [b for b in self.binaries if not (shutil.which(b) or shutil.which(b, path="/usr/sbin"))]
        return lost

    def load(self):
        return importlib.import_module(f"trafficlens.generate.apps.{self.module}")


CLASSES: dict[str, AppClass] = {c.name: c for c in [
    AppClass("robot-mqtt", "mqtt", "tcp", (8883, 443), ROBOT_COMMANDS, ("paho",), ("mosquitto",),
             "apt-get install mosquitto; pip install paho-mqtt", resumes=True),
    AppClass("robot-https", "https", "tcp", (443, 8443), ROBOT_COMMANDS, ("hypercorn", "httpx", "h2"),
             install="pip install hypercorn 'httpx[http2]'"),
    AppClass("robot-wss", "wss", "tcp", (443, 8443), ROBOT_COMMANDS, ("websockets",), install="pip install websockets"),
    AppClass("robot-grpc", "grpc_app", "tcp", (443, 8443), ROBOT_COMMANDS, ("grpc",), install="pip install grpcio"),
    AppClass("web", "web", "tcp", (443, 8443), ("page-load",), ("hypercorn", "httpx", "h2"),
             install="pip install hypercorn 'httpx[http2]'"),
    AppClass("video", "web", "tcp", (443, 8443), ("dash-segments",), ("hypercorn", "httpx", "h2"),
             install="pip install hypercorn 'httpx[http2]'"),
    AppClass("quic", "quic", "udp", (443,), ("page-load", "download"), ("aioquic",), install="pip install aioquic",
             resumes=True),
    AppClass("ssh", "ssh", "tcp", (22, 443), ("interactive", "sftp-get"), ("asyncssh",), install="pip install asyncssh"),
    AppClass("email", "email", "tcp", (587, 25), ("send", "send-attachment"), ("aiosmtpd",),
             install="pip install aiosmtpd"),
    AppClass("ftps", "ftps", "tcp", (21, 2121), ("download", "upload"), ("pyftpdlib", "OpenSSL"),
             install="pip install pyftpdlib pyopenssl"),
    AppClass("dns", "dns_app", "udp", (53,), ("udp-query", "dot-query"), ("dns",), install="pip install dnspython"),
    # Listens for signalling over HTTPS on the web ports; the media goes between ephemeral UDP ports.
    AppClass("webrtc", "webrtc", "tcp", (443, 8443), ("voice-call", "video-call"), ("aiortc", "av", "numpy"),
             install="pip install aiortc"),
    AppClass("p2p", "p2p", "tcp", (6881, 51413, 8443), ("download",), ("libtorrent",),
             install="pip install libtorrent"),
    AppClass("imap", "imap", "tcp", (143, 1143), ("sync", "fetch-attachment", "append-draft"), (), ("dovecot",),
             "apt-get install dovecot-imapd"),
]}

# Names and SNI values drawn for every class alike, so that no host name marks a class.
HOSTS = (
    "api.fleet-ops.example", "edge1.robotics-lab.example", "edge2.robotics-lab.example",
    "gw.control-plane.example", "cdn.service-net.example", "telemetry.plant-7.example",
    "www.northwind.example", "static.northwind.example", "portal.acme-robots.example",
    "sync.acme-robots.example", "eu.api.relay-one.example", "us.api.relay-one.example",
)


@dataclass
class ServerContext:
    certfile: str
    keyfile: str
    cafile: str
    workdir: str
    addresses: list[str]  # this class's server addresses
    ports: list[int]
    hosts: tuple[str, ...] = HOSTS
    cleanup: list = field(default_factory=list)  # callables run at exit (subprocesses to stop)


@dataclass
class ClientContext:
    cafile: str
    workdir: str
    state: dict = field(default_factory=dict)  # per-class state kept across sessions (tickets, locks)

    def ssl_context(self, alpn: list[str] | None = None):
        import ssl

        ctx = ssl.create_default_context(cafile=self.cafile)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

"""Network namespaces joined by veth pairs, with a userspace wire between them.

    client ns  c0 ==veth== wc  [wire ns]  ws ==veth== s0  server ns
                                                      ^ captured here (an observer at the servers)

Every veth end runs at MTU 1500 with TSO, GSO, GRO, scatter-gather and checksum offloads off,
so the kernel builds real 1514-byte frames with filled-in checksums: with offloads on, a capture
shows 64 KB "segments" and checksums left for hardware that never runs. Offloads are switched
off by the legacy ethtool ioctls while the interface is still in our namespace, so no `ethtool`
binary is needed. The wire namespace has no addresses: the forwarder in `wire.py` moves frames
between wc and ws, adding delay, jitter, rate limits and loss per client address.

All names start with `tlg` so that `cleanup()` can find what an interrupted run left behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import secrets
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from trafficlens.errors import TrafficlensError

PREFIX = "tlg"
MTU = 1500
# Legacy ethtool "set" commands: rx/tx checksumming, scatter-gather, TSO, GSO, GRO.
_ETHTOOL_OFF = {"rx": 0x15, "tx": 0x17, "sg": 0x19, "tso": 0x1F, "gso": 0x24, "gro": 0x2C}
_ETHTOOL_GET = {"rx": 0x14, "tx": 0x16, "sg": 0x18, "tso": 0x1E, "gso": 0x23, "gro": 0x2B}
_SIOCETHTOOL = 0x8946


class TopologyError(TrafficlensError):
    """Namespaces or links could not be made: says what is missing."""


def _run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise TopologyError(f"{' '.join(args[:6])}: {proc.stderr.strip() or 'failed'}")
    return proc


def _ethtool(ifname: str, cmd: int, value: int | None = None) -> int:
    """One legacy ethtool ioctl on an interface of the current namespace; returns the value."""
    data = ctypes.create_string_buffer(struct.pack("II", cmd, value or 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(data)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    return struct.unpack_from("II", data.raw)[1]


def offloads(ifname: str) -> dict[str, bool]:
    """Which of rx/tx checksum, sg, tso, gso, gro are on (interface in the current namespace)."""
    return {name: bool(_ethtool(ifname, cmd)) for name, cmd in _ETHTOOL_GET.items()}


def disable_offloads(ifname: str) -> None:
    # Order matters: TSO depends on sg and tx checksumming, so those go last.
    for name in ("gro", "gso", "tso", "sg", "tx", "rx"):
        _ethtool(ifname, _ETHTOOL_OFF[name], 0)
    left = [name for name, on in offloads(ifname).items() if on]
    if left:
        raise TopologyError(f"{ifname}: could not turn off offloads {', '.join(left)}")


USERNS_ENV = "TRAFFICLENS_USERNS"


def unprivileged_argv(argv: list[str]) -> list[str]:
    """The command line that reruns `argv` as root of a new user + network + mount namespace.

    There `ip netns` works once /run is a private tmpfs, and every namespace the run makes
    dies with it. Raises `TopologyError` when user namespaces are not allowed here.
    """
    import shutil

    if not shutil.which("unshare"):
        raise TopologyError("not root, and `unshare` (util-linux) is missing: run with sudo")
    probe = _run("unshare", "-Urnm", "true", check=False)
    if probe.returncode != 0:
        raise TopologyError(
            "generating traffic needs root or user namespaces: run it with sudo "
            f"(unshare -Urnm failed here: {probe.stderr.strip() or 'not allowed'})"
        )
    script = 'mount -t tmpfs tmpfs /run && exec "$0" "$@"'
    return ["unshare", "-Urnm", "--propagation", "private", "sh", "-c", script, *argv]


def check_support() -> None:
    """Raise with what is missing when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise TopologyError("network namespaces need root (or root of a user namespace): run with sudo")
    if _run("ip", "-V", check=False).returncode != 0:
        raise TopologyError("the `ip` command (iproute2) is missing: apt-get install iproute2")


@dataclass
class Topology:
    """Three namespaces and two veth pairs; `up()` builds them, `down()` removes all of it."""

    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    server_addresses: list[str] = field(default_factory=list)
    client_addresses: list[str] = field(default_factory=list)
    network: str = "10.0.0.0/8"
    built: bool = False

    @property
    def client_ns(self) -> str:
        return f"{PREFIX}{self.run_id}c"

    @property
    def wire_ns(self) -> str:
        return f"{PREFIX}{self.run_id}w"

    @property
    def server_ns(self) -> str:
        return f"{PREFIX}{self.run_id}s"

    @property
    def namespaces(self) -> list[str]:
        return [self.client_ns, self.wire_ns, self.server_ns]

    # Interface names inside the namespaces; made in ours under unique names, then moved and renamed.
    CLIENT_IF, WIRE_CLIENT_IF, WIRE_SERVER_IF, SERVER_IF = "c0", "wc", "ws", "s0"

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def up(self) -> "Topology":
        check_support()
        self.built = True  # from here on, down() has something to remove
        for ns in self.namespaces:
            _run("ip", "netns", "add", ns)
        pairs = [
            (self.client_ns, self.CLIENT_IF, self.wire_ns, self.WIRE_CLIENT_IF),
            (self.wire_ns, self.WIRE_SERVER_IF, self.server_ns, self.SERVER_IF),
        ]
        for i, (ns_a, if_a, ns_b, if_b) in enumerate(pairs):
            tmp_a, tmp_b = f"{PREFIX}{self.run_id}{i}a", f"{PREFIX}{self.run_id}{i}b"
            _run("ip", "link", "add", tmp_a, "mtu", str(MTU), "type", "veth", "peer", "name", tmp_b, "mtu", str(MTU))
            for tmp, ns, name in ((tmp_a, ns_a, if_a), (tmp_b, ns_b, if_b)):
                disable_offloads(tmp)
                _run("ip", "link", "set", tmp, "netns", ns)
                _run("ip", "-n", ns, "link", "set", tmp, "name", name)
        for ns in self.namespaces:
            # No IPv6 router solicitations or DAD chatter in the captures, no forwarding in the wire.
            _run(*self.exec_prefix(ns), "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, name in ((self.client_ns, self.CLIENT_IF), (self.wire_ns, self.WIRE_CLIENT_IF),
                         (self.wire_ns, self.WIRE_SERVER_IF), (self.server_ns, self.SERVER_IF)):
            _run("ip", "-n", ns, "link", "set", name, "up")
        self._addresses(self.client_ns, self.CLIENT_IF, self.client_addresses)
        self._addresses(self.server_ns, self.SERVER_IF, self.server_addresses)
        return self

    def _addresses(self, ns: str, ifname: str, addresses: list[str]) -> None:
        # Host addresses plus one on-link route: every address of the other side is one hop away.
        batch = "".join(f"address add {a}/32 dev {ifname}\n" for a in addresses)
        batch += f"route add {self.network} dev {ifname}\n"
        _run("ip", "-n", ns, "-batch", "-", input=batch)

    def down(self) -> None:
        """Kill every process left in the namespaces, then delete them (their veths go with them)."""
        if not self.built:
            return
        for ns in self.namespaces:
            _remove_namespace(ns)
        for i in range(2):
            _run("ip", "link", "del", f"{PREFIX}{self.run_id}{i}a", check=False)
        self.built = False

    def __enter__(self) -> "Topology":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def _remove_namespace(ns: str) -> None:
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(int(pid), sig)
                alive.append(pid)
            except (ProcessLookupError, ValueError):
                pass
        if not alive:
            break
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if os.path.exists(f"/proc/{p}")]
    _run("ip", "netns", "del", ns, check=False)


def leftovers() -> dict[str, list[str]]:
    """Namespaces and links of earlier runs still present (names starting with `tlg`)."""
    namespaces = [line.split()[0] for line in _run("ip", "netns", "list", check=False).stdout.splitlines()
                  if line.startswith(PREFIX)]
    links = []
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            links.append(name)
    return {"namespaces": namespaces, "links": links}


def cleanup() -> dict[str, list[str]]:
    """Remove what interrupted runs left behind (namespaces, links, work folders); returns it."""
    import glob
    import shutil
    import tempfile

    found = leftovers()
    for ns in found["namespaces"]:
        _remove_namespace(ns)
    for link in found["links"]:
        _run("ip", "link", "del", link, check=False)
    found["work"] = glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}-work-*"))
    for path in found["work"]:
        shutil.rmtree(path, ignore_errors=True)
    return found

"""tcpdump (or dumpcap) as a subprocess on the server-side veth, and checks of what it wrote.

In-Python sniffers lost packets on this machine; tcpdump with a large kernel buffer does not,
and it reports its own drop counter when it stops, which `stop()` returns so that a run can
prove it lost nothing. Inside a user namespace tcpdump cannot drop its privileges (setgroups is
denied there), so that path uses dumpcap, which never tries.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from trafficlens.errors import TrafficlensError


class CaptureToolError(TrafficlensError):
    """tcpdump is missing or failed to start."""


@dataclass
class CaptureStats:
    captured: int
    received: int
    dropped: int  # "dropped by kernel": packets the capture lost
    dropped_by_interface: int


def tool_path(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


def choose_tool(in_user_namespace: bool) -> str:
    """tcpdump as root; dumpcap inside a user namespace, where tcpdump cannot drop privileges."""
    if in_user_namespace:
        if tool_path("dumpcap"):
            return "dumpcap"
        raise CaptureToolError("without root the capture needs dumpcap (apt-get install wireshark-common), "
                               "or run with sudo to use tcpdump")
    for name in ("tcpdump", "dumpcap"):
        if tool_path(name):
            return name
    raise CaptureToolError("tcpdump is missing: apt-get install tcpdump")


class Tcpdump:
    """One capture file: `start()` returns once the tool listens, `stop()` returns its counters.

    `tool` is "tcpdump" (default) or "dumpcap"; both write classic pcap and report drops.
    """

    def __init__(self, prefix: list[str], interface: str, path: str, snaplen: int = 0, buffer_mib: int = 32,
                 tool: str = "tcpdump"):
        binary = tool_path(tool)
        if not binary:
            raise CaptureToolError(f"{tool} is missing")
        snap = str(snaplen or 262144)
        if tool == "tcpdump":
            # -Z root: tcpdump would otherwise switch to its own user and could not write here.
            self.cmd = [*prefix, binary, "-i", interface, "-n", "-s", snap, "-B", str(buffer_mib * 1024),
                        "-Z", "root", "-w", path, "ip"]
            self.ready = "listening on"
        else:
            self.cmd = [*prefix, binary, "-i", interface, "-s", snap, "-B", str(buffer_mib), "-P", "-q",
                        "-w", path, "-f", "ip"]
            self.ready = "Capturing on"
        self.tool = tool
        self.path = path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "Tcpdump":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if self.ready in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise CaptureToolError(f"{self.tool} did not start: {line.strip() or 'no output'}")

    def stop(self) -> CaptureStats:
        if self.proc is None:
            return CaptureStats(0, 0, 0, 0)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.proc = None
        err = err or ""

        def count(pattern: str) -> int:
            match = re.search(pattern, err)
            return int(match.group(1)) if match else 0

        if self.tool == "dumpcap":
            return CaptureStats(count(r"Packets captured: (\d+)"), count(r"received/dropped on interface .*?: (\d+)/"),
                                count(r"received/dropped on interface .*?: \d+/(\d+)"), count(r"ps_ifdrop:(\d+)"))
        return CaptureStats(count(r"(\d+) packets? captured"), count(r"(\d+) packets? received by filter"),
                            count(r"(\d+) packets? dropped by kernel"), count(r"(\d+) packets? dropped by interface"))


def check_frames(path: str) -> dict[str, int]:
    """Count frames, the largest frame, and IPv4/TCP/UDP checksums verified and found bad.

    Transport checksums can only be checked on frames captured whole (snap length not cut).
    """
    from trafficlens.capture.build import checksum
    from trafficlens.capture.reader import CaptureReader

    out = {"frames": 0, "max_frame": 0, "ip_checked": 0, "ip_bad": 0, "l4_checked": 0, "l4_bad": 0}
    for ts, data, orig_len, linktype in CaptureReader(path):
        out["frames"] += 1
        out["max_frame"] = max(out["max_frame"], orig_len)
        if linktype != 1 or len(data) < 34 or data[12:14] != b"\x08\x00":
            continue
        ihl = (data[14] & 0x0F) * 4
        out["ip_checked"] += 1
        out["ip_bad"] += checksum(data[14:14 + ihl]) != 0
        total = int.from_bytes(data[16:18], "big")
        proto = data[23]
        if orig_len != len(data) or proto not in (6, 17) or int.from_bytes(data[20:22], "big") & 0x3FFF:
            continue
        segment = data[14 + ihl:14 + total]
        if proto == 17 and segment[6:8] == b"\0\0":
            continue  # UDP checksum not used
        pseudo = data[26:34] + bytes([0, proto]) + len(segment).to_bytes(2, "big")
        out["l4_checked"] += 1
        out["l4_bad"] += checksum(pseudo + segment) != 0
    return out

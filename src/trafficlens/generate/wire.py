"""The wire: a userspace forwarder between two interfaces that adds delay, jitter, rate and loss.

This kernel has no netem, so the path between clients and servers runs through a namespace
where this process moves every Ethernet frame from one veth to the other. Impairments are per
client address (each session has its own), so RTT, rate and loss are drawn per session and are
independent of the traffic class. Frames of one client and direction leave in order: jitter
varies the delay but never reorders, as on a single path.

Run inside the wire namespace: `python -m trafficlens.generate.wire PLAN.json IF_CLIENT IF_SERVER`,
where PLAN.json maps client address -> {"delay": s, "jitter": s, "rate": bit/s, "loss": p}.
Prints "ready" once both sockets are bound; SIGTERM ends it and it prints its counters as JSON.
"""

from __future__ import annotations

import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # do not read back the frames we send (Linux >= 4.20)
_ETH_IPV4 = 0x0800


@dataclass
class Impairment:
    delay: float = 0.0  # one-way, seconds
    jitter: float = 0.0  # standard deviation of the added delay, seconds
    rate: float = 0.0  # bit/s; 0 = unlimited
    loss: float = 0.0  # probability a frame is dropped

    @classmethod
    def from_dict(cls, d: dict) -> "Impairment":
        return cls(**{k: float(d.get(k, 0.0)) for k in ("delay", "jitter", "rate", "loss")})


def _client_address(frame: bytes, from_client: bool) -> bytes | None:
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != _ETH_IPV4:
        return None
    return frame[26:30] if from_client else frame[30:34]


def _socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for opt in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE (root) else the capped size
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            break
        except OSError:
            continue
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def forward(plan: dict[str, dict], if_client: str, if_server: str, seed: int = 0) -> dict[str, int]:
    """Forward frames until SIGTERM/SIGINT; returns counters."""
    impair = {socket.inet_aton(ip): Impairment.from_dict(p) for ip, p in plan.items()}
    rng = random.Random(seed)
    socks = {True: _socket(if_client), False: _socket(if_server)}  # from_client -> socket read
    out = {True: socks[False], False: socks[True]}
    by_fd = {s.fileno(): from_client for from_client, s in socks.items()}
    last_departure: dict[tuple[bytes, bool], float] = {}
    queue: list[tuple[float, int, bool, bytes]] = []
    counts = {"forwarded": 0, "dropped_loss": 0, "send_errors": 0}
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    poll = select.poll()
    for fd in by_fd:
        poll.register(fd, select.POLLIN)
    print("ready", flush=True)
    seq = 0
    none = Impairment()
    while not stop:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, from_client, frame = heapq.heappop(queue)
            try:
                out[from_client].send(frame)
                counts["forwarded"] += 1
            except OSError:
                counts["send_errors"] += 1
        timeout = max(0.0, queue[0][0] - now) if queue else 0.2
        try:
            events = poll.poll(timeout * 1000)
        except InterruptedError:
            continue
        for fd, _ in events:
            from_client = by_fd[fd]
            sock = socks[from_client]
            for _ in range(64):  # drain a burst before looking at the clock again
                try:
                    frame = sock.recv(65536)
                except BlockingIOError:
                    break
                addr = _client_address(frame, from_client)
                p = impair.get(addr, none) if addr else none
                if p.loss and rng.random() < p.loss:
                    counts["dropped_loss"] += 1
                    continue
                now = time.monotonic()
                depart = now + p.delay + (abs(rng.gauss(0.0, p.jitter)) if p.jitter else 0.0)
                key = (addr, from_client)
                prev = last_departure.get(key, 0.0)
                if p.rate:
                    prev += len(frame) * 8 / p.rate
                depart = max(depart, prev)
                last_departure[key] = depart
                seq += 1
                heapq.heappush(queue, (depart, seq, from_client, frame))
    return counts


def main() -> None:
    plan_path, if_client, if_server = sys.argv[1:4]
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    with open(plan_path) as fh:
        plan = json.load(fh)
    counts = forward(plan, if_client, if_server, seed)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()

"""Write the bundled sample captures `sample/capture-N.pcapng` and their per-flow labels.

A small, synthetic, self-made capture (trafficlens' own packet builders and pcapng writer) so
that the README's first command works on a fresh machine with no download. Four "applications"
differ in the shape of their traffic only: sizes, directions, timing and protocol. Payloads are
random bytes behind TLS record headers (as encrypted traffic looks), client addresses and ports
are random, and all TCP classes use server port 443, so neither addresses nor ports give the
class away. Real generated traffic (`trafficlens generate`) replaces this later.

    python examples/make_sample.py            # rewrites examples/sample/

Six capture files, each with every class, so that a split by capture file works on the sample.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from trafficlens.capture import PcapngWriter, build

HERE = Path(__file__).resolve().parent / "sample"
CAPTURES = 6
MSS = 1448
SERVERS = ["172.16.0.10", "172.16.0.11", "172.16.0.12"]


def tls_record(rng: random.Random, size: int) -> bytes:
    return b"\x17\x03\x03" + size.to_bytes(2, "big") + rng.randbytes(size)


def tcp_conversation(rng, t, client, server, sport, exchanges):
    """Frames of a TCP session: handshake, (direction, payload size, gap) exchanges, FIN."""
    seq = {0: rng.getrandbits(32), 1: rng.getrandbits(32)}
    ends = {0: (client, server, sport, 443), 1: (server, client, 443, sport)}

    def frame(direction, payload=b"", flags="PA"):
        src, dst, sp, dp = ends[direction]
        segment = build.tcp(payload, sport=sp, dport=dp, seq=seq[direction] % 2**32,
                            ack=seq[1 - direction] % 2**32, flags=flags, src=src, dst=dst)
        seq[direction] += len(payload) + (1 if "S" in flags or "F" in flags else 0)
        return build.ethernet(build.ipv4(segment, src=src, dst=dst, proto=6, ident=rng.getrandbits(16)))

    frames = [(t, frame(0, flags="S"))]
    t += rng.uniform(0.01, 0.08)
    frames.append((t, frame(1, flags="SA")))
    t += 0.001
    for direction, size, gap in exchanges:
        t += gap
        record = tls_record(rng, size)
        for start in range(0, len(record), MSS):  # one frame per MSS, as on a 1500-byte link
            frames.append((t, frame(direction, record[start : start + MSS])))
            t += 0.0002
    t += 0.01
    frames.append((t, frame(0, flags="FA")))
    frames.append((t + 0.02, frame(1, flags="FA")))
    return frames


def udp_exchange(rng, t, client, server, sport, dport, exchanges):
    frames = []
    for direction, size, gap in exchanges:
        t += gap
        src, dst, sp, dp = (client, server, sport, dport) if direction == 0 else (server, client, dport, sport)
        payload = rng.randbytes(size)
        frames.append((t, build.ethernet(build.ipv4(build.udp(payload, sport=sp, dport=dp, src=src, dst=dst),
                                                      src=src, dst=dst, proto=17, ident=rng.getrandbits(16)))))
    return frames


def robot_command(rng):
    hello = [(0, rng.randint(220, 260), 0.0), (1, rng.randint(90, 130), 0.03)]
    cmds = [(d, rng.randint(40, 90), rng.uniform(0.2, 1.0)) for _ in range(rng.randint(3, 6)) for d in (0, 1)]
    return "tcp", hello + cmds


def video(rng):
    exchanges = [(0, rng.randint(220, 260), 0.0), (1, rng.randint(2500, 3500), 0.03), (0, rng.randint(300, 400), 0.05)]
    exchanges += [(1, rng.randint(1300, 1448), rng.uniform(0.0005, 0.003)) for _ in range(rng.randint(6, 10))]
    return "tcp", exchanges


def web(rng):
    exchanges = [(0, rng.randint(400, 600), 0.0), (1, rng.randint(2000, 3500), 0.04)]
    for _ in range(rng.randint(2, 4)):
        exchanges += [(0, rng.randint(300, 700), rng.uniform(0.05, 0.4)), (1, rng.randint(800, 3000), 0.03)]
    return "tcp", exchanges


def telemetry(rng):
    return "udp", [(0, rng.randint(48, 64), rng.uniform(0.045, 0.055)) for _ in range(rng.randint(10, 16))]


APPS = {"robot-command": robot_command, "video": video, "web": web, "robot-telemetry": telemetry}


def main(sessions_per_app: int = 42, seed: int = 7) -> None:
    rng = random.Random(seed)
    frames: list[list] = [[] for _ in range(CAPTURES)]
    labels = []
    for app, make in APPS.items():
        for i in range(sessions_per_app):
            capture = i % CAPTURES
            client = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            server = rng.choice(SERVERS)
            sport = rng.randint(20000, 65000)
            t = 1_700_000_000 + capture * 3600 + rng.uniform(0, 600)  # classes interleaved in time
            kind, exchanges = make(rng)
            if kind == "tcp":
                session = tcp_conversation(rng, t, client, server, sport, exchanges)
                proto, dport = "TCP", 443
            else:
                dport = 4433
                session = udp_exchange(rng, t, client, server, sport, dport, exchanges)
                proto = "UDP"
            frames[capture] += session
            labels.append({"file": f"capture-{capture + 1}.pcapng", "src_ip": client, "src_port": sport,
                           "dst_ip": server, "dst_port": dport, "protocol": proto, "ts_start": f"{session[0][0]:.6f}",
                           "ts_end": f"{session[-1][0]:.6f}", "label": app})
    HERE.mkdir(exist_ok=True)
    for capture, capture_frames in enumerate(frames):
        capture_frames.sort(key=lambda item: item[0])
        with PcapngWriter(HERE / f"capture-{capture + 1}.pcapng") as writer:
            writer.add_interface(1)
            for ts, frame in capture_frames:
                writer.write(frame, ts)
    with open(HERE / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(labels[0]))
        writer.writeheader()
        writer.writerows(labels)


if __name__ == "__main__":
    main()

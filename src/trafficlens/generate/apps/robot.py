"""What robot commands look like on the wire: message sizes, counts and timing per command.

Every robot class (MQTT, HTTPS, WebSocket, gRPC) plays the same scripts, so the command is a
property of the conversation and not of the protocol: a `move` is a burst of small set-points
with small acknowledgements, a `camera-stream` one request answered by a stream of large frames.
A request says how the robot should answer (reply size, frames), so every server is generic.
"""

from __future__ import annotations

import base64
import json
import os
import random
from dataclasses import dataclass

COMMANDS = ("move", "light", "camera-stream", "status", "arm")


@dataclass
class Step:
    gap: float  # seconds to wait before sending
    request: int  # request size in bytes
    reply: int  # reply size in bytes (0 for a stream)
    frames: int = 0  # camera frames to stream back
    frame_bytes: int = 0
    interval: float = 0.0  # seconds between frames


def script(command: str, rng: random.Random) -> list[Step]:
    """The steps of one session of `command`, drawn from its own distributions."""
    if command == "move":  # joystick set-points at 10-25 Hz, tiny acks
        n, period = rng.randint(12, 40), rng.uniform(0.04, 0.1)
        return [Step(rng.uniform(0.8, 1.2) * period, rng.randint(70, 140), rng.randint(24, 48)) for _ in range(n)]
    if command == "light":  # one to three switches, seconds apart
        return [Step(rng.uniform(0.2, 0.9), rng.randint(48, 90), rng.randint(30, 60)) for _ in range(rng.randint(1, 3))]
    if command == "camera-stream":  # one request, then frames at 8-20 fps
        fps = rng.uniform(8, 20)
        return [Step(0.05, rng.randint(90, 160), 0, frames=rng.randint(10, 30),
                     frame_bytes=rng.randint(4000, 20000), interval=1 / fps)]
    if command == "status":  # telemetry polls with mid-sized answers
        return [Step(rng.uniform(0.15, 0.5), rng.randint(40, 70), rng.randint(300, 1200)) for _ in range(rng.randint(2, 6))]
    if command == "arm":  # joint trajectories: larger requests, slower pace
        return [Step(rng.uniform(0.15, 0.35), rng.randint(180, 420), rng.randint(40, 90)) for _ in range(rng.randint(4, 10))]
    raise ValueError(f"unknown robot command {command!r}")


def filler(n: int) -> str:
    # Random text: TLS does not compress, but a repeated pad would still be an odd payload.
    return base64.b64encode(os.urandom(max(0, n) * 3 // 4 + 3)).decode()[:max(0, n)]


def _sized(body: dict, size: int) -> bytes:
    body["p"] = ""
    raw = json.dumps(body, separators=(",", ":"))
    body["p"] = filler(size - len(raw))
    return json.dumps(body, separators=(",", ":")).encode()


def request(command: str, seq: int, step: Step) -> bytes:
    # Compact keys, as a device protocol would use: the smallest message stays under 40 bytes.
    body = {"c": command, "s": seq, "r": step.reply}
    if step.frames:
        body.update(f=step.frames, b=step.frame_bytes, i=round(step.interval, 4))
    return _sized(body, step.request)


def parse(message: bytes) -> dict:
    return json.loads(message)


def frames(req: dict) -> int:
    return int(req.get("f", 0))


def interval(req: dict) -> float:
    return float(req.get("i", 0.0))


def reply(req: dict, size: int | None = None) -> bytes:
    return _sized({"ok": 1, "s": req["s"]}, int(req["r"] if size is None else size))


def frame(req: dict, index: int) -> bytes:
    head = json.dumps({"s": req["s"], "n": index}).encode() + b"\n"
    return head + os.urandom(max(0, int(req["b"]) - len(head)))

"""VoIP-like WebRTC: aiortc peer connections with DTLS-SRTP media, signalled over HTTPS.

The client POSTs its SDP offer over TLS to the server (443/8443, as a web app's signalling
does) and gets the answer back; then ICE, DTLS and SRTP (Opus audio, plus VP8 video for
`video-call`) flow over UDP between ephemeral ports, both ways, for a few seconds. Both flows
come from the session's client address, so the signalling TCP flow and the media UDP flow are
labelled with the session. ICE gathers host candidates only, on the session's own addresses
(no STUN/TURN: nothing outside is reachable, and other addresses would break the labels).
Media is made in code: a tone with speech-like bursts and a moving test picture. At hang-up
the side still sending for a moment draws a few ICMP port-unreachables (unlabelled: not TCP/UDP).
"""

from __future__ import annotations

import asyncio
import contextvars
import fractions
import json
import random
import ssl
import time

from trafficlens.generate.apps import ClientContext, ServerContext

# The address ICE may gather on, per task: many sessions share one process and namespace.
_HOST = contextvars.ContextVar("webrtc_host", default=None)
_PATCHED = False


def _patch_gathering() -> None:
    """aioice gathers on every address of the namespace; restrict it to the task's own."""
    global _PATCHED
    if _PATCHED:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        host = _HOST.get()
        return [host] if host else original(use_ipv4, use_ipv6)

    aioice.ice.get_host_addresses = host_addresses
    _PATCHED = True


def _config():
    from aiortc import RTCBundlePolicy, RTCConfiguration

    # iceServers=[]: aiortc would otherwise add a public STUN server.
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def _tracks():
    import av
    import numpy as np
    from aiortc import MediaStreamTrack

    class Voice(MediaStreamTrack):
        """48 kHz mono in 20 ms frames: a wavering tone in talk spurts, quiet noise between."""

        kind = "audio"

        def __init__(self, seed: int):
            super().__init__()
            self._rng = np.random.default_rng(seed)
            self._pts = 0
            self._start = None
            self._left = 0  # frames left in this spurt or pause
            self._speaking = False

        async def recv(self):
            if self._start is None:
                self._start = time.monotonic()
            await asyncio.sleep(max(0.0, self._start + self._pts / 48000 - time.monotonic()))
            if self._left <= 0:  # alternate talking and listening, ~0.3-2 s each
                self._left, self._speaking = int(self._rng.integers(15, 100)), self._rng.random() < 0.6
            self._left -= 1
            t = (self._pts + np.arange(960)) / 48000
            if self._speaking:
                pitch = 120 + 60 * np.sin(2 * np.pi * 0.7 * t[0])
                wave = 8000 * np.sin(2 * np.pi * pitch * t) + self._rng.normal(0, 1500, 960)
            else:
                wave = self._rng.normal(0, 60, 960)
            frame = av.AudioFrame.from_ndarray(wave.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, self._pts, fractions.Fraction(1, 48000)
            self._pts += 960
            return frame

    class Camera(MediaStreamTrack):
        """320x240 at 15 fps: a moving gradient with noise, so the encoder has work to do."""

        kind = "video"

        def __init__(self, seed: int):
            super().__init__()
            self._rng = np.random.default_rng(seed)
            self._n = 0
            self._start = None
            y, x = np.mgrid[0:240, 0:320]
            self._base = (x + y).astype(np.uint8)

        async def recv(self):
            if self._start is None:
                self._start = time.monotonic()
            await asyncio.sleep(max(0.0, self._start + self._n / 15 - time.monotonic()))
            luma = self._base + np.uint8(self._n * 3 % 256)
            luma[self._rng.integers(0, 200):, self._rng.integers(0, 280):][:40, :40] = self._rng.integers(0, 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, np.full((120, 320), 128, np.uint8)]), format="yuv420p")
            frame.pts, frame.time_base = self._n * 6000, fractions.Fraction(1, 90000)
            self._n += 1
            return frame

    return Voice, Camera


async def _drain(track, on_end=None) -> None:
    """Consumes what the peer sends, as a player would; ends when the peer hangs up."""
    from aiortc.mediastreams import MediaStreamError

    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass
    if on_end is not None:
        await on_end()


async def serve(ctx: ServerContext) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    _patch_gathering()
    Voice, Camera = _tracks()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ctx.certfile, ctx.keyfile)
    calls: set = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), b"0"))
            offer = json.loads(await reader.readexactly(length))
            _HOST.set(writer.get_extra_info("sockname")[0])  # gather on the address the call came to
            pc = RTCPeerConnection(_config())
            calls.add(pc)

            async def hang_up() -> None:
                calls.discard(pc)
                await pc.close()

            @pc.on("track")
            def on_track(track):
                seed = random.getrandbits(32)
                pc.addTrack(Voice(seed) if track.kind == "audio" else Camera(seed))
                asyncio.ensure_future(_drain(track, hang_up))

            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            asyncio.get_running_loop().call_later(120, lambda: asyncio.ensure_future(hang_up()))  # a lost peer
            body = json.dumps({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, ssl.SSLError):
            pass
        finally:
            writer.close()

    for ip in ctx.addresses:
        for port in ctx.ports:
            server = await asyncio.start_server(answer, ip, port, ssl=tls)
            ctx.cleanup.append(server.close)


async def _signal(session: dict, cafile: str, offer: dict) -> dict:
    tls = ssl.create_default_context(cafile=cafile)
    reader, writer = await asyncio.open_connection(session["server_ip"], session["port"], ssl=tls,
                                                   server_hostname=session["host"],
                                                   local_addr=(session["client_ip"], 0))
    try:
        body = json.dumps(offer).encode()
        writer.write(b"POST /call/offer HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (session["host"].encode(), len(body)) + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"signalling: {head.splitlines()[0]!r}")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        return json.loads(await reader.readexactly(length))
    finally:
        writer.close()


async def run(session: dict, ctx: ClientContext) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    _patch_gathering()
    Voice, Camera = _tracks()
    rng = random.Random(session["seed"])
    _HOST.set(session["client_ip"])
    pc = RTCPeerConnection(_config())
    drains = []
    connected = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        drains.append(asyncio.ensure_future(_drain(track)))

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected":
            connected.set()

    try:
        pc.addTrack(Voice(rng.getrandbits(32)))
        if session["command"] == "video-call":
            pc.addTrack(Camera(rng.getrandbits(32)))
        await pc.setLocalDescription(await pc.createOffer())
        answer = await asyncio.wait_for(
            _signal(session, ctx.cafile, {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}), 30)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(connected.wait(), 30)
        await asyncio.sleep(rng.uniform(2.5, 5.0))  # the call
    finally:
        await pc.close()
        for task in drains:
            task.cancel()

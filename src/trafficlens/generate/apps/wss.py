"""Robot control over WebSocket/TLS: the `websockets` server and client.

One connection per session; each step is a text message answered by one message, a camera
stream is answered by binary frames at the camera's pace.
"""

from __future__ import annotations

import asyncio
import random
import ssl

from trafficlens.generate.apps import ClientContext, ServerContext
from trafficlens.generate.apps import robot


async def _handler(ws) -> None:
    async for message in ws:
        req = robot.parse(message)
        if robot.frames(req):
            for i in range(robot.frames(req)):
                await ws.send(robot.frame(req, i))
                await asyncio.sleep(robot.interval(req))
            await ws.send(robot.reply(req, 32).decode())
        else:
            await ws.send(robot.reply(req).decode())


async def serve(ctx: ServerContext) -> None:
    from websockets.asyncio.server import serve as ws_serve

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ctx.certfile, ctx.keyfile)
    for port in ctx.ports:
        server = await ws_serve(_handler, host=ctx.addresses, port=port, ssl=tls, compression=None,
                                max_size=None)
        ctx.cleanup.append(server.close)


async def run(session: dict, ctx: ClientContext) -> None:
    from websockets.asyncio.client import connect

    rng = random.Random(session["seed"])
    uri = f"wss://{session['host']}:{session['port']}/v1/robots/{rng.randint(1, 999)}/control"
    async with connect(uri, ssl=ctx.ssl_context(), host=session["server_ip"], port=session["port"],
                       server_hostname=session["host"], local_addr=(session["client_ip"], 0),
                       compression=None, max_size=None, open_timeout=30) as ws:
        for seq, step in enumerate(robot.script(session["command"], rng)):
            await asyncio.sleep(step.gap)
            await ws.send(robot.request(session["command"], seq, step).decode())
            for _ in range(step.frames + 1):
                await ws.recv()

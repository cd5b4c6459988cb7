"""Robot control over HTTPS REST: hypercorn (ASGI, HTTP/1.1 and h2) and httpx.

Each step is a POST of the command's JSON; a camera stream is one POST answered with the frames
as a streamed body, written at the camera's pace. A GET returns `?size=` random bytes: the
objects of the web and video classes (`web.py`), served by the same stack.
"""

from __future__ import annotations

import asyncio
import os
import random
from urllib.parse import parse_qs

from trafficlens.generate.apps import ClientContext, ServerContext
from trafficlens.generate.apps import robot


async def _app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":  # web and video classes: an object of the requested size
        size = int(parse_qs(scope["query_string"].decode()).get("size", ["1000"])[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": os.urandom(min(size, 20_000_000))})
        return
    req = robot.parse(body)
    headers = [(b"content-type", b"application/json" if not robot.frames(req) else b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if robot.frames(req):
        for i in range(robot.frames(req)):
            await send({"type": "http.response.body", "body": robot.frame(req, i), "more_body": True})
            await asyncio.sleep(robot.interval(req))
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": robot.reply(req)})


async def serve(ctx: ServerContext) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{ip}:{port}" for ip in ctx.addresses for port in ctx.ports]
    config.certfile, config.keyfile = ctx.certfile, ctx.keyfile
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = config.errorlog = None
    config.keep_alive_timeout = 30
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn_serve(_app, config, shutdown_trigger=stop.wait))
    ctx.cleanup.append(stop.set)
    await asyncio.sleep(0.5)  # time to bind; a failure to bind ends the task
    if task.done():
        task.result()


async def run(session: dict, ctx: ClientContext) -> None:
    import httpx

    rng = random.Random(session["seed"])
    http2 = rng.random() < 0.5
    transport = httpx.AsyncHTTPTransport(local_address=session["client_ip"], http2=http2,
                                         verify=ctx.ssl_context(["h2", "http/1.1"] if http2 else ["http/1.1"]))
    base = f"https://{session['server_ip']}:{session['port']}"
    headers = {"host": session["host"], "content-type": "application/json"}
    robot_id = rng.randint(1, 999)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        for seq, step in enumerate(robot.script(session["command"], rng)):
            await asyncio.sleep(step.gap)
            path = f"/v1/robots/{robot_id}/commands"
            async with client.stream("POST", base + path, content=robot.request(session["command"], seq, step),
                                     headers=headers, extensions={"sni_hostname": session["host"]}) as resp:
                resp.raise_for_status()
                async for _ in resp.aiter_raw():
                    pass

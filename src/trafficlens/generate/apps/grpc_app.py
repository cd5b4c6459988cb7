"""Robot control over gRPC/TLS: grpcio with generic handlers (raw bytes, no generated stubs).

Steps are unary `Command` calls; a camera stream is one server-streaming `Camera` call.
gRPC cannot bind a client to a source address, so a session takes one of the class's server
addresses for itself and points a host route at it with the session's address as the source:
the kernel then sends that session's packets from its own address.
"""

from __future__ import annotations

import asyncio
import random
import subprocess

from trafficlens.generate.apps import ClientContext, ServerContext
from trafficlens.generate.apps import robot

SERVICE = "fleet.v1.Robot"


async def _command(request: bytes, context) -> bytes:
    return robot.reply(robot.parse(request))


async def _camera(request: bytes, context):
    req = robot.parse(request)
    for i in range(robot.frames(req)):
        yield robot.frame(req, i)
        await asyncio.sleep(robot.interval(req))


async def serve(ctx: ServerContext) -> None:
    import grpc

    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "Command": grpc.unary_unary_rpc_method_handler(_command),
        "Camera": grpc.unary_stream_rpc_method_handler(_camera),
    })
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handlers,))
    with open(ctx.keyfile, "rb") as k, open(ctx.certfile, "rb") as c:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    for ip in ctx.addresses:
        for port in ctx.ports:
            server.add_secure_port(f"{ip}:{port}", creds)
    await server.start()
    ctx.cleanup.append(lambda: asyncio.ensure_future(server.stop(0)))  # also keeps the server alive


async def _lease(session: dict, ctx: ClientContext):
    """Wait for a free server address of this class; returns it and its lock."""
    locks = ctx.state.setdefault("grpc_locks", {})
    pool = session["server_pool"]
    while True:
        for ip in [session["server_ip"], *pool]:
            lock = locks.setdefault(ip, asyncio.Lock())
            if not lock.locked():
                await lock.acquire()
                return ip, lock
        await asyncio.sleep(0.05)


def _route(server_ip: str, client_ip: str) -> None:
    subprocess.run(["ip", "route", "replace", f"{server_ip}/32", "dev", "c0", "src", client_ip], check=True,
                   capture_output=True)


async def run(session: dict, ctx: ClientContext) -> None:
    import grpc

    rng = random.Random(session["seed"])
    server_ip, lock = await _lease(session, ctx)
    try:
        await asyncio.to_thread(_route, server_ip, session["client_ip"])
        with open(ctx.cafile, "rb") as fh:
            creds = grpc.ssl_channel_credentials(fh.read())
        options = [("grpc.ssl_target_name_override", session["host"]), ("grpc.default_authority", session["host"]),
                   ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.secure_channel(f"{server_ip}:{session['port']}", creds, options=options) as channel:
            command = channel.unary_unary(f"/{SERVICE}/Command")
            camera = channel.unary_stream(f"/{SERVICE}/Camera")
            for seq, step in enumerate(robot.script(session["command"], rng)):
                await asyncio.sleep(step.gap)
                payload = robot.request(session["command"], seq, step)
                if step.frames:
                    async for _ in camera(payload, timeout=60):
                        pass
                else:
                    await command(payload, timeout=30)
    finally:
        lock.release()

"""Web page loads and DASH-like video over HTTPS: the same hypercorn + httpx stack as robot-https.

Sharing the stack (TLS library, ALPN, HTTP/2 framing) with robot-https means these classes
differ from it only by behaviour. `page-load`: a document, then waves of subresources fetched in
parallel (one h2 connection, or up to six HTTP/1.1 connections). `dash-segments`: a manifest,
then segments of a chosen bitrate at the player's pace.
"""

from __future__ import annotations

import asyncio
import random

from trafficlens.generate.apps import ClientContext
from trafficlens.generate.apps.https import serve  # noqa: F401  (the server of these classes)


async def run(session: dict, ctx: ClientContext) -> None:
    import httpx

    rng = random.Random(session["seed"])
    http2 = rng.random() < 0.6
    transport = httpx.AsyncHTTPTransport(local_address=session["client_ip"], http2=http2,
                                         limits=httpx.Limits(max_connections=6),
                                         verify=ctx.ssl_context(["h2", "http/1.1"] if http2 else ["http/1.1"]))
    base = f"https://{session['server_ip']}:{session['port']}"
    ext = {"sni_hostname": session["host"]}
    headers = {"host": session["host"]}

    async def get(path: str, size: int) -> None:
        resp = await client.get(f"{base}{path}?size={size}", headers=headers, extensions=ext)
        resp.raise_for_status()

    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        if session["command"] == "dash-segments":
            await get("/video/manifest.mpd", rng.randint(1500, 4000))
            kbit = rng.choice([400, 800, 1500, 3000])  # the rendition the player settles on
            period = rng.uniform(0.25, 0.6)  # segment duration, played fast-forward
            for i in range(rng.randint(4, 8)):
                await get(f"/video/seg-{i}.m4s", int(kbit * 1000 / 8 * period * rng.uniform(0.8, 1.2)))
                await asyncio.sleep(period)
        else:
            await get("/index.html", rng.randint(15_000, 80_000))
            for _ in range(rng.randint(1, 3)):
                await asyncio.sleep(rng.uniform(0.02, 0.2))
                await asyncio.gather(*(get(f"/static/{rng.randint(1, 9999)}", rng.randint(500, 60_000))
                                       for _ in range(rng.randint(3, 10))))

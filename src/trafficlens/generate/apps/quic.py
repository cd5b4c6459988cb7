"""HTTP/3 over QUIC: aioquic's server and client with its H3 layer.

`page-load` fetches a page and a handful of subresources over concurrent streams; `download`
fetches one large object. Sessions the plan marks `resume` present the ticket of the earlier
session they return to (`resume_from`), the TLS 1.3 resumption a browser does.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from urllib.parse import parse_qs, urlparse

from trafficlens.generate.apps import ClientContext, ServerContext

ALPN = ["h3"]


def _protocols():
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.h3.connection import H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived

    class Server(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._http = H3Connection(self._quic)

        def quic_event_received(self, event) -> None:
            for ev in self._http.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    path = dict(ev.headers).get(b":path", b"/").decode()
                    size = int(parse_qs(urlparse(path).query).get("size", ["1000"])[0])
                    self._http.send_headers(ev.stream_id, [(b":status", b"200"),
                                                           (b"content-type", b"application/octet-stream")])
                    self._http.send_data(ev.stream_id, os.urandom(size), end_stream=True)
                    self.transmit()

    class Client(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._http = H3Connection(self._quic)
            self._waiting: dict[int, asyncio.Future] = {}

        async def get(self, authority: str, path: str) -> int:
            stream_id = self._quic.get_next_available_stream_id()
            self._http.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                                (b":authority", authority.encode()), (b":path", path.encode())],
                                    end_stream=True)
            fut = asyncio.get_running_loop().create_future()
            self._waiting[stream_id] = fut
            self.transmit()
            return await fut

        def quic_event_received(self, event) -> None:
            for ev in self._http.handle_event(event):
                if isinstance(ev, (DataReceived, HeadersReceived)) and ev.stream_ended:
                    fut = self._waiting.pop(ev.stream_id, None)
                    if fut and not fut.done():
                        fut.set_result(ev.stream_id)

    return Server, Client


async def serve(ctx: ServerContext) -> None:
    from aioquic.asyncio import serve as quic_serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.tls import SessionTicket

    Server, _ = _protocols()
    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    config.load_cert_chain(ctx.certfile, ctx.keyfile)
    tickets: dict[bytes, SessionTicket] = {}  # lets clients resume
    for ip in ctx.addresses:
        for port in ctx.ports:
            server = await quic_serve(ip, port, configuration=config, create_protocol=Server,
                                      session_ticket_fetcher=tickets.pop, session_ticket_handler=
                                      lambda t: tickets.__setitem__(t.ticket, t))
            ctx.cleanup.append(server.close)


async def run(session: dict, ctx: ClientContext) -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    _, Client = _protocols()
    rng = random.Random(session["seed"])
    tickets = ctx.state.setdefault("quic_tickets", {})
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, server_name=session["host"])
    config.load_verify_locations(ctx.cafile)
    if session.get("resume") and session.get("resume_from") in tickets:
        config.session_ticket = tickets[session["resume_from"]]
    connection = QuicConnection(configuration=config,
                                session_ticket_handler=lambda t: tickets.__setitem__(session["id"], t))
    loop = asyncio.get_running_loop()
    # aioquic's connect() binds to [::]; a session must send from its own address.
    transport, protocol = await loop.create_datagram_endpoint(lambda: Client(connection), local_addr=(session["client_ip"], 0),
                                                              family=socket.AF_INET)
    try:
        protocol.connect((session["server_ip"], session["port"]))
        await asyncio.wait_for(protocol.wait_connected(), 30)
        if session["command"] == "download":
            await asyncio.wait_for(protocol.get(session["host"], f"/files/{rng.randint(1, 9999)}.bin?size={rng.randint(200_000, 1_500_000)}"), 60)
        else:
            await protocol.get(session["host"], f"/index.html?size={rng.randint(8_000, 60_000)}")
            for _ in range(rng.randint(1, 3)):  # waves of subresources fetched in parallel
                await asyncio.sleep(rng.uniform(0.02, 0.2))
                n = rng.randint(2, 8)
                await asyncio.wait_for(asyncio.gather(*(protocol.get(session["host"], f"/assets/{rng.randint(1, 9999)}?size={rng.randint(500, 40_000)}")
                                                        for _ in range(n))), 60)
        await asyncio.sleep(0.05)
        resumed = connection.tls.session_resumed
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()
    return {"resumed": resumed}

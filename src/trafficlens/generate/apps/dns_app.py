"""DNS over UDP and DNS over TLS (port 853): dnspython messages on both sides.

The server answers A and AAAA queries for the shared host pool and names under it, NXDOMAIN for
the rest, like a small authoritative server. `udp-query` sends a burst of lookups from one
socket; `dot-query` sends them over one TLS connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
import struct

from trafficlens.generate.apps import ClientContext, ServerContext

DOT_PORT = 853
NAMES = ("", "www.", "img.", "api.", "mail.", "login.", "cdn.")


def _answer(wire: bytes, hosts: tuple[str, ...]) -> bytes:
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    q = query.question[0]
    name = q.name.to_text().rstrip(".")
    if any(name == h or name.endswith("." + h) for h in hosts) and q.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        digest = hashlib.sha256(name.encode()).digest()
        count = 1 + digest[0] % 3
        if q.rdtype == dns.rdatatype.A:
            values = [".".join(str(b) for b in (198, 51, 100, digest[i + 1])) for i in range(count)]
        else:
            values = [f"2001:db8::{digest[i + 1]:x}" for i in range(count)]
        response.answer.append(dns.rrset.from_text(q.name, 300, "IN", q.rdtype, *values))
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, hosts):
        self.hosts = hosts

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            self.transport.sendto(_answer(data, self.hosts), addr)
        except Exception:  # a malformed query gets no answer, as from a real server
            pass


async def serve(ctx: ServerContext) -> None:
    loop = asyncio.get_running_loop()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ctx.certfile, ctx.keyfile)

    async def dot(reader, writer):
        try:
            while True:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                answer = _answer(await reader.readexactly(n), ctx.hosts)
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    for ip in ctx.addresses:
        for port in ctx.ports:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(ctx.hosts), local_addr=(ip, port))
            ctx.cleanup.append(transport.close)
        server = await asyncio.start_server(dot, ip, DOT_PORT, ssl=tls)
        ctx.cleanup.append(server.close)


async def run(session: dict, ctx: ClientContext) -> None:
    import dns.asyncbackend
    import dns.asyncquery
    import dns.message

    rng = random.Random(session["seed"])
    names = [rng.choice(NAMES) + rng.choice(session["hosts"]) for _ in range(rng.randint(2, 8))]
    names += [f"{rng.getrandbits(32):x}.unknown.example" for _ in range(rng.randint(0, 2))]
    ip, src = session["server_ip"], session["client_ip"]
    backend = dns.asyncbackend.get_default_backend()
    # One socket per session, as a stub resolver keeps: one UDP flow, or one TLS connection.
    if session["command"] == "dot-query":
        sock = await backend.make_socket(socket.AF_INET, socket.SOCK_STREAM, 0, (src, 0), (ip, DOT_PORT), timeout=15,
                                         ssl_context=ctx.ssl_context(["dot"]), server_hostname=session["host"])
    else:
        sock = await backend.make_socket(socket.AF_INET, socket.SOCK_DGRAM, 0, (src, 0))
    async with sock:
        for name in names:
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            for rdtype in ("A", "AAAA") if rng.random() < 0.5 else ("A",):
                q = dns.message.make_query(name, rdtype)
                if session["command"] == "dot-query":
                    await dns.asyncquery.tls(q, ip, timeout=15, port=DOT_PORT, sock=sock)
                else:
                    await _udp_with_retries(q, ip, session["port"], sock)


async def _udp_with_retries(q, ip: str, port: int, sock, tries: int = 4) -> None:
    """A lost datagram is asked again, as stub resolvers do (the wire drops some on purpose)."""
    import dns.asyncquery
    import dns.exception

    for attempt in range(tries):
        try:
            await dns.asyncquery.udp(q, ip, timeout=2.0, port=port, sock=sock, ignore_unexpected=True)
            return
        except dns.exception.Timeout:
            if attempt == tries - 1:
                raise

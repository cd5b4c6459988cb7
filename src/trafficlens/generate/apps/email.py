"""Mail submission with STARTTLS: aiosmtpd's server and Python's smtplib client.

The conversation starts in clear text (EHLO, STARTTLS) like real submission on port 587, then
the envelope and message travel under TLS. `send` mails a text message; `send-attachment`
adds a base64 attachment, as a mail client does.
"""

from __future__ import annotations

import asyncio
import os
import random
import smtplib
import socket
import ssl
from email.message import EmailMessage

from trafficlens.generate.apps import ClientContext, ServerContext
from trafficlens.generate.apps.robot import filler

WORDS = ("report", "status", "meeting", "invoice", "schedule", "update", "draft", "review", "plan", "notes")


class _Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 Message accepted for delivery"


async def serve(ctx: ServerContext) -> None:
    from aiosmtpd.smtp import SMTP

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ctx.certfile, ctx.keyfile)
    loop = asyncio.get_running_loop()
    for ip in ctx.addresses:
        for port in ctx.ports:
            server = await loop.create_server(
                lambda: SMTP(_Sink(), hostname=random.choice(ctx.hosts), tls_context=tls, require_starttls=True,
                             auth_require_tls=True), ip, port)
            ctx.cleanup.append(server.close)


class _SMTP(smtplib.SMTP):
    """Connects to a fixed address but names the host, so STARTTLS sends SNI and checks the name."""

    def __init__(self, address: str, **kwargs):
        self._address = address
        super().__init__(**kwargs)

    def _get_socket(self, host, port, timeout):
        return socket.create_connection((self._address, port), timeout, self.source_address)


def _session(session: dict, cafile: str) -> None:
    rng = random.Random(session["seed"])
    msg = EmailMessage()
    msg["From"] = f"{rng.choice(['ops', 'robot', 'alice', 'bob'])}@{rng.choice(session['hosts'])}"
    msg["To"] = f"{rng.choice(['team', 'carol', 'dave'])}@{rng.choice(session['hosts'])}"
    msg["Subject"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    msg.set_content("\n".join(filler(rng.randint(40, 76)) for _ in range(rng.randint(5, 200))))
    if session["command"] == "send-attachment":
        msg.add_attachment(os.urandom(rng.randint(20_000, 400_000)), maintype="application", subtype="octet-stream",
                           filename=f"{rng.choice(WORDS)}.bin")
    client = _SMTP(session["server_ip"], timeout=30, source_address=(session["client_ip"], 0),
                   local_hostname=f"ws-{rng.getrandbits(24):06x}.lan")
    try:
        client.connect(session["host"], session["port"])
        client._host = session["host"]  # what STARTTLS names in SNI and checks the certificate against
        client.ehlo()
        client.starttls(context=ssl.create_default_context(cafile=cafile))
        client.ehlo()
        client.send_message(msg)
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            client.close()


async def run(session: dict, ctx: ClientContext) -> None:
    await asyncio.to_thread(_session, session, ctx.cafile)



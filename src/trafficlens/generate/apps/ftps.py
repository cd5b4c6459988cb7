"""FTP over explicit TLS (AUTH TLS, PROT P): pyftpdlib's TLS server and Python's ftplib client.

Control and passive data connections are both encrypted; each transfer opens its own data
connection, as FTP does. `download` fetches files, `upload` stores them.
"""

from __future__ import annotations

import asyncio
import ftplib
import io
import os
import random
import ssl
import threading

from trafficlens.generate.apps import ClientContext, ServerContext


async def serve(ctx: ServerContext) -> None:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import TLS_FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

    root = os.path.join(ctx.workdir, "ftp")
    os.makedirs(os.path.join(root, "incoming"), exist_ok=True)
    for i in range(8):
        with open(os.path.join(root, f"firmware-{i}.bin"), "wb") as fh:
            fh.write(os.urandom(random.randint(20_000, 500_000)))
    authorizer = DummyAuthorizer()
    for user in ("robot", "ops", "deploy"):
        authorizer.add_user(user, "lab", root, perm="elradfmw")

    class Handler(TLS_FTPHandler):
        pass

    Handler.authorizer = authorizer
    Handler.certfile, Handler.keyfile = ctx.certfile, ctx.keyfile
    Handler.tls_control_required = Handler.tls_data_required = True
    Handler.passive_ports = range(50000, 50400)
    Handler.banner = "FTP server ready."
    Handler.log_prefix = ""
    import logging

    logging.getLogger("pyftpdlib").setLevel(logging.ERROR)
    for ip in ctx.addresses:
        for port in ctx.ports:
            server = FTPServer((ip, port), Handler, ioloop=IOLoop())  # one loop per thread, not the shared one
            threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2, "handle_exit": False},
                             daemon=True).start()
            ctx.cleanup.append(server.close_all)


def _session(session: dict, cafile: str) -> None:
    rng = random.Random(session["seed"])
    ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=cafile), timeout=30,
                         source_address=(session["client_ip"], 0))
    ftp.connect(session["server_ip"], session["port"])
    ftp.host = session["host"]  # names the server in SNI and in the certificate check
    ftp.login(rng.choice(["robot", "ops", "deploy"]), "lab")  # AUTH TLS first (FTP_TLS.login)
    ftp.prot_p()
    try:
        names = [n for n in ftp.nlst() if n.endswith(".bin")]
        if session["command"] == "upload":
            for _ in range(rng.randint(1, 3)):
                ftp.storbinary(f"STOR incoming/{rng.getrandbits(32):08x}.log", io.BytesIO(os.urandom(rng.randint(10_000, 300_000))))
        else:
            for name in rng.sample(names, rng.randint(1, 3)):
                ftp.retrbinary(f"RETR {name}", lambda block: None)
    finally:
        try:
            ftp.quit()
        except (ftplib.Error, OSError):
            ftp.close()


async def run(session: dict, ctx: ClientContext) -> None:
    await asyncio.to_thread(_session, session, ctx.cafile)

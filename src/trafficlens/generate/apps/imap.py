"""Mail access with STARTTLS: the dovecot IMAP server and Python's imaplib client.

Dovecot runs from a config of its own in a private folder (its own base_dir, so it neither
meets a system dovecot nor another run), listening on the class's addresses; plaintext login
is refused until STARTTLS, as on a real port 143. Mailboxes are seeded at start with messages
of varied sizes, some carrying attachments. `sync` lists and reads new mail as a mail client
does on opening, `fetch-attachment` downloads a large message, `append-draft` uploads one.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import pwd
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from email.message import EmailMessage

from trafficlens.generate.apps import ClientContext, ServerContext
from trafficlens.generate.apps.email import WORDS
from trafficlens.generate.apps.robot import filler

USERS = {"alice": "fjord-lantern-42", "bob": "cobalt-meadow-17", "ops": "quartz-harbor-88", "carol": "amber-tundra-05"}


def _dovecot() -> str:
    return shutil.which("dovecot") or "/usr/sbin/dovecot"


def _message(rng: random.Random, hosts, big: bool) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{rng.choice(list(USERS))}@{rng.choice(hosts)}"
    msg["To"] = f"{rng.choice(list(USERS))}@{rng.choice(hosts)}"
    msg["Subject"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    msg.set_content("\n".join(filler(rng.randint(40, 76)) for _ in range(rng.randint(3, 150))))
    if big:
        msg.add_attachment(os.urandom(rng.randint(100_000, 500_000)), maintype="application",
                           subtype="octet-stream", filename=f"{rng.choice(WORDS)}.bin")
    return msg.as_bytes()


def _seed(mail: str, hosts, uid: int, gid: int) -> None:
    """Each user's Maildir with 15-40 messages, about one in five with an attachment."""
    rng = random.Random()
    for user in USERS:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(mail, user, "Maildir", sub), exist_ok=True)
        for i in range(rng.randint(15, 40)):
            name = f"{int(time.time()) - rng.randint(0, 9_000_000)}.M{i}P{os.getpid()}.seed:2,{'S' if rng.random() < 0.7 else ''}"
            with open(os.path.join(mail, user, "Maildir", "cur", name), "wb") as fh:
                fh.write(_message(rng, hosts, rng.random() < 0.2))
    for root, dirs, files in os.walk(mail):
        for name in [root, *(os.path.join(root, f) for f in files)]:
            os.chown(name, uid, gid)


async def serve(ctx: ServerContext) -> None:
    mail_user = pwd.getpwnam("mail")
    home = tempfile.mkdtemp(prefix="tlg-imap-")  # outside the run's 0700 workdir: mail/dovenull users enter it
    os.chmod(home, 0o755)
    ctx.cleanup.append(lambda: shutil.rmtree(home, ignore_errors=True))
    mail = os.path.join(home, "mail")
    await asyncio.to_thread(_seed, mail, ctx.hosts, mail_user.pw_uid, mail_user.pw_gid)
    with open(os.path.join(home, "users"), "w") as fh:
        fh.writelines(f"{u}:{{PLAIN}}{p}\n" for u, p in USERS.items())
    listeners = "\n".join(f"  inet_listener imap{i} {{\n    port = {port}\n  }}" for i, port in enumerate(ctx.ports))
    dh = "ssl_dh = </usr/share/dovecot/dh.pem" if os.path.exists("/usr/share/dovecot/dh.pem") else ""
    conf = f"""
base_dir = {home}/run
state_dir = {home}/state
instance_name = {os.path.basename(home)}
log_path = {home}/dovecot.log
protocols = imap
listen = {", ".join(ctx.addresses)}
ssl = required
ssl_cert = <{ctx.certfile}
ssl_key = <{ctx.keyfile}
ssl_min_protocol = TLSv1.2
{dh}
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = {mail_user.pw_uid}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {home}/users
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail}/%u
}}
service imap-login {{
{listeners}
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = 256
}}
"""
    path = os.path.join(home, "dovecot.conf")
    with open(path, "w") as fh:
        fh.write(conf)
    proc = subprocess.Popen([_dovecot(), "-F", "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()

    ctx.cleanup.insert(0, stop)  # before its folder goes
    for _ in range(100):  # until it listens
        try:
            socket.create_connection((ctx.addresses[0], ctx.ports[0]), 1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"dovecot exited: {proc.stderr.read().decode(errors='replace')[-300:]}")
            await asyncio.sleep(0.1)
    raise RuntimeError("dovecot did not listen within 10 s")


class _IMAP(imaplib.IMAP4):
    """Connects from the session's address to a fixed one, but names the host for SNI and the certificate."""

    def __init__(self, address: str, source: str, host: str, port: int, timeout: float):
        self._address, self._source = address, source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self._address, self.port), timeout, (self._source, 0))


def _session(session: dict, cafile: str) -> None:
    rng = random.Random(session["seed"])
    user = rng.choice(list(USERS))
    client = _IMAP(session["server_ip"], session["client_ip"], session["host"], session["port"], 30)
    try:
        client.starttls(ssl.create_default_context(cafile=cafile))
        client.login(user, USERS[user])
        client.list()
        client.select("INBOX", readonly=session["command"] != "sync")
        _, data = client.search(None, "ALL")
        ids = data[0].split()
        if session["command"] == "sync":
            recent = ids[-rng.randint(5, 20):]
            client.fetch(b",".join(recent).decode(), "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])")
            for num in rng.sample(recent, min(len(recent), rng.randint(1, 4))):
                time.sleep(rng.uniform(0.1, 0.8))  # the reader opens a message
                client.fetch(num.decode(), "(BODY[TEXT])")
        elif session["command"] == "fetch-attachment":
            _, large = client.search(None, "LARGER", "100000")
            client.fetch(rng.choice(large[0].split() or ids).decode(), "(BODY.PEEK[])")
        else:
            draft = _message(rng, session["hosts"], rng.random() < 0.3)
            client.append("INBOX", r"(\Draft \Seen)", None, draft)
        client.logout()
    except BaseException:
        client.shutdown()
        raise


async def run(session: dict, ctx: ClientContext) -> None:
    await asyncio.to_thread(_session, session, ctx.cafile)

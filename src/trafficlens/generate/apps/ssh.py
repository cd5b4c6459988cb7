"""SSH: asyncssh server and client. `interactive` types shell commands key by key into a pty
(each key echoed by the server, as a shell does); `sftp-get` downloads files over SFTP.

The server's shell runs a few harmless real commands and returns their real output.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess

from trafficlens.generate.apps import ClientContext, ServerContext

COMMANDS = ["ls -la", "uptime", "uname -a", "df -h", "cat /etc/os-release", "ps aux", "free -m", "date",
            "id", "ls /usr/bin", "env"]


async def _shell(process) -> None:
    line = ""
    process.stdout.write("$ ")
    try:
        while True:
            ch = await process.stdin.read(1)
            if not ch:
                break
            if ch in "\r\n":
                process.stdout.write("\r\n")
                cmd = line.strip()
                line = ""
                if cmd == "exit":
                    break
                if cmd in COMMANDS:
                    out = await asyncio.to_thread(subprocess.run, cmd, shell=True, capture_output=True, text=True)
                    process.stdout.write(out.stdout.replace("\n", "\r\n")[:20000])
                process.stdout.write("$ ")
            else:
                line += ch
                process.stdout.write(ch)  # echo
    finally:
        process.exit(0)


async def serve(ctx: ServerContext) -> None:
    import asyncssh

    files = os.path.join(ctx.workdir, "sftp")
    os.makedirs(files, exist_ok=True)
    for i in range(6):
        with open(os.path.join(files, f"log-{i}.bin"), "wb") as fh:
            fh.write(os.urandom(random.randint(30_000, 600_000)))

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username):
            return True

        def password_auth_supported(self):
            return True

        def validate_password(self, username, password):
            return True

    key = asyncssh.generate_private_key("ssh-ed25519")
    for ip in ctx.addresses:
        for port in ctx.ports:
            server = await asyncssh.create_server(
                Server, ip, port, server_host_keys=[key], process_factory=_shell,
                sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=files.encode()), allow_scp=True)
            ctx.cleanup.append(server.close)


async def run(session: dict, ctx: ClientContext) -> None:
    import asyncssh

    rng = random.Random(session["seed"])
    async with asyncssh.connect(session["server_ip"], session["port"], local_addr=(session["client_ip"], 0),
                                username=rng.choice(["robot", "ops", "admin", "deploy"]), password="lab",
                                known_hosts=None, connect_timeout=30) as conn:
        if session["command"] == "sftp-get":
            async with conn.start_sftp_client() as sftp:
                names = sorted(await sftp.listdir("."))
                for name in rng.sample([n for n in names if n.endswith(".bin")], rng.randint(1, 2)):
                    async with sftp.open(name, "rb") as fh:
                        while await fh.read(32768):
                            pass
            return
        process = await conn.create_process(term_type="xterm", term_size=(120, 40))
        reader = asyncio.create_task(_drain(process))
        for cmd in rng.sample(COMMANDS, rng.randint(2, 5)) + ["exit"]:
            for ch in cmd + "\r":
                process.stdin.write(ch)
                await asyncio.sleep(rng.uniform(0.04, 0.22))  # typing speed
            await asyncio.sleep(rng.uniform(0.2, 0.8))  # reading the output
        await asyncio.wait_for(process.wait_closed(), 30)
        await reader


async def _drain(process) -> None:
    while await process.stdout.read(4096):
        pass

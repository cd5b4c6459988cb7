"""Robot control over MQTT/TLS: the mosquitto broker and paho-mqtt clients.

The controller (client namespace) publishes commands to its robot's topic over TLS; a robot
agent beside the broker answers on a reply topic (over loopback, so only the controller's TLS
connection crosses the captured link). A camera stream is published frame by frame.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import subprocess
import threading
import time

from trafficlens.generate.apps import ClientContext, ServerContext
from trafficlens.generate.apps import robot

LOCAL_PORT = 1883  # loopback listener for the robot agent


def _mosquitto() -> str:
    import shutil

    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


async def serve(ctx: ServerContext) -> None:
    import paho.mqtt.client as mqtt

    conf = os.path.join(ctx.workdir, "mosquitto.conf")
    # `user root`: otherwise mosquitto drops to its own user and cannot read this run's key.
    lines = ["per_listener_settings false", "allow_anonymous true", "persistence false", "user root",
             "log_dest stderr", "log_type error",
             "max_inflight_messages 0", "max_queued_messages 10000", f"listener {LOCAL_PORT} 127.0.0.1"]
    for ip in ctx.addresses:
        for port in ctx.ports:
            lines += [f"listener {port} {ip}", f"cafile {ctx.cafile}", f"certfile {ctx.certfile}",
                      f"keyfile {ctx.keyfile}"]
    with open(conf, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    proc = subprocess.Popen([_mosquitto(), "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx.cleanup.append(proc.terminate)

    # The robot agent: answers every command on the robot's reply topic.
    agent = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="robot-agent")
    work: queue.Queue = queue.Queue()

    def on_message(client, userdata, msg):
        work.put((msg.topic.rsplit("/", 1)[0] + "/reply", robot.parse(msg.payload)))

    def answer(topic: str, req: dict) -> None:
        if robot.frames(req):
            for i in range(robot.frames(req)):
                agent.publish(topic, robot.frame(req, i), qos=0)
                time.sleep(robot.interval(req))
            agent.publish(topic, robot.reply(req, 32), qos=0)
        else:
            agent.publish(topic, robot.reply(req), qos=0)

    def dispatcher():
        while True:
            topic, req = work.get()
            threading.Thread(target=answer, args=(topic, req), daemon=True).start()

    agent.on_message = on_message
    for _ in range(100):  # until mosquitto listens
        try:
            agent.connect("127.0.0.1", LOCAL_PORT)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {proc.stderr.read().decode(errors='replace')[-300:]}")
            await asyncio.sleep(0.1)
    agent.subscribe("fleet/+/cmd", qos=0)
    agent.loop_start()
    threading.Thread(target=dispatcher, daemon=True).start()
    ctx.cleanup.append(agent.loop_stop)


# TLS sessions of finished sessions by session id, and one context per CA: Python resumes a
# TLS session only through the context that made it. Both live as long as a round's client agent.
_TLS_SESSIONS: dict[int, object] = {}
_CONTEXTS: dict[str, object] = {}


class _Client:
    """A paho client that connects to a fixed address but names the host in SNI and checks it,
    and that can resume an earlier TLS session."""

    def __new__(cls, address: str, resume=None, **kwargs):
        import paho.mqtt.client as mqtt

        class Client(mqtt.Client):
            def _create_socket_connection(self):
                import socket

                return socket.create_connection((address, self._port), timeout=self._connect_timeout,
                                                source_address=(self._bind_address, 0))

            def _ssl_wrap_socket(self, tcp_sock):
                # paho's own, less its fallbacks, plus the session to resume.
                sock = self._ssl_context.wrap_socket(tcp_sock, server_hostname=self._host,
                                                     do_handshake_on_connect=False, session=resume)
                sock.settimeout(self._connect_timeout)
                sock.do_handshake()
                self.tls_sock = sock
                return sock

        return Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)


def _session(session: dict, cafile: str) -> dict:
    import ssl

    rng = random.Random(session["seed"])
    robot_id = f"r{rng.randint(1, 99999)}"
    context = _CONTEXTS.setdefault(cafile, ssl.create_default_context(cafile=cafile))
    resume = _TLS_SESSIONS.get(session.get("resume_from")) if session.get("resume") else None
    client = _Client(session["server_ip"], resume=resume, client_id=f"ctl-{rng.getrandbits(40):x}")
    client.tls_set_context(context)
    replies: queue.Queue = queue.Queue()
    subscribed = threading.Event()
    client.on_message = lambda c, u, msg: replies.put(msg.payload)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(session["host"], session["port"], keepalive=30, bind_address=session["client_ip"])
    client.loop_start()
    try:
        client.subscribe(f"fleet/{robot_id}/reply", qos=0)
        if not subscribed.wait(30):
            raise TimeoutError("no SUBACK")
        for seq, step in enumerate(robot.script(session["command"], rng)):
            time.sleep(step.gap)
            client.publish(f"fleet/{robot_id}/cmd", robot.request(session["command"], seq, step), qos=1)
            for _ in range(step.frames + 1):
                replies.get(timeout=30)
        sock = getattr(client, "tls_sock", None)
        if sock is not None:  # by now the server's TLS 1.3 tickets have been read
            _TLS_SESSIONS[session["id"]] = sock.session
        return {"resumed": bool(sock is not None and sock.session_reused)}
    finally:
        client.disconnect()
        client.loop_stop()


async def run(session: dict, ctx: ClientContext) -> dict:
    return await asyncio.to_thread(_session, session, ctx.cafile)

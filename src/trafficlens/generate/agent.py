"""The processes that run inside the namespaces: all servers in one, each round's clients in another.

    python -m trafficlens.generate.agent server SPEC.json           # prints one JSON line when listening
    python -m trafficlens.generate.agent client ROUND.json OUT.json  # plays a round of sessions

The server prints {"ready": [...], "failed": {class: reason}} once every class has started or
failed, then serves until SIGTERM. The client starts each session at its planned offset and
writes what happened to each (ok or the error, start and end) to OUT.json.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import sys
import time
import traceback

from trafficlens.generate.apps import CLASSES, ClientContext, ServerContext


async def _server(spec: dict) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(64))
    ready, failed, cleanup = [], {}, []
    for name, where in spec["classes"].items():
        ctx = ServerContext(spec["certfile"], spec["keyfile"], spec["cafile"], spec["workdir"],
                            where["addresses"], where["ports"])
        try:
            await CLASSES[name].load().serve(ctx)
            ready.append(name)
        except Exception as exc:  # one class failing must not stop the others
            failed[name] = f"{type(exc).__name__}: {exc}"
        cleanup += ctx.cleanup
    print(json.dumps({"ready": ready, "failed": failed}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for fn in cleanup:
        try:
            fn()
        except Exception:
            pass


async def _client(round_spec: dict) -> list[dict]:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(round_spec.get("concurrency", 16) + 8))
    ctx = ClientContext(round_spec["cafile"], round_spec["workdir"])
    limit = asyncio.Semaphore(round_spec.get("concurrency", 16))
    t0 = time.monotonic()
    done = {s["id"]: asyncio.Event() for s in round_spec["sessions"]}

    async def one(session: dict) -> dict:
        try:
            return await play(session)
        finally:
            done[session["id"]].set()

    async def play(session: dict) -> dict:
        await asyncio.sleep(max(0.0, session["start"] - (time.monotonic() - t0)))
        if session.get("resume_from") in done:  # its ticket comes from that session: wait for it
            await done[session["resume_from"]].wait()
        async with limit:
            began = time.time()
            try:
                module = CLASSES[session["cls"]].load()
                facts = await asyncio.wait_for(module.run(session, ctx), round_spec.get("timeout", 90)) or {}
                error = None
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
                if round_spec.get("debug"):
                    traceback.print_exc()
                facts = {}
            return {"id": session["id"], "ok": error is None, "error": error, "began": began, "ended": time.time(),
                    **facts}

    return await asyncio.gather(*(one(s) for s in round_spec["sessions"]))


def main() -> None:
    role, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as fh:
        spec = json.load(fh)
    if role == "server":
        asyncio.run(_server(spec))
    elif role == "client":
        results = asyncio.run(_client(spec))
        with open(sys.argv[3], "w") as fh:
            json.dump(results, fh)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()

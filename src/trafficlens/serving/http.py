"""`trafficlens serve`: a small HTTP API over one model bundle (FastAPI on uvicorn).

    POST /v1/classify   body: a capture (pcap, pcapng or gzip) -> {"sessions": [...rows...]}
    GET  /v1/model      labels, model, preprocessing settings, test metrics
    GET  /healthz       {"status": "ok"}

The model is loaded once at start; requests never name files or models. Uploads larger than
`max_upload_bytes` get 413 (checked while streaming, so a huge body is never buffered), work
past `timeout_s` gets 408, and a body that is not a capture gets 400.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from trafficlens.capture import CaptureReader
from trafficlens.errors import CaptureError, ConfigError
from trafficlens.serving.classifier import Classifier


def create_app(clf: Classifier, *, max_upload_bytes: int = 64 << 20, timeout_s: float = 60.0,
               top_k: int = 1, min_confidence: float = 0.0):
    app = FastAPI(title="trafficlens", version="1")
    metrics_path = Path(clf.bundle.path) / "metrics.json"
    model_info = {
        "model": clf.bundle.name,
        "labels": clf.labels,
        "preprocessing": clf.bundle.preprocessing,
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
    }
    lock = asyncio.Lock()  # one classification at a time: the model uses every core

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return model_info

    @app.post("/v1/classify")
    async def classify(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            return error(413, f"upload of {declared} bytes exceeds the limit of {max_upload_bytes}")
        fd, name = tempfile.mkstemp(suffix=".capture")
        try:
            size = 0
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload_bytes:
                        return error(413, f"upload exceeds the limit of {max_upload_bytes} bytes")
                    fh.write(chunk)
            if size == 0:
                return error(400, "empty body: POST a pcap or pcapng capture")

            cancelled = threading.Event()

            def work() -> list[dict[str, Any]]:
                # One upload: one that is no capture at all is a bad request (CaptureError), where
                # predict over many files warns and goes on.
                CaptureReader(name)
                rows = []
                batches = clf.iter_predictions([name], top_k=top_k, min_confidence=min_confidence)
                for batch in batches:
                    if cancelled.is_set():  # the client already has its 408: stop reading and inferring
                        batches.close()
                        break
                    rows.extend(batch)
                return rows

            async with lock:
                try:
                    rows = await asyncio.wait_for(run_in_threadpool(work), timeout=timeout_s)
                except asyncio.TimeoutError:
                    cancelled.set()
                    return error(408, f"classification took longer than {timeout_s} s")
                except (CaptureError, ConfigError) as exc:
                    return error(400, str(exc).replace(name, "upload"))
            for row in rows:
                row["capture"] = "upload"
                row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
            return {"model": clf.bundle.name, "sessions": rows}
        finally:
            Path(name).unlink(missing_ok=True)

    return app

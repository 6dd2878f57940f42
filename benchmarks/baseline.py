"""The plain baseline iraas is compared with: FastAPI + uvicorn, the same ONNX model and
preprocessing, no queue, no store — the server people write first.

    python -m uvicorn benchmarks.baseline:app --workers 2 --port 8100

Answers `POST /v1/recognitions` (multipart `files`) with the same JSON list as iraas, so the
same load generator drives both. Each uvicorn worker process loads its own classifier (one
onnxruntime thread, as an iraas worker).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from iraas.imaging import ImageError
from iraas.model.builtin import resolve_model
from iraas.model.classifier import Classifier
from iraas.worker.answers import per_image

_state: dict[str, Classifier] = {}


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    _state["clf"] = Classifier(resolve_model(None))
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/v1/recognitions")
async def recognitions(request: Request) -> JSONResponse:
    form = await request.form()
    uploads = [(f.filename or "upload", await f.read()) for f in form.getlist("files") if hasattr(f, "read")]
    clf = _state["clf"]
    before = replace(clf.times)
    outcomes = await run_in_threadpool(clf.classify, [data for _, data in uploads])
    # The model's time, as an iraas worker reports it (exact one request at a time; shared
    # between requests in flight at once): what `versus.py --paired` compares.
    spent = per_image(before, clf.times, len(uploads))
    out: list[dict[str, Any]] = []
    for (name, _), o in zip(uploads, outcomes, strict=True):
        if isinstance(o, ImageError):
            out.append({"name": name, "status": "failed", "error": o.code})
        else:
            top5 = [{"label": t.label, "index": t.index, "probability": t.probability} for t in o.top]
            answer = {"name": name, "status": "done", "label": o.label, "confidence": o.probability, "top5": top5}
            out.append(answer | {"timings": spent})
    return JSONResponse(out)

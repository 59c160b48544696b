"""Baseline: a plain FastAPI app on uvicorn. POST /echo returns its JSON body;
POST /embed {"sentences": [...]} -> {"embeddings": [...]} (no batching: FastAPI has none;
a lock keeps one model call at a time). Run: uvicorn fastapi_app:app."""

import os
import threading

from fastapi import Body, FastAPI

app = FastAPI()


@app.post("/echo")
async def echo(payload: dict = Body(...)):
    return payload


if os.environ.get("BENCH_WORKLOAD") == "embed":
    import common

    model = common.load()
    lock = threading.Lock()

    @app.post("/embed")
    def embed(payload: dict = Body(...)):
        with lock:
            return {"embeddings": common.encode(model, payload["sentences"]).tolist()}

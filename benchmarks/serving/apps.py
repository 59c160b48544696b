"""The neocloud services of the benchmark, written with the public service contract.

Echo: POST /echo {"sentences": [...]} returns the same JSON.
Embed: POST /embed {"sentences": [...]} -> {"embeddings": [[384 floats], ...]}, with the
runtime's dynamic batching (BENCH_MAX_BATCH, BENCH_BATCH_WAIT_MS as for every peer).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pydantic import BaseModel

from neocloud.serving import Service, endpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
import common  # noqa: E402


class Sentences(BaseModel):
    sentences: list[str]


class Echo(Service):
    @endpoint
    async def echo(self, sentences: list[str]) -> dict[str, list[str]]:
        return {"sentences": sentences}


class Embed(Service):
    def setup(self) -> None:
        self.model = common.load()

    @endpoint(max_batch_size=common.MAX_BATCH, max_wait_ms=common.BATCH_WAIT_S * 1000)
    def embed(self, requests: list[Sentences]) -> list[Any]:
        flat = [s for r in requests for s in r.sentences]
        vectors = common.encode(self.model, flat)
        out, start = [], 0
        for r in requests:
            out.append({"embeddings": vectors[start:start + len(r.sentences)]})
            start += len(r.sentences)
        return out

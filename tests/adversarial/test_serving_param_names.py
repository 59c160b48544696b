"""The serving runtime's 400 for a wrongly typed field names it as pydantic's location,
e.g. ``param="body.input.list[str]"`` for ``input: list[str] | str`` (the union member's
tag leaks into the field name; the gateway names the same field ``input``). Expected: the
field, ``input``."""

from __future__ import annotations

import asyncio

import httpx

from neocloud.serving.app import build_app
from neocloud.serving.service import Service, endpoint


class Emb(Service):
    @endpoint(path="/v1/embeddings")
    def embed(self, model: str, input: list[str] | str) -> dict:
        return {"n": 1}


def test_wrong_type_names_the_field() -> None:
    async def go() -> httpx.Response:
        app = build_app(Emb)
        await app.wait_ready(10)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/v1/embeddings", json={"model": "m", "input": 5})

    r = asyncio.run(go())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "input", r.text

"""The standalone runner's app and command line (no server started)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from neocloud.gateway.runner import build_app, main


async def _get(app: Any, path: str, token: str | None = None) -> tuple[int, bytes]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_runner_app_serves_health_metrics_and_the_gateway() -> None:
    app = build_app({"routes": ["emb=http://127.0.0.1:1,http://127.0.0.1:2"], "token": "t"})

    async def main_() -> None:
        assert await _get(app, "/health") == (200, b'{"status":"ok"}')
        status, text = await _get(app, "/metrics")
        assert status == 200 and b"neocloud_gateway_rejected_requests_total" in text
        status, body = await _get(app, "/v1/models", token="t")
        assert status == 200 and b'"id":"emb"' in body
        assert (await _get(app, "/v1/models"))[0] == 401

    asyncio.run(main_())


def test_bad_route_spec_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--route", "no-urls-here"])
    assert exit_.value.code == 2
    assert "NAME=http://host:port" in capsys.readouterr().err

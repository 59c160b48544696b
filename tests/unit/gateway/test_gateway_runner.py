"""The standalone runner's app and command line (no server started)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from neocloud.gateway import runner
from neocloud.gateway.runner import build_app, main


async def _get(app: Any, path: str, token: str | None = None,
               authorization: bytes | None = None) -> tuple[int, bytes]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    if authorization is not None:
        headers = [(b"authorization", authorization)]
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
        status, text = await _get(app, "/metrics", token="t")
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


def test_metrics_needs_the_gateway_token_unless_public() -> None:
    """Its series are labelled by workspace and deployment: as on the control plane,
    ``/metrics`` answers only with a token (this gateway's one), unless made public;
    ``/health`` stays open."""
    app = build_app({"routes": ["secret-model=http://127.0.0.1:1"], "token": "t0k"})
    public = build_app({"routes": ["secret-model=http://127.0.0.1:1"], "token": "t0k",
                        "public_metrics": True})

    async def main_() -> None:
        assert (await _get(app, "/v1/models", token="t0k"))[0] == 200  # a series to show
        for kw in ({}, {"token": "wrong"}, {"authorization": b"Basic dDBr"},
                   {"authorization": b"Bearer "}):
            status, body = await _get(app, "/metrics", **kw)  # type: ignore[arg-type]
            assert status == 401, kw
            err = json.loads(body)["error"]
            assert "NEOCLOUD_PUBLIC_METRICS=1" in err["message"], err
            assert b"neocloud_gateway" not in body
        assert json.loads((await _get(app, "/metrics"))[1])["error"]["code"] == \
            "missing_api_key"
        status, body = await _get(app, "/metrics", authorization=b"bearer t0k")
        assert status == 200 and b"neocloud_gateway_requests_total" in body
        assert await _get(app, "/health") == (200, b'{"status":"ok"}')
        status, body = await _get(public, "/metrics")
        assert status == 200 and b"neocloud_gateway_rejected_requests_total" in body

    asyncio.run(main_())


@pytest.mark.parametrize(("flag", "env", "public"), [
    (False, None, False), (True, None, True), (False, "1", True), (False, "true", True),
    (False, "0", False), (True, "0", True)])
def test_public_metrics_by_flag_or_the_control_planes_variable(
        flag: bool, env: str | None, public: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "_run_worker", lambda config, *a: seen.append(config))
    if env is None:
        monkeypatch.delenv(runner.ENV_PUBLIC_METRICS, raising=False)
    else:
        monkeypatch.setenv(runner.ENV_PUBLIC_METRICS, env)
    monkeypatch.setenv(runner.ENV_CONFIG, "")  # main() sets it: restored after the test
    assert main(["--route", "a=http://127.0.0.1:1", "--token", "t",
                 *(["--public-metrics"] if flag else [])]) == 0
    (config,) = seen
    assert config["public_metrics"] is public
    # The config travels to worker processes as JSON: they build the same app.
    assert json.loads(os.environ[runner.ENV_CONFIG])["public_metrics"] is public


def test_a_public_metrics_value_that_is_no_boolean_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(runner.ENV_PUBLIC_METRICS, "maybe")
    monkeypatch.setenv(runner.ENV_CONFIG, "")
    with pytest.raises(SystemExit) as exit_:
        main(["--route", "a=http://127.0.0.1:1", "--token", "t"])
    assert exit_.value.code == 2
    assert "NEOCLOUD_PUBLIC_METRICS='maybe' is not a boolean" in capsys.readouterr().err

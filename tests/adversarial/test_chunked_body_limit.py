"""A JSON body over the control plane's limit sent with ``Transfer-Encoding: chunked``
(no Content-Length) is answered 400 "There was an error parsing the body" (param null)
instead of 413 ``payload_too_large``: FastAPI swallows the middleware's exception."""

from __future__ import annotations

from collections.abc import Iterator

from tests.server.helpers import Cloud


def test_chunked_oversize_json_body_is_413(cloud: Cloud) -> None:
    limit = cloud.app.state.settings.max_body_bytes

    def chunks() -> Iterator[bytes]:
        sent = 0
        while sent <= limit:
            yield b" " * (1 << 20)
            sent += 1 << 20

    r = cloud.client.post("/api/v1/volumes", content=chunks(), headers={
        **cloud.h(), "content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"

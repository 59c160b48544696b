"""Header rewriting, request heads and reading the model field."""

from __future__ import annotations

import pytest

from neocloud.errors import InvalidRequest
from neocloud.gateway.app import model_of
from neocloud.gateway.static import parse_route_spec
from neocloud.gateway.wire import request_head, request_headers, response_headers


def test_request_headers_drop_hop_by_hop_and_secrets() -> None:
    headers = [
        (b"host", b"gw"), (b"authorization", b"Bearer secret"), (b"connection", b"x-hop, close"),
        (b"x-hop", b"1"), (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"),
        (b"content-length", b"9"), (b"te", b"trailers"), (b"upgrade", b"h2c"),
        (b"expect", b"100-continue"), (b"x-forwarded-for", b"1.1.1.1"),
        (b"content-type", b"application/json"), (b"x-forwarded-proto", b"spoofed"),
    ]
    out = request_headers(headers, ("10.0.0.2", 5555), "https", lambda: b"rid-1")
    assert out == [
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"1.1.1.1, 10.0.0.2"),
        (b"x-forwarded-proto", b"https"),
        (b"x-request-id", b"rid-1"),
    ]


def test_request_id_is_kept() -> None:
    out = request_headers([(b"x-request-id", b"mine")], None, "http", lambda: b"new")
    assert (b"x-request-id", b"mine") in out and (b"x-request-id", b"new") not in out


def test_request_head() -> None:
    head = request_head("POST", b"/v1/x?a=1", b"h:1", [(b"a", b"b")], 12)
    assert head == b"POST /v1/x?a=1 HTTP/1.1\r\nhost: h:1\r\na: b\r\ncontent-length: 12\r\n\r\n"
    assert b"content-length" not in request_head("GET", b"/", b"h", [], 0)


def test_response_headers() -> None:
    out, ctype = response_headers([
        (b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive"), (b"server", b"uvicorn"), (b"date", b"x"),
        (b"cache-control", b"no-cache"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
    ])
    assert ctype == b"text/event-stream"
    assert out == [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                   (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def test_model_of() -> None:
    assert model_of(b'{"model": "m", "input": "x"}') == "m"
    for body, param in [(b"nope", None), (b"[]", None), (b"{}", "model"), (b'{"model": 1}',
                                                                            "model")]:
        with pytest.raises(InvalidRequest) as err:
            model_of(body)
        assert err.value.param == param and err.value.status == 400


def test_parse_route_spec() -> None:
    route = parse_route_spec("emb=http://a:1, http://b:2")
    assert route.name == "emb" and [u.url for u in route.upstreams] == ["http://a:1",
                                                                         "http://b:2"]
    assert [u.replica_id for u in route.upstreams] == ["emb-0", "emb-1"]
    for bad in ["emb", "=http://a", "emb="]:
        with pytest.raises(ValueError):
            parse_route_spec(bad)

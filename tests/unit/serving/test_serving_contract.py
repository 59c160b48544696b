"""Service contract: endpoint options, signature compilation, loading references, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from neocloud.errors import InvalidRequest
from neocloud.serving import Request, Service, endpoint
from neocloud.serving.app import build_app
from neocloud.serving.handlers import Handler
from neocloud.serving.loader import resolve_service
from neocloud.serving.metrics import ServingMetrics
from neocloud.serving.modelref import parse_model_ref
from neocloud.serving.service import EndpointSpec, endpoints_of


class In(BaseModel):
    x: int


def _req(body: bytes = b"", query: bytes = b"", method: str = "POST") -> Request:
    return Request(method, "/p", query, [], body)


def _handler(fn: Any, **opts: Any) -> Handler:
    return Handler(fn.__name__, fn, EndpointSpec(**opts))


def test_endpoint_options_are_checked() -> None:
    for bad in ({"method": "PUT"}, {"max_batch_size": 0}, {"timeout_s": 0},
                {"max_concurrency": 0}, {"path": "nope"}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError):
            endpoint(**bad)


def test_decoding_modes() -> None:
    async def fields(a: int, b: str = "z") -> None: ...
    async def model(body: In) -> None: ...
    async def raw(data: bytes) -> None: ...
    async def batched(items: list[In]) -> list[int]: ...

    h = _handler(fields)
    assert h.decoder.decode(_req(b'{"a": 1}'), False) == {"a": 1}
    assert h.decoder.decode(_req(query=b"a=3&b=q"), True) == {"a": 3, "b": "q"}
    with pytest.raises(InvalidRequest) as exc:
        h.decoder.decode(_req(b'{"b": "x"}'), False)
    assert exc.value.param == "a"
    assert _handler(model).decoder.decode(_req(b'{"x": 2}'), False) == In(x=2)
    assert _handler(raw).decoder.decode(_req(b"\x00\x01"), False) == b"\x00\x01"
    hb = _handler(batched, max_batch_size=4)
    assert hb.decoder.decode(_req(b'{"x": 5}'), False) == In(x=5)


def test_bad_signatures_are_refused() -> None:
    async def two(a: list[int], b: int) -> list[int]: ...
    async def star(*args: int) -> None: ...
    async def gen(xs: list[int]):
        yield xs

    with pytest.raises(TypeError):
        _handler(two, max_batch_size=4)
    with pytest.raises(TypeError):
        _handler(star)
    with pytest.raises(TypeError):
        _handler(gen, max_batch_size=4)


def test_endpoints_are_inherited_and_overridable() -> None:
    class Base(Service):
        @endpoint(path="/a")
        async def a(self) -> str:
            return "base"

    class Child(Base):
        async def a(self) -> str:  # override keeps the route
            return "child"

        @endpoint(method="GET")
        async def b(self) -> str:
            return "b"

    found = {attr: (spec.path, spec.method) for attr, _, spec in endpoints_of(Child())}
    assert found == {"a": ("/a", "POST"), "b": (None, "GET")}
    assert asyncio.run(dict((k, f) for k, f, _ in endpoints_of(Child()))["a"]()) == "child"


def test_duplicate_routes_are_refused() -> None:
    class Dup(Service):
        @endpoint(path="/x")
        async def a(self) -> None: ...

        @endpoint(path="/x")
        async def b(self) -> None: ...

    with pytest.raises(ValueError):
        build_app(Dup)


def test_resolve_references(tmp_path: Path) -> None:
    cls, name = resolve_service("embeddings")
    assert cls.__name__ == "EmbeddingsService" and name == "embeddings"
    f = tmp_path / "mysvc.py"
    f.write_text("from neocloud.serving import Service\nclass Thing(Service):\n    pass\n"
                 "class Named(Service):\n    name = 'custom'\n")
    assert resolve_service(f"{f}:Thing")[1] == "thing"
    assert resolve_service(f"{f}:Named")[1] == "custom"
    cls, _ = resolve_service("neocloud.serving.builtin.chat:ChatService")
    assert cls.__name__ == "ChatService"
    for bad in ("nocolon", f"{f}:Missing", "no_such_module_q:X", str(tmp_path / "x.py") + ":A"):
        with pytest.raises(ValueError):
            resolve_service(bad)


def test_model_refs(tmp_path: Path) -> None:
    assert parse_model_ref(None).kind == "default"
    assert parse_model_ref("hf:org/name").value == "org/name"
    assert parse_model_ref(str(tmp_path)).kind == "local"
    for bad in ("hf:nameonly", "hf:/x", str(tmp_path / "missing")):
        with pytest.raises(ValueError):
            parse_model_ref(bad)


def test_metrics_text_format() -> None:
    m = ServingMetrics()
    m.requests.inc(1, "/a", "200")
    m.latency.observe(0.003, "/a")
    m.latency.observe(100.0, "/a")
    m.batch_size.observe(3, "/a")
    text = m.render().decode()
    assert 'neocloud_requests_total{route="/a",status="200"} 1' in text
    assert 'neocloud_request_duration_seconds_bucket{route="/a",le="0.0025"} 0' in text
    assert 'neocloud_request_duration_seconds_bucket{route="/a",le="0.005"} 1' in text
    assert 'neocloud_request_duration_seconds_bucket{route="/a",le="+Inf"} 2' in text
    assert 'neocloud_request_duration_seconds_count{route="/a"} 2' in text
    assert 'neocloud_batch_size_bucket{route="/a",le="4"} 1' in text
    assert "# TYPE neocloud_batch_size histogram" in text

"""Turn one ``@endpoint`` method into a :class:`Handler`: input decoding compiled once from
the signature, invocation (sync in threads, async on the loop, batched, concurrency-limited),
and detection of streamed results.

Input rules (POST bodies are JSON; GET arguments come from the query string):

- a parameter annotated :class:`~neocloud.serving.request.Request` receives the request;
- exactly one other parameter annotated with a pydantic model: the body *is* that model;
- exactly one other parameter annotated ``bytes``: the raw body;
- otherwise the body is a JSON object whose keys are the parameter names (parameters
  with defaults may be left out; unknown keys are refused);
- batched endpoints (``max_batch_size > 1``) take one parameter ``list[T]``: each
  request body is one ``T`` and each request gets its own element of the returned list.

Invalid input raises :class:`~neocloud.errors.InvalidRequest` (HTTP 400) naming the field.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NotRequired, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from neocloud.errors import InvalidRequest
from neocloud.serving.batching import Batcher, BatchObserver
from neocloud.serving.request import Request
from neocloud.serving.responses import SSE, Stream
from neocloud.serving.service import EndpointSpec

_FORBID = ConfigDict(extra="forbid")


#: Parts of a pydantic error location that name a union member, not a field.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "list", "dict", "tuple",
                        "set"})


def _field_path(loc: tuple[Any, ...]) -> str:
    """``("input", "list[str]", 0)`` -> ``input.0``: the field as the client wrote it."""
    parts = [str(p) for p in loc
             if isinstance(p, int) or ("[" not in str(p) and str(p) not in _TYPE_TAGS)]
    return ".".join(parts)


def validation_error(exc: ValidationError, prefix: str = "body") -> InvalidRequest:
    """An :class:`InvalidRequest` describing the first error of a pydantic error; ``param``
    is the field's path in the request (``input``, ``messages.0.content``), as the gateway
    and the control plane name it."""
    err = exc.errors(include_url=False)[0]
    field = _field_path(tuple(err.get("loc", ())))
    where = ".".join(p for p in (prefix, field) if p)
    return InvalidRequest(f"{where}: {err.get('msg', 'invalid value')}", param=field or prefix)


def _is_model(ann: Any) -> bool:
    return inspect.isclass(ann) and issubclass(ann, BaseModel)


class _Decoder:
    """Compiled body/query decoder for one handler (built once, used per request)."""

    def __init__(self, fn: Callable[..., Any], spec: EndpointSpec, qualname: str) -> None:
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # unresolvable forward reference
            raise TypeError(f"{qualname}: cannot resolve type hints: {exc}") from exc
        self.request_param: str | None = None
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{qualname}: *args/**kwargs are not supported in handlers")
            ann = hints.get(p.name, Any)
            if ann is Request:
                self.request_param = p.name
            else:
                params.append(p.replace(annotation=ann))
        self.batched = spec.max_batch_size > 1
        self.mode: str
        self.model: type[BaseModel] | None = None
        self.adapter: TypeAdapter[Any] | None = None
        self.name: str | None = None
        if self.batched:
            if len(params) != 1 or get_origin(params[0].annotation) is not list:
                raise TypeError(
                    f"{qualname}: a batched endpoint takes exactly one parameter 'list[T]'"
                )
            self.name = params[0].name
            (item,) = get_args(params[0].annotation) or (Any,)
            self._single(item)
        elif len(params) == 1 and _is_model(params[0].annotation):
            self.name = params[0].name
            self._single(params[0].annotation)
        elif len(params) == 1 and params[0].annotation is bytes:
            self.name = params[0].name
            self.mode = "raw"
        else:
            fields: dict[str, Any] = {}
            for p in params:
                ann = p.annotation
                fields[p.name] = ann if p.default is p.empty else NotRequired[ann]  # type: ignore[valid-type]
            td = TypedDict(f"{qualname}_Body", fields)  # type: ignore[misc]
            self.adapter = TypeAdapter(with_config(_FORBID)(td))
            self.mode = "fields"
            self.required = {p.name for p in params if p.default is p.empty}
            self.list_fields = {p.name for p in params if get_origin(p.annotation) is list}

    def _single(self, ann: Any) -> None:
        if _is_model(ann):
            self.model = ann
            self.mode = "model"
        else:
            self.adapter = TypeAdapter(ann)
            self.mode = "value"

    def decode(self, req: Request, get: bool) -> Any:
        """The handler input for ``req``: kwargs dict (fields mode) or one value."""
        try:
            if self.mode == "fields":
                assert self.adapter is not None
                if get:
                    query = {
                        k: (v if k in self.list_fields else v[-1]) for k, v in req.query().items()
                    }
                    return self.adapter.validate_python(query)
                if not req.body:
                    if self.required:
                        raise InvalidRequest("body: a JSON object is required", param="body")
                    return {}
                return self.adapter.validate_json(req.body)
            if self.mode == "raw":
                return req.body
            if get:
                raise TypeError("GET endpoints take named query parameters")
            if not req.body:
                raise InvalidRequest("body: a JSON body is required", param="body")
            if self.model is not None:
                return self.model.model_validate_json(req.body)
            assert self.adapter is not None
            return self.adapter.validate_json(req.body)
        except ValidationError as exc:
            raise validation_error(exc, "query" if get else "body") from None


class Handler:
    """One served endpoint: decode, run, and classify the result.

    ``invoke(req)`` returns the handler's result, a :class:`Stream` for generators.
    """

    def __init__(
        self,
        attr: str,
        fn: Callable[..., Any],
        spec: EndpointSpec,
        *,
        owner: Any = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.attr = attr
        self.spec = spec
        self.path = spec.path or f"/{attr}"
        self.method = spec.method
        self.fn = fn
        self.timeout_s = spec.timeout_s
        qualname = getattr(fn, "__qualname__", attr)
        self.decoder = _Decoder(fn, spec, qualname)
        self.get = spec.method == "GET"
        self.is_async = inspect.iscoroutinefunction(fn)
        self.is_asyncgen = inspect.isasyncgenfunction(fn)
        self.is_gen = inspect.isgeneratorfunction(fn)
        self.media_type = spec.media_type or SSE
        self.semaphore = (
            asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
        )
        self.executor: ThreadPoolExecutor | None = None
        if not (self.is_async or self.is_asyncgen) and spec.max_concurrency:
            self.executor = ThreadPoolExecutor(
                spec.max_concurrency, thread_name_prefix=f"handler-{attr}"
            )
        self.batcher: Batcher | None = None
        if self.decoder.batched:
            if self.is_gen or self.is_asyncgen:
                raise TypeError(f"{qualname}: a batched endpoint cannot stream")
            self.batcher = Batcher(
                fn,
                max_batch_size=spec.max_batch_size,
                max_wait_s=spec.max_wait_ms / 1000.0,
                name=attr,
                owner=owner,
                observer=observer,
            )

    async def invoke(self, req: Request) -> Any:
        """Run the handler for ``req``.

        Raises:
            InvalidRequest: the input does not match the signature.
            Timeout: a batched request outlived ``timeout_s`` in the queue.
            Exception: whatever the handler raised.
        """
        value = self.decoder.decode(req, self.get)
        if self.batcher is not None:
            return await self.batcher.submit(value, timeout_s=self.timeout_s)
        if self.semaphore is None:
            return await self._run(value, req)
        async with self.semaphore:
            return await self._run(value, req)

    async def _run(self, value: Any, req: Request) -> Any:
        dec = self.decoder
        if dec.mode == "fields":
            kwargs = value
            if dec.request_param:
                kwargs = dict(value)
                kwargs[dec.request_param] = req
        else:
            kwargs = {dec.name: value} if dec.name else {}
            if dec.request_param:
                kwargs[dec.request_param] = req
        if self.is_async:
            return await self.fn(**kwargs)
        if self.is_asyncgen:
            return Stream(self.fn(**kwargs), media_type=self.media_type)
        if self.is_gen:
            return Stream(self.fn(**kwargs), media_type=self.media_type)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: self.fn(**kwargs))


def as_stream(result: Any, media_type: str = SSE) -> Stream | None:
    """``result`` as a :class:`Stream` when it is one (or a generator), else ``None``."""
    if isinstance(result, Stream):
        return result
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return Stream(result, media_type=media_type)
    return None

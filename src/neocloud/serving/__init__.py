"""The serving runtime inside a replica: write a :class:`Service`, mark handlers with
:func:`endpoint`, run it with ``neocloud serve file.py:Class`` (see ``README.md``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neocloud.serving.batching import Batcher, batched
    from neocloud.serving.request import Request
    from neocloud.serving.responses import Response, Stream
    from neocloud.serving.service import EndpointSpec, Service, endpoint

# Imported on first use, so ``python -m neocloud.serving`` reaches its signal handlers
# before the heavier modules (pydantic models) load.
_EXPORTS = {
    "Batcher": "neocloud.serving.batching",
    "batched": "neocloud.serving.batching",
    "Request": "neocloud.serving.request",
    "Response": "neocloud.serving.responses",
    "Stream": "neocloud.serving.responses",
    "EndpointSpec": "neocloud.serving.service",
    "Service": "neocloud.serving.service",
    "endpoint": "neocloud.serving.service",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "Batcher",
    "EndpointSpec",
    "Request",
    "Response",
    "Service",
    "Stream",
    "batched",
    "endpoint",
]

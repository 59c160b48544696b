"""The serving runtime inside a replica: write a :class:`Service`, mark handlers with
:func:`endpoint`, run it with ``neocloud serve file.py:Class`` (see ``README.md``)."""

from __future__ import annotations

from neocloud.serving.batching import Batcher, batched
from neocloud.serving.request import Request
from neocloud.serving.responses import Response, Stream
from neocloud.serving.service import EndpointSpec, Service, endpoint

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

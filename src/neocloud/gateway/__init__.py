"""The neocloud gateway: an ASGI reverse proxy in front of deployment replicas.

Build one with :func:`create_gateway` over a :class:`RouteTable`, an :class:`Authenticator`
and optionally a :class:`UsageSink` and a :class:`RefusalSink` (the audit log of 401/402
refusals); serve it with any ASGI server, mount it in the control
plane, or run copies alone with ``python -m neocloud.gateway``.
"""

from __future__ import annotations

from neocloud.gateway.app import Gateway, create_gateway
from neocloud.gateway.balancing import (
    BalancingPolicy,
    LeastOutstanding,
    PowerOfTwoChoices,
    RandomChoice,
    ReplicaLoad,
    RoundRobin,
)
from neocloud.gateway.settings import GatewaySettings
from neocloud.gateway.stats import DeploymentStats, GatewayCollector
from neocloud.gateway.types import (
    Authenticator,
    DurableUsageSink,
    Principal,
    Refusal,
    RefusalSink,
    RequestRecord,
    Route,
    RouteTable,
    Upstream,
    UsageSink,
)

__all__ = [
    "Authenticator",
    "BalancingPolicy",
    "DeploymentStats",
    "DurableUsageSink",
    "Gateway",
    "GatewayCollector",
    "GatewaySettings",
    "LeastOutstanding",
    "PowerOfTwoChoices",
    "Principal",
    "RandomChoice",
    "Refusal",
    "RefusalSink",
    "ReplicaLoad",
    "RequestRecord",
    "RoundRobin",
    "Route",
    "RouteTable",
    "Upstream",
    "UsageSink",
    "create_gateway",
]

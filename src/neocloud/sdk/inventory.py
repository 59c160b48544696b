"""``client.nodes``, ``client.shapes`` and ``client.fleet``: the servers that run work, the
resource shapes that workloads request, and the fleet's capacity and allocation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

from neocloud.models import (
    GpuSpec,
    NodeCreate,
    NodeOut,
    NodeStatus,
    NodeUpdate,
    ShapeCreate,
    ShapeOut,
)
from neocloud.models.nodes_join import NodeJoin, SharedFolderCheck
from neocloud.models.utilization import Utilization
from neocloud.sdk._http import HttpApi, build, parse

NodeList = list[NodeOut]
ShapeList = list[ShapeOut]


class Nodes:
    """Nodes of the cloud. Reading is open to every token; changing needs an operator."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self) -> NodeList:
        return self._api.get_list(NodeOut, "/nodes")

    def get(self, name: str) -> NodeOut:
        """One node. Raises ``NotFound``."""
        return self._api.get_model(NodeOut, _node(name))

    def create(
        self,
        name: str,
        *,
        cpu_milli: int,
        memory_mib: int,
        gpus: Sequence[GpuSpec | Mapping[str, object]] = (),
        labels: Mapping[str, str] | None = None,
        pool: str | None = None,
        backend: str | None = None,
    ) -> NodeOut:
        """Register a node: CPU in millicores, memory in MiB, GPUs as ``GpuSpec`` (type,
        count, memory_mib each). ``backend`` is ``local``, ``ray`` or ``fake`` (the
        server's default when ``None``).

        Raises ``PermissionDenied``, ``AlreadyExists``, ``ValidationFailed``.
        """
        body = build(
            NodeCreate,
            name=name,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            gpus=[g.model_dump() if isinstance(g, GpuSpec) else dict(g) for g in gpus],
            labels=dict(labels) if labels is not None else None,
            pool=pool,
            backend=backend,
        )
        return self._api.send_model("POST", NodeOut, "/nodes", body)

    def update(
        self,
        name: str,
        *,
        status: NodeStatus | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> NodeOut:
        """Change a node's status or labels. Raises ``NotFound``, ``PermissionDenied``."""
        body = build(NodeUpdate, status=status, labels=dict(labels) if labels is not None else None)
        return self._api.send_model("PATCH", NodeOut, _node(name), body)

    def cordon(self, name: str) -> NodeOut:
        """Stop placing new work on the node; what runs there keeps running."""
        return self.update(name, status=NodeStatus.cordoned)

    def uncordon(self, name: str) -> NodeOut:
        """Let the node take new work again."""
        return self.update(name, status=NodeStatus.ready)

    def join(self, spec: NodeJoin) -> NodeOut:
        """Register this server's Ray node, or refresh it when it joins again (operators;
        ``neocloud node join``). Raises ``PermissionDenied``, ``Conflict``,
        ``ValidationFailed``."""
        return self._api.send_model("POST", NodeOut, "/nodes/join", spec)

    def join_check(self) -> SharedFolderCheck:
        """A marker the control plane just wrote into its volumes folder, for a joining
        server to read back at the same path (operators; ``neocloud node join``).
        Raises ``PermissionDenied``."""
        return parse(SharedFolderCheck, self._api.request("POST", "/nodes/join/check"))

    def drain(self, name: str) -> NodeOut:
        """Take no new work on the node and move its work away (the reconcilers do the
        moving); then it is not schedulable."""
        return self.update(name, status=NodeStatus.draining)

    def delete(self, name: str) -> None:
        """Remove a node. Raises ``NotFound``, ``PermissionDenied``, ``Conflict``."""
        self._api.request("DELETE", _node(name))


class Shapes:
    """Shapes (named resource requests with a price per hour)."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self) -> ShapeList:
        return self._api.get_list(ShapeOut, "/shapes")

    def get(self, name: str) -> ShapeOut:
        """One shape. Raises ``NotFound``."""
        return self._api.get_model(ShapeOut, "/shapes/" + quote(name, safe=""))

    def create(
        self,
        name: str,
        *,
        cpu_milli: int,
        memory_mib: int,
        price_per_hour_usd: float,
        gpu_count: int = 0,
        gpu_milli: int = 0,
        gpu_type: str | None = None,
    ) -> ShapeOut:
        """Add a shape (operators): CPU in millicores, memory in MiB, ``gpu_count`` whole
        GPUs or ``gpu_milli`` thousandths of one, price in USD per hour.

        Raises ``ValidationFailed`` (e.g. both ``gpu_count`` and ``gpu_milli``),
        ``PermissionDenied``, ``AlreadyExists``.
        """
        body = build(
            ShapeCreate,
            name=name,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            gpu_count=gpu_count,
            gpu_milli=gpu_milli,
            gpu_type=gpu_type,
            price_per_hour_usd=price_per_hour_usd,
        )
        return self._api.send_model("POST", ShapeOut, "/shapes", body)


def _node(name: str) -> str:
    return "/nodes/" + quote(name, safe="")


class Fleet:
    """Capacity and allocation of the whole fleet (nodes of every pool)."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def utilization(self) -> Utilization:
        """GPUs, CPU and memory per node pool and GPU type, and what is allocated now."""
        return self._api.get_model(Utilization, "/utilization")

"""Nodes and shapes (changes are for operators; anyone may read)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from neocloud.models import NodeCreate, NodeOut, NodeUpdate, Page, ShapeCreate, ShapeOut
from neocloud.models.utilization import Utilization
from neocloud.server.deps import CallerDep, SessionDep, StateDep
from neocloud.server.services import nodes as node_svc
from neocloud.server.services import shapes as shape_svc
from neocloud.server.services.utilization import utilization

router = APIRouter(tags=["inventory"])


@router.get("/nodes", response_model=Page[NodeOut])
def list_nodes(caller: CallerDep, s: SessionDep) -> Page[NodeOut]:
    return Page(data=[node_svc.node_out(s, n) for n in node_svc.list_nodes(s)])


@router.post("/nodes", response_model=NodeOut, status_code=201)
def create_node(body: NodeCreate, caller: CallerDep, s: SessionDep, state: StateDep) -> NodeOut:
    caller.require_operator()
    node = node_svc.create_node(s, spec=body)
    out = node_svc.node_out(s, node)
    state.commit_and_wake(s)
    return out


@router.get("/nodes/{name}", response_model=NodeOut)
def get_node(name: str, caller: CallerDep, s: SessionDep) -> NodeOut:
    return node_svc.node_out(s, node_svc.get_node(s, name=name))


@router.patch("/nodes/{name}", response_model=NodeOut)
def update_node(
    name: str, body: NodeUpdate, caller: CallerDep, s: SessionDep, state: StateDep
) -> NodeOut:
    caller.require_operator()
    node = node_svc.update_node(s, name=name, spec=body)
    out = node_svc.node_out(s, node)
    state.commit_and_wake(s)
    return out


@router.delete("/nodes/{name}", status_code=204)
def delete_node(name: str, caller: CallerDep, s: SessionDep) -> Response:
    caller.require_operator()
    node_svc.delete_node(s, name=name)
    return Response(status_code=204)


@router.get("/shapes", response_model=Page[ShapeOut])
def list_shapes(caller: CallerDep, s: SessionDep) -> Page[ShapeOut]:
    return Page(data=[ShapeOut.model_validate(x) for x in shape_svc.list_shapes(s)])


@router.post("/shapes", response_model=ShapeOut, status_code=201)
def create_shape(body: ShapeCreate, caller: CallerDep, s: SessionDep) -> ShapeOut:
    caller.require_operator()
    return ShapeOut.model_validate(shape_svc.create_shape(s, spec=body))


@router.get("/shapes/{name}", response_model=ShapeOut)
def get_shape(name: str, caller: CallerDep, s: SessionDep) -> ShapeOut:
    return ShapeOut.model_validate(shape_svc.get_shape(s, name=name))


@router.get("/utilization", response_model=Utilization)
def get_utilization(caller: CallerDep, s: SessionDep) -> Utilization:
    """Capacity and allocation of the fleet per node pool and GPU type."""
    return utilization(s)

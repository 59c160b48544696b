"""Nodes: the servers that run work (changes are for operators; anyone may read)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from neocloud.models import NodeCreate, NodeOut, NodeUpdate, Page
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import nodes as node_svc

router = APIRouter(tags=["nodes"])


@router.get("/nodes", response_model=Page[NodeOut])
def list_nodes(caller: CallerDep, s: SessionDep) -> Page[NodeOut]:
    return Page(data=[node_svc.node_out(s, n) for n in node_svc.list_nodes(s)])


@router.post("/nodes", response_model=NodeOut, status_code=201)
def create_node(body: NodeCreate, caller: CallerDep, s: SessionDep) -> NodeOut:
    caller.require_operator()
    node = node_svc.create_node(s, spec=body)
    return node_svc.node_out(s, node)


@router.get("/nodes/{name}", response_model=NodeOut)
def get_node(name: str, caller: CallerDep, s: SessionDep) -> NodeOut:
    return node_svc.node_out(s, node_svc.get_node(s, name=name))


@router.patch("/nodes/{name}", response_model=NodeOut)
def update_node(name: str, body: NodeUpdate, caller: CallerDep, s: SessionDep) -> NodeOut:
    caller.require_operator()
    node = node_svc.update_node(s, name=name, spec=body)
    return node_svc.node_out(s, node)


@router.delete("/nodes/{name}", status_code=204)
def delete_node(name: str, caller: CallerDep, s: SessionDep) -> Response:
    caller.require_operator()
    node_svc.delete_node(s, name=name)
    return Response(status_code=204)

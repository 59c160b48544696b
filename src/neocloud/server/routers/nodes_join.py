"""``POST /nodes/join``: a server that runs ``neocloud node join`` registers itself."""

from __future__ import annotations

from fastapi import APIRouter, Response

from neocloud.models import NodeOut
from neocloud.models.nodes_join import NodeJoin
from neocloud.server.deps import CallerDep, SessionDep, StateDep
from neocloud.server.services import nodes as node_svc

router = APIRouter(tags=["inventory"])


@router.post("/nodes/join", response_model=NodeOut, status_code=201,
             responses={200: {"model": NodeOut, "description": "an existing node rejoined"}})
def join_node(body: NodeJoin, caller: CallerDep, s: SessionDep, state: StateDep,
              response: Response) -> NodeOut:
    """Register a Ray node (201), or refresh one that joins again under its name (200).
    Operators only (403 otherwise); 409 when the name belongs to a node of another
    backend."""
    caller.require_operator()
    node, created = node_svc.join_node(s, spec=body)
    out = node_svc.node_out(s, node)
    state.commit_and_wake(s)
    response.status_code = 201 if created else 200
    return out

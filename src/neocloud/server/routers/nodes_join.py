"""``POST /nodes/join``: a server that runs ``neocloud node join`` registers itself;
``POST /nodes/join/check``: first, it checks that it shares the control plane's volumes
folder."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response

from neocloud.models import NodeOut
from neocloud.models.nodes_join import NodeJoin, SharedFolderCheck
from neocloud.server.deps import CallerDep, SessionDep, StateDep
from neocloud.server.services import nodes as node_svc
from neocloud.server.services.shared_fs import write_marker

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


@router.post("/nodes/join/check", response_model=SharedFolderCheck, status_code=201)
def shared_folder_check(caller: CallerDep, state: StateDep) -> SharedFolderCheck:
    """Write a marker file into the volumes folder for a joining server to read back at
    the same path (``neocloud node join`` refuses to join a server that cannot: its jobs
    and pods would find no working folder). Operators only (403 otherwise)."""
    caller.require_operator()
    root = getattr(state.volume_store, "root", None)
    if root is None:
        return SharedFolderCheck(path=None, token=None)
    marker = write_marker(Path(root))
    return SharedFolderCheck(path=str(marker.path), token=marker.token)

"""Usage of the caller's workspace: the bill so far."""

from __future__ import annotations

from fastapi import APIRouter

from neocloud.models import Bill
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services.usage import bill

router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=Bill)
def usage(caller: CallerDep, s: SessionDep) -> Bill:
    return bill(s, workspace_id=caller.workspace_id, workspace_name=caller.workspace_name)

"""Capacity and allocation of the whole fleet."""

from __future__ import annotations

from fastapi import APIRouter

from neocloud.models.utilization import Utilization
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services.utilization import utilization

router = APIRouter(tags=["utilization"])


@router.get("/utilization", response_model=Utilization)
def get_utilization(caller: CallerDep, s: SessionDep) -> Utilization:
    """Capacity and allocation of the fleet per node pool and GPU type."""
    return utilization(s)

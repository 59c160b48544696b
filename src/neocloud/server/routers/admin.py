"""Operator tools: the invariant check of the whole control plane."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from neocloud.models.admin import CheckReport
from neocloud.server.deps import CallerDep, StateDep
from neocloud.server.errors_http import error_responses
from neocloud.server.invariants import check_database

router = APIRouter(tags=["admin"])


@router.get("/admin/check", response_model=CheckReport, responses=error_responses(403))
async def admin_check(caller: CallerDep, state: StateDep) -> CheckReport:
    """Every broken invariant of the control plane, read from one snapshot of the
    database and from the backends' processes (operators only). It reports; it repairs
    nothing. ``ok`` is true when there is no violation."""
    caller.require_operator()
    return await asyncio.to_thread(check_database, state.db, state.backends)

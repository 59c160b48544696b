"""The workspace's monthly budget: read by its members, set by its admins or operators."""

from __future__ import annotations

from fastapi import APIRouter, Response

from neocloud.models import Role
from neocloud.models.billing import BudgetOut, BudgetSet
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import budgets as svc
from neocloud.server.services.invoices import target_workspace

router = APIRouter(tags=["billing"])


@router.get("/budget", response_model=BudgetOut)
def get_budget(caller: CallerDep, s: SessionDep, workspace: str | None = None) -> BudgetOut:
    return svc.budget_out(s, workspace_id=target_workspace(s, caller=caller, workspace=workspace))


@router.put("/budget", response_model=BudgetOut)
def set_budget(body: BudgetSet, caller: CallerDep, s: SessionDep,
               workspace: str | None = None) -> BudgetOut:
    """Set the budget (admin of the workspace, or an operator for any workspace)."""
    ws = target_workspace(s, caller=caller, workspace=workspace)
    caller.require(Role.admin)
    svc.set_budget(s, workspace_id=ws, spec=body)
    return svc.budget_out(s, workspace_id=ws)


@router.delete("/budget", status_code=204)
def delete_budget(caller: CallerDep, s: SessionDep, workspace: str | None = None) -> Response:
    ws = target_workspace(s, caller=caller, workspace=workspace)
    caller.require(Role.admin)
    svc.delete_budget(s, workspace_id=ws)
    return Response(status_code=204)

"""Invoices of a workspace per period, and chargeback of owned hardware (operators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, Response

from neocloud.models import Page
from neocloud.models.billing import ChargebackOut, InvoiceOut, PeriodKind
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import chargeback as chargeback_svc
from neocloud.server.services import invoices as svc

router = APIRouter(tags=["billing"])


#: A period as the service takes it: ``YYYY-MM`` or ``YYYY-MM-DD`` (UTC, year 0001 or later),
#: or ``current``.
_YEAR = r"([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
PERIOD = rf"^({_YEAR}-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?|current)$"
PeriodPath = Annotated[str, Path(json_schema_extra={"pattern": PERIOD})]
PeriodQuery = Annotated[str | None, Query(json_schema_extra={  # "" is this month too
    "anyOf": [{"type": "string", "pattern": PERIOD.replace("|current)$", ")?$")}]})]


@router.get("/invoices", response_model=Page[InvoiceOut])
def list_invoices(caller: CallerDep, s: SessionDep, kind: PeriodKind = PeriodKind.month,
                  workspace: str | None = None) -> Page[InvoiceOut]:
    """Every period with usage, newest first; the current one is a draft."""
    ws = svc.target_workspace(s, caller=caller, workspace=workspace)
    return Page(data=svc.list_invoices(s, workspace_id=ws, kind=kind))


@router.get("/invoices/{period}", response_model=InvoiceOut,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_invoice(period: PeriodPath, caller: CallerDep, s: SessionDep, workspace: str | None = None,
                format: str = Query("json", pattern="^(json|csv)$")) -> Response:
    """The invoice of ``period`` (``YYYY-MM`` or ``YYYY-MM-DD``, UTC; ``current`` for this
    month), as JSON or (``format=csv``) CSV."""
    ws = svc.target_workspace(s, caller=caller, workspace=workspace)
    inv = svc.get_invoice(s, workspace_id=ws, period=None if period == "current" else period)
    if format == "csv":
        return PlainTextResponse(svc.to_csv(inv), media_type="text/csv")
    return Response(inv.model_dump_json(), media_type="application/json")


@router.get("/chargeback", response_model=ChargebackOut)
def chargeback(caller: CallerDep, s: SessionDep, period: PeriodQuery = None) -> ChargebackOut:
    """Cost of each node pool over ``period`` (default this month) split over the
    workspaces that used it, and idle; operators only."""
    caller.require_operator()
    return chargeback_svc.chargeback(s, period=period)

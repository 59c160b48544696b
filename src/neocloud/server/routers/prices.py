"""Price lists: every version of every price (read by anyone), set by operators."""

from __future__ import annotations

from fastapi import APIRouter

from neocloud.models import Page
from neocloud.models.billing import PriceKind, PriceOut, PriceSet
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import prices as svc

router = APIRouter(tags=["billing"])


@router.get("/prices", response_model=Page[PriceOut])
def list_prices(caller: CallerDep, s: SessionDep, kind: PriceKind | None = None,
                target: str | None = None) -> Page[PriceOut]:
    """Every price version, oldest effective time first (a shape without a version is
    billed at its own ``price_per_hour_usd``)."""
    rows = svc.list_prices(s, kind=kind, target=target)
    return Page(data=[PriceOut.model_validate(r) for r in rows])


@router.post("/prices", response_model=PriceOut, status_code=201)
def set_price(body: PriceSet, caller: CallerDep, s: SessionDep) -> PriceOut:
    """Add a price version in force from ``effective_at`` (default now); operators only."""
    caller.require_operator()
    row = svc.set_price(s, spec=body, created_by=caller.token_name)
    return PriceOut.model_validate(row)

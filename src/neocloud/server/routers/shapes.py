"""Shapes: named resource requests with a price (adding them is for operators)."""

from __future__ import annotations

from fastapi import APIRouter

from neocloud.models import Page, ShapeCreate, ShapeOut
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import shapes as shape_svc

router = APIRouter(tags=["shapes"])


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

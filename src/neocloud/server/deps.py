"""FastAPI dependencies, named once: the session, the caller, the app's state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from neocloud.errors import Unauthenticated
from neocloud.server.services.principal import Caller
from neocloud.server.services.workspaces import authenticate
from neocloud.server.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.neocloud


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.db.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_session)]


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "missing API token: send 'Authorization: Bearer <token>' "
            "(create one with 'neocloud token create')"
        )
    return token.strip()


def get_caller(request: Request, state: StateDep) -> Caller:
    token = bearer(request)
    with state.db.session() as s:
        caller = authenticate(s, secret=token)
    if caller is None:
        raise Unauthenticated("invalid API token")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]

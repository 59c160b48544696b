"""FastAPI dependencies, named once: the session, the caller, the app's state and its parts.

Invariant: **a route's writes are committed before its response is sent.** The session
that :data:`SessionDep` gives a route is a dependency of scope ``"function"``: FastAPI
closes it when the route function returns, before the response starts (the default scope,
``"request"``, closes it only after the response has gone out, so a client that used a
created object at once, on the same keep-alive connection, could find it missing). A
commit that fails becomes the route's error answer; after a commit of a mutating request
(``POST``, ``PUT``, ``PATCH``, ``DELETE``) the reconcilers are woken to act on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from neocloud.errors import Unauthenticated
from neocloud.gateway.app import Gateway
from neocloud.server.crypto import SecretBox
from neocloud.server.security import bearer_token
from neocloud.server.services.principal import Caller
from neocloud.server.services.workspaces import authenticate
from neocloud.server.state import AppState
from neocloud.server.storage import VolumeStore

#: Methods whose requests change state (their commit wakes the reconcilers).
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.neocloud
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(request: Request, state: StateDep) -> Iterator[Session]:
    """A session that commits when the route returns (before the response is sent) and
    rolls back when it raises."""
    with state.db.session() as s:
        yield s
    if request.method in MUTATING_METHODS:
        state.wake_reconcilers()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_secret_box(state: StateDep) -> SecretBox:
    return state.secret_box


SecretBoxDep = Annotated[SecretBox, Depends(get_secret_box)]


def get_volume_store(state: StateDep) -> VolumeStore:
    return state.volume_store


VolumeStoreDep = Annotated[VolumeStore, Depends(get_volume_store)]


def get_gateway(state: StateDep) -> Gateway:
    return state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def bearer(request: Request) -> str:
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise Unauthenticated(
            "missing API token: send 'Authorization: Bearer <token>' "
            "(create one with 'neocloud token create')"
        )
    return token


def get_caller(request: Request, state: StateDep) -> Caller:
    """The authenticated caller (also kept on ``request.state.caller`` for the audit log).

    Raises:
        Unauthenticated: no bearer token, or one that matches no live token.
    """
    token = bearer(request)
    with state.db.session() as s:
        caller = authenticate(s, secret=token)
    if caller is None:
        raise Unauthenticated("invalid API token")
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]

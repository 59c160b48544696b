"""What every console module shares: the router, the login cookie, the templates, and who
the caller is and which workspaces a page shows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

import neocloud.web
from neocloud.errors import NotFound
from neocloud.models import Role
from neocloud.models.billing import MICROS_PER_USD
from neocloud.server.db.tables import Workspace
from neocloud.server.deps import StateDep
from neocloud.server.routers.ui import formatting
from neocloud.server.services import budgets as budget_svc
from neocloud.server.services import workspaces as ws_svc
from neocloud.server.services.principal import Caller

COOKIE = "neocloud_console"
WEB = Path(neocloud.web.__file__).parent
templates = Jinja2Templates(directory=str(WEB / "templates"))
formatting.install(templates.env)
router = APIRouter(prefix="/ui", include_in_schema=False)
static = StaticFiles(directory=str(WEB / "static"))


#: The windows the charts offer: (seconds, label); the first is the default.
CHART_WINDOWS: tuple[tuple[int, str], ...] = (
    (900, "15 min"), (3600, "1 h"), (86_400, "1 day"), (30 * 86_400, "30 days"))


class LoginRequired(Exception):
    """No valid console cookie: the page redirects to the login form."""


def console_caller(request: Request, state: StateDep) -> Caller:
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired()
    with state.db.session() as s:
        caller = ws_svc.authenticate(s, secret=token)
    if caller is None:
        raise LoginRequired()
    return caller


ConsoleCaller = Annotated[Caller, Depends(console_caller)]


def is_operator(c: Caller) -> bool:
    return c.operator and c.role is Role.admin


def scope_of(s: Session, c: Caller, ws: str | None) -> list[Workspace]:
    """The workspaces a page shows: the caller's own; for operators every one, or ``ws``."""
    if not is_operator(c):
        own = s.get(Workspace, c.workspace_id)
        assert own is not None
        return [own]
    rows = list(s.scalars(select(Workspace).order_by(Workspace.name)))
    return [w for w in rows if w.name == ws] if ws else rows


def one_workspace(s: Session, c: Caller, ws: str | None) -> Workspace:
    """The single workspace a detail page is about (the caller's own unless an operator
    names another)."""
    if ws and ws != c.workspace_name:
        if not is_operator(c):
            raise NotFound(f"workspace {ws!r} not found", param="ws")
        return ws_svc.get_workspace(s, name=ws)
    own = s.get(Workspace, c.workspace_id)
    assert own is not None
    return own


def banner(s: Session, ws_id: str) -> dict[str, Any] | None:
    try:
        b = budget_svc.budget_out(s, workspace_id=ws_id)
    except NotFound:
        return None
    if not b.crossed:
        return None
    return {"percent": b.percent, "status": b.status.value, "refusing": b.refusing,
            "spent": b.spent_micros / MICROS_PER_USD, "amount": b.monthly_micros / MICROS_PER_USD}


def page(request: Request, name: str, c: Caller, s: Session, **ctx: Any) -> HTMLResponse:
    workspaces = [w.name for w in s.scalars(select(Workspace).order_by(Workspace.name))] \
        if is_operator(c) else []
    ctx.update(caller=c, can_edit=c.role is not Role.viewer, operator=is_operator(c),
               workspaces=workspaces, ws=request.query_params.get("ws") or "",
               banner=banner(s, c.workspace_id), now=datetime.now(UTC),
               fragment=bool(request.query_params.get("fragment")),
               windows=CHART_WINDOWS, default_window=ctx.get("default_window",
                                                             CHART_WINDOWS[0][0]))
    return templates.TemplateResponse(request, name, ctx)


def install(app: Any) -> None:
    """Add the console to the FastAPI app: its pages, static files and login redirect."""
    app.include_router(router)
    app.mount("/ui/static", static, name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)


# -- login -------------------------------------------------------------------------------

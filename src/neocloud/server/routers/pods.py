"""Dev pods: create, start, stop, delete, events, logs, and an interactive shell
(WebSocket ``/api/v1/pods/{name}/shell``).

Shell protocol: the client sends ``Authorization: Bearer <token>`` on the handshake;
binary frames carry terminal bytes both ways; the client may send the text frame
``{"type": "resize", "cols": C, "rows": R}``; the server starts with the text frame
``{"type": "ready"}`` and ends with ``{"type": "exit", "code": N}``. A refused handshake
gets one text frame holding the OpenAI error object, then close code 1008 (policy
violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from neocloud.errors import Conflict, InvalidRequest, NeocloudError, Unauthenticated
from neocloud.models import EventOut, Page, Role
from neocloud.models.pods import PodCreate, PodOut, PodStatus
from neocloud.server.db.tables import Node, Pod
from neocloud.server.deps import CallerDep, SecretBoxDep, SessionDep, StateDep, VolumeStoreDep
from neocloud.server.errors_http import BUDGET_SPENT
from neocloud.server.podshell import ShellSession
from neocloud.server.security import bearer_token
from neocloud.server.services import events
from neocloud.server.services import logs as log_svc
from neocloud.server.services import pods as svc
from neocloud.server.services.workspaces import authenticate
from neocloud.server.state import AppState

log = logging.getLogger(__name__)
router = APIRouter(tags=["pods"])

#: Seconds between the checks that an open shell's token may still open it.
SHELL_RECHECK_S = 5.0
#: Largest terminal side (characters) a shell takes; the kernel's window size holds
#: 16-bit values and a larger one made opening the terminal fail.
MAX_TERMINAL = 4096


@router.post("/pods", response_model=PodOut, status_code=201, responses=BUDGET_SPENT)
def create_pod(body: PodCreate, caller: CallerDep, s: SessionDep,
               store: VolumeStoreDep) -> PodOut:
    caller.require(Role.member)
    pod = svc.create_pod(s, workspace_id=caller.workspace_id, spec=body,
                         store=store)
    return svc.pod_out(s, pod)


@router.get("/pods", response_model=Page[PodOut])
def list_pods(caller: CallerDep, s: SessionDep) -> Page[PodOut]:
    return Page(data=[svc.pod_out(s, p) for p in svc.list_pods(
        s, workspace_id=caller.workspace_id)])


@router.get("/pods/{name}", response_model=PodOut)
def get_pod(name: str, caller: CallerDep, s: SessionDep) -> PodOut:
    return svc.pod_out(s, svc.get_pod(s, workspace_id=caller.workspace_id, name=name))


@router.post("/pods/{name}/start", response_model=PodOut, responses=BUDGET_SPENT)
def start_pod(name: str, caller: CallerDep, s: SessionDep) -> PodOut:
    """Start a stopped or failed pod again; 409 (naming its state) while it runs, is on
    its way to run, or still stops."""
    caller.require(Role.member)
    pod = svc.start_pod(s, workspace_id=caller.workspace_id, name=name)
    return svc.pod_out(s, pod)


@router.post("/pods/{name}/stop", response_model=PodOut)
def stop_pod(name: str, caller: CallerDep, s: SessionDep) -> PodOut:
    """Stop a queued, starting or running pod (a started one answers ``stopping``, and is
    ``stopped`` once its process has ended); 409 (naming its state) when it is already
    stopping, stopped or failed."""
    caller.require(Role.member)
    pod = svc.stop_pod(s, workspace_id=caller.workspace_id, name=name, strict=True)
    return svc.pod_out(s, pod)


@router.delete("/pods/{name}", status_code=204)
def delete_pod(name: str, caller: CallerDep, s: SessionDep) -> Response:
    """Stop and delete the pod; its working-directory volume is kept."""
    caller.require(Role.member)
    svc.delete_pod(s, workspace_id=caller.workspace_id, name=name)
    return Response(status_code=204)


@router.get("/pods/{name}/events", response_model=Page[EventOut])
def pod_events(name: str, caller: CallerDep, s: SessionDep,
               limit: int = Query(100, ge=1, le=1000)) -> Page[EventOut]:
    svc.get_pod(s, workspace_id=caller.workspace_id, name=name)
    rows = events.list_events(s, workspace_id=caller.workspace_id, kind="pod", name=name,
                              limit=limit)
    return Page(data=[EventOut.model_validate(e) for e in rows])


@router.get("/pods/{name}/logs", response_class=PlainTextResponse)
def pod_logs(name: str, caller: CallerDep, s: SessionDep, state: StateDep, box: SecretBoxDep,
             tail: int | None = Query(None, ge=0, le=100_000)) -> PlainTextResponse:
    """The pod process's own output (its ``sshd`` log); secret values shown as ``***``."""
    return PlainTextResponse(log_svc.pod_logs(
        s, backends=state.backends, box=box, workspace_id=caller.workspace_id, name=name,
        tail=tail))


# -- the shell --------------------------------------------------------------------------
def _shell_target(state: AppState, header: str, name: str, *, touch: bool = True
                  ) -> tuple[str, int, str]:
    """Authenticate the handshake and find the running pod: ``(host, port, pod id)``.
    With ``touch`` the pod's last activity is now (a shell opened).

    Raises:
        Unauthenticated, PermissionDenied, NotFound (other workspaces' pods too),
        Conflict: the pod is not running.
    """
    token = bearer_token(header)
    if token is None:
        raise Unauthenticated("missing API token: send 'Authorization: Bearer <token>'")
    with state.db.session() as s:
        caller = authenticate(s, secret=token)
        if caller is None:
            raise Unauthenticated("invalid API token")
        caller.require(Role.member)
        pod = svc.get_pod(s, workspace_id=caller.workspace_id, name=name)
        node = s.get(Node, pod.node_id) if pod.node_id else None
        if pod.status != PodStatus.running or node is None or not pod.ssh_port:
            raise Conflict(f"pod {name!r} is {pod.status}, not running; start it with "
                           f"'neocloud pod start {name}'", param="name")
        if touch:
            pod.last_activity_at = datetime.now(UTC)
        return node.address, pod.ssh_port, pod.id


def terminal_size(cols: int, rows: int) -> tuple[int, int]:
    """The terminal size asked for, checked: each side ``1..MAX_TERMINAL`` characters.

    Raises:
        InvalidRequest: a side out of range (``param`` ``cols`` or ``rows``). Such a size
            once reached the pseudo-terminal and failed there (``struct.error``) after the
            terminal was opened: two file descriptors leaked per attempt, so repeated
            handshakes could exhaust the control plane's descriptors.
    """
    for param, value in (("cols", cols), ("rows", rows)):
        if not 1 <= value <= MAX_TERMINAL:
            raise InvalidRequest(f"{param} must be 1..{MAX_TERMINAL} characters, not {value}",
                                 param=param)
    return cols, rows


def _resize_of(ctl: dict[str, object]) -> tuple[int, int] | None:
    """The size of a ``resize`` control frame, clamped to ``1..MAX_TERMINAL``; ``None``
    when it holds no numbers (the frame is ignored: a bad frame must not end the shell
    with a server error)."""
    try:
        cols, rows = int(ctl.get("cols", 80)), int(ctl.get("rows", 24))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return (min(max(cols, 1), MAX_TERMINAL), min(max(rows, 1), MAX_TERMINAL))


def _touch(state: AppState, pod_id: str) -> None:
    with state.db.session() as s:
        pod = s.get(Pod, pod_id)
        if pod is not None:
            pod.last_activity_at = datetime.now(UTC)


@router.websocket("/pods/{name}/shell")
async def pod_shell(websocket: WebSocket, name: str, cols: int = 80, rows: int = 24,
                    command: str | None = None) -> None:
    """An interactive shell in the pod (see the module docstring for the protocol)."""
    state: AppState = websocket.app.state.neocloud
    header = websocket.headers.get("authorization", "")
    try:
        host, port, pod_id = await run_in_threadpool(_shell_target, state, header, name)
        cols, rows = terminal_size(cols, rows)
        session = await run_in_threadpool(
            lambda: ShellSession(home=state.settings.home, host=host, port=port,
                                 user=svc.ssh_user(), cols=cols, rows=rows, command=command))
    except NeocloudError as e:
        await websocket.accept()
        await websocket.send_text(json.dumps(e.to_wire()))
        await websocket.close(code=1008)
        return
    except OSError as e:
        await websocket.accept()
        err = NeocloudError(f"cannot open a shell: {e.strerror}")
        await websocket.send_text(json.dumps(err.to_wire()))
        await websocket.close(code=1011)
        return
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "ready"}))
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        data = session.read()
        out.put_nowait(data)
        if not data:
            loop.remove_reader(session.fd)

    loop.add_reader(session.fd, readable)

    async def pump_out() -> None:
        while data := await out.get():
            await websocket.send_bytes(data)

    async def pump_in() -> None:
        last_touch = loop.time()
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes"):
                session.write(msg["bytes"])
            elif msg.get("text"):
                try:
                    ctl = json.loads(msg["text"])
                except ValueError:
                    continue
                if isinstance(ctl, dict) and ctl.get("type") == "resize":
                    size = _resize_of(ctl)
                    if size is not None:
                        session.resize(*size)
                elif isinstance(ctl, dict) and ctl.get("type") == "input":
                    session.write(str(ctl.get("data", "")).encode())
            if loop.time() - last_touch > 30:
                last_touch = loop.time()
                await run_in_threadpool(_touch, state, pod_id)

    refused: list[NeocloudError] = []

    async def watch_access() -> None:
        """Invariant: a shell stays open only while its token could open it now. A token
        deleted (or the pod gone or stopped) ends the shell within
        :data:`SHELL_RECHECK_S`; the handshake alone once let a revoked token keep its
        shell for as long as the connection lived."""
        while True:
            await asyncio.sleep(SHELL_RECHECK_S)
            try:
                await run_in_threadpool(_shell_target, state, header, name, touch=False)
            except NeocloudError as e:
                refused.append(e)
                return

    tasks = [asyncio.ensure_future(pump_out()), asyncio.ensure_future(pump_in()),
             asyncio.ensure_future(watch_access())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await t
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(session.fd)
        code = await run_in_threadpool(session.close)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            if refused:
                err = refused[0]
                await websocket.send_bytes(f"\r\nneocloud: shell closed: {err.message}\r\n"
                                           .encode())
                await websocket.send_text(json.dumps(err.to_wire()))
            await websocket.send_text(json.dumps({"type": "exit", "code": code}))
            await websocket.close()

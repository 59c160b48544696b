"""Jobs, their events and the logs of their workers."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from neocloud.models import EventOut, Page, Role
from neocloud.models.jobs import JobCreate, JobOut
from neocloud.server.deps import CallerDep, SecretBoxDep, SessionDep, StateDep
from neocloud.server.errors_http import BUDGET_SPENT
from neocloud.server.services import events
from neocloud.server.services import jobs as svc
from neocloud.server.services import logs as log_svc

router = APIRouter(tags=["jobs"])


@router.post("/jobs", response_model=JobOut, status_code=201, responses=BUDGET_SPENT)
def create_job(body: JobCreate, caller: CallerDep, s: SessionDep) -> JobOut:
    caller.require(Role.member)
    job = svc.create_job(s, workspace_id=caller.workspace_id, spec=body)
    return svc.job_out(s, job)


@router.get("/jobs", response_model=Page[JobOut])
def list_jobs(caller: CallerDep, s: SessionDep) -> Page[JobOut]:
    return Page(data=[svc.job_out(s, j) for j in svc.list_jobs(
        s, workspace_id=caller.workspace_id)])


@router.get("/jobs/{name}", response_model=JobOut)
def get_job(name: str, caller: CallerDep, s: SessionDep) -> JobOut:
    return svc.job_out(s, svc.get_job(s, workspace_id=caller.workspace_id, name=name))


@router.post("/jobs/{name}/stop", response_model=JobOut)
def stop_job(name: str, caller: CallerDep, s: SessionDep) -> JobOut:
    """Stop the job (SIGTERM to its workers, SIGKILL after the grace period); logs stay."""
    caller.require(Role.member)
    job = svc.stop_job(s, workspace_id=caller.workspace_id, name=name)
    return svc.job_out(s, job)


@router.delete("/jobs/{name}", status_code=204)
def delete_job(name: str, caller: CallerDep, s: SessionDep, state: StateDep) -> Response:
    """Delete a finished job with its logs and working directories (409 while it is
    live); the volumes it mounted keep their files."""
    caller.require(Role.member)
    svc.delete_job(s, workspace_id=caller.workspace_id, name=name,
                   logs_root=state.settings.logs_dir, work_root=state.settings.home / "jobs")
    return Response(status_code=204)


@router.get("/jobs/{name}/events", response_model=Page[EventOut])
def job_events(name: str, caller: CallerDep, s: SessionDep,
               limit: int = Query(100, ge=1, le=1000)) -> Page[EventOut]:
    svc.get_job(s, workspace_id=caller.workspace_id, name=name)
    rows = events.list_events(s, workspace_id=caller.workspace_id, kind="job", name=name,
                              limit=limit)
    return Page(data=[EventOut.model_validate(e) for e in rows])


@router.get("/jobs/{name}/logs", response_class=PlainTextResponse)
def job_logs(
    name: str,
    caller: CallerDep,
    s: SessionDep,
    state: StateDep,
    box: SecretBoxDep,
    worker: int | None = Query(None, ge=0),
    attempt: int | None = Query(None, ge=1),
    tail: int | None = Query(None, ge=0, le=100_000),
) -> PlainTextResponse:
    """Output of one worker (``worker``), or of every worker under ``==> worker R <==``
    headers (a job of one worker: its output alone), of one attempt (default: the latest).
    Secret values are shown as ``***``."""
    return PlainTextResponse(log_svc.job_logs(
        s, backends=state.backends, box=box, workspace_id=caller.workspace_id, name=name,
        worker=worker, attempt=attempt, tail=tail))

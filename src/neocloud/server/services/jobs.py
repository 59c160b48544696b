"""Jobs: validate, write the row as ``queued``, wake the reconciler; stop, delete, read.

The reconciler (``server.reconcilers.jobs``) places the workers as a gang, starts,
watches, retries and meters them.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, InvalidRequest, NotFound
from neocloud.models.jobs import JobCreate, JobOut, JobStatus, JobWorkerOut, WorkerStatus
from neocloud.models.volumes import VolumeMount
from neocloud.server.db.tables import Job, JobWorker, Node
from neocloud.server.services import budgets as budget_svc
from neocloud.server.services import events
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services.envvars import check_env
from neocloud.server.services.lifecycle import lock_row, set_status
from neocloud.server.services.oncommit import after_commit
from neocloud.server.services.removal import delete_locked
from neocloud.server.services.shapes import get_shape

#: Variables neocloud sets in every job worker; a job may not set them itself.
DISTRIBUTED_ENV = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "NODE_RANK", "LOCAL_RANK", "NNODES",
    "LOCAL_WORLD_SIZE",
})
LIVE = (JobStatus.queued, JobStatus.starting, JobStatus.running, JobStatus.retrying,
        JobStatus.stopping)


def _find(s: Session, *, workspace_id: str, name: str) -> Job | None:
    return s.scalars(select(Job).where(Job.workspace_id == workspace_id, Job.name == name)).first()


def get_job(s: Session, *, workspace_id: str, name: str, lock: bool = False) -> Job:
    """The job ``name`` of the workspace; :class:`NotFound` for any other workspace's.

    With ``lock`` the newest row, locked until the transaction ends (``lifecycle.lock_row``),
    so that a change decided on it cannot race the job reconciler.
    """
    job = _find(s, workspace_id=workspace_id, name=name)
    if job is not None and lock:
        job = lock_row(s, Job, job.id)
    if job is None:
        raise NotFound(f"job {name!r} not found", param="name")
    return job


def create_job(s: Session, *, workspace_id: str, spec: JobCreate) -> Job:
    """Store a new job as ``queued``.

    Raises:
        AlreadyExists: a job of that name exists in the workspace (409).
        NotFound: unknown shape, secret or volume (404, naming the field).
        InvalidRequest: an empty program (``command.0``), bad env names, or env that
            neocloud sets itself (400).
    """
    if not spec.command[0].strip():
        # Accepted once, then every attempt (retries too) failed with exit code 126.
        raise InvalidRequest("command[0] must name the program to run", param="command.0")
    check_env(spec.env)
    for key in spec.env:
        if key in DISTRIBUTED_ENV:
            raise InvalidRequest(f"env name {key!r} is set by neocloud for distributed jobs",
                                 param="env")
    get_shape(s, name=spec.shape, param="shape")
    # Budget hard stop: new work of a workspace over its budget is refused (402).
    budget_svc.require_within_budget(s, workspace_id=workspace_id)
    secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets, env=spec.env)
    volume_svc.check_mounts(s, workspace_id=workspace_id, mounts=spec.volumes)
    if _find(s, workspace_id=workspace_id, name=spec.name) is not None:
        raise AlreadyExists(f"job {spec.name!r} already exists (remove it with "
                            f"'neocloud job rm {spec.name}' to reuse the name)", param="name")
    job = Job(
        workspace_id=workspace_id, name=spec.name, command=list(spec.command), shape=spec.shape,
        workers=spec.workers, env=dict(spec.env), secrets=dict(spec.secrets),
        volumes=[m.model_dump() for m in spec.volumes], max_retries=spec.max_retries,
        time_limit_s=spec.time_limit_s, priority=spec.priority, preemptible=spec.preemptible,
        status=JobStatus.queued.value, reason="waiting to be scheduled",
    )
    s.add(job)
    s.flush()
    events.record(s, workspace_id=workspace_id, kind="job", name=job.name, object_id=job.id,
                  reason="Created",
                  message=f"job {job.name} created: {spec.workers} x {spec.shape}, "
                          f"max {spec.max_retries} retries")
    return job


def list_jobs(s: Session, *, workspace_id: str) -> list[Job]:
    return list(s.scalars(
        select(Job).where(Job.workspace_id == workspace_id).order_by(Job.created_at)
    ))


def stop_job(s: Session, *, workspace_id: str, name: str) -> Job:
    """Ask the job to stop. A job that holds no workers stops at once; running workers get
    SIGTERM, then SIGKILL after the grace period, and their logs are kept. Stopping a
    finished job changes nothing. The job row is locked first, so the stop cannot be lost
    to a placement of the job running at the same moment (that placement either
    committed before, and the workers are stopped, or sees the job stopped)."""
    job = get_job(s, workspace_id=workspace_id, name=name, lock=True)
    status = JobStatus(job.status)
    if status.finished or status is JobStatus.stopping:
        return job
    now = datetime.now(UTC)
    job.updated_at = now
    if status in (JobStatus.queued, JobStatus.retrying):
        job.finished_at = now
        job.reason = "stopped by the user before it ran" if not job.attempt else \
            "stopped by the user"
        set_status(s, job, JobStatus.stopped, reason="Stopped",
                   message="job stopped by the user")
    else:
        job.reason = "stop requested by the user"
        set_status(s, job, JobStatus.stopping, reason="Stopping",
                   message="stop requested by the user")
    return job


def delete_job(s: Session, *, workspace_id: str, name: str, logs_root: Path,
               work_root: Path | None = None) -> None:
    """Delete a finished job with its workers, logs and (given ``work_root``, the
    control plane's ``<home>/jobs``) its workers' working directories.

    Its workers' allocations go with them in the same transaction (foreign keys; a
    finished job's workers hold none). Invariant: nothing of a deleted job stays on disk;
    the working directories (whatever the workers wrote to their current directory,
    checkpoints included) were once kept forever. Volumes mounted there are links, which
    the removal deletes without following, so the volumes' files stay. Of concurrent
    deletes of one job exactly one succeeds (:mod:`.removal`).

    Raises:
        NotFound: no such job, or another call deleted it first.
        Conflict: the job is still live (stop it first).
    """
    job = get_job(s, workspace_id=workspace_id, name=name, lock=True)
    if not JobStatus(job.status).finished:
        raise Conflict(f"job {name!r} is {job.status}; stop it first "
                       f"('neocloud job stop {name}')", param="name")
    s.execute(delete(JobWorker).where(JobWorker.job_id == job.id))
    events.record(s, workspace_id=workspace_id, kind="job", name=name, object_id=job.id,
                  reason="Deleted", message="job deleted")
    delete_locked(s, job, missing=f"job {name!r} not found")
    folders = [job_logs_dir(logs_root, job.id)]
    if work_root is not None:
        folders.append(job_work_dir(work_root, job.id))

    def remove() -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    # Once committed: a failed commit keeps the job and its files.
    after_commit(s, remove, what=f"removing the files of job {name}")


def job_work_dir(work_root: Path, job_id: str) -> Path:
    """Folder of a job's working directories: ``<home>/jobs/<job id>/`` (one
    ``attempt-<k>/worker-<rank>`` folder per worker start)."""
    return work_root / job_id


def job_logs_dir(logs_root: Path, job_id: str) -> Path:
    """Folder of a job's worker logs: ``<logs>/jobs/<job id>/``."""
    return logs_root / "jobs" / job_id


def worker_log_path(logs_root: Path, job_id: str, attempt: int, rank: int) -> Path:
    """``<logs>/jobs/<job id>/attempt-<k>/worker-<rank>.log``."""
    return job_logs_dir(logs_root, job_id) / f"attempt-{attempt}" / f"worker-{rank}.log"


def workers_of(s: Session, job: Job, attempt: int | None = None) -> list[JobWorker]:
    """Workers of one attempt (default: the current one), by rank."""
    k = job.attempt if attempt is None else attempt
    return list(s.scalars(
        select(JobWorker).where(JobWorker.job_id == job.id, JobWorker.attempt == k)
        .order_by(JobWorker.rank)
    ))


def job_out(s: Session, job: Job) -> JobOut:
    node_names = {n.id: n.name for n in s.scalars(select(Node))}
    workers = [
        JobWorkerOut(rank=w.rank, attempt=w.attempt, status=WorkerStatus(w.status),
                     node=node_names.get(w.node_id) if w.node_id else None,
                     gpu_indices=list(w.gpu_indices), pid=w.pid, exit_code=w.exit_code,
                     started_at=w.started_at, finished_at=w.finished_at)
        for w in workers_of(s, job)
    ]
    return JobOut(
        id=job.id, name=job.name, command=list(job.command), shape=job.shape,
        workers=job.workers, env=dict(job.env), secrets=dict(job.secrets),
        volumes=[VolumeMount.model_validate(m) for m in job.volumes],
        max_retries=job.max_retries, attempt=job.attempt, failures=job.failures,
        time_limit_s=job.time_limit_s,
        priority=job.priority, preemptible=job.preemptible, status=JobStatus(job.status),
        reason=job.reason, exit_code=job.exit_code, message=job.message,
        created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at,
        finished_at=job.finished_at, worker_list=workers,
    )

"""The job reconciler: places each queued job's workers as a gang, starts and watches
them, retries failed attempts, enforces time limits, meters the running time.

Each pass, per live job: fetch and lock the row (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), decide and write the new states, commit, then act on the backend (start or
stop worker processes), then write what the backend answered. Worker processes run under
``python -m neocloud.jobrun``, which records the exit code in a file beside the worker's
log, so a worker that ends while the control plane is down is read correctly after the
restart; a running worker is found again through its handle (pid + start time), never
started twice.

Job life (see :class:`neocloud.models.jobs.JobStatus`): ``queued`` → ``starting`` (all
workers placed at once, allocations written, processes launching) → ``running`` →
``succeeded`` | ``failed`` | ``stopped``. When a worker fails, the others are stopped; the
attempt is retried after ``base × 2^(failures-1)`` seconds (capped; the deployment
restart back-off settings) while ``failures <= max_retries`` (status ``retrying``), else
the job fails with the worker's exit code and last log lines. A job over its time limit
is stopped and fails without retry.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import NeocloudError
from neocloud.jobrun import read_exit
from neocloud.models.jobs import LAST_LINES, JobStatus
from neocloud.models.volumes import VolumeMount
from neocloud.server.backends.base import Backend, WorkloadSpec, backend_for, start_or_adopt
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Job, JobWorker, Node, Shape
from neocloud.server.metering.records import meter_running
from neocloud.server.reconcilers.common import lock_row, reconcile_each, reconcile_locked
from neocloud.server.reconcilers.deployments import backoff_s, free_port, now
from neocloud.server.scheduler import Unschedulable
from neocloud.server.services import events, placement
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services.jobs import LIVE, worker_log_path, workers_of
from neocloud.server.services.secrets import redact
from neocloud.server.settings import Settings
from neocloud.server.storage import VolumeStore

log = logging.getLogger(__name__)

#: Worker states that hold a process (or are about to).
ACTIVE = ("starting", "running", "stopping")
#: Kind of the allocation rows of job workers (one per worker, ``owner_id`` = worker id).
ALLOC_KIND = "job"


def exit_file(log_path: str | Path) -> Path:
    """Where ``jobrun`` records a worker's exit code: beside its log, ``.exit``."""
    return Path(log_path).with_suffix(".exit")


class JobReconciler:
    """Drives every live job. Call :meth:`run_once` in a loop.

    Args:
        db: the database.
        backends: backend per node ``backend`` name.
        settings: control-plane settings (back-off, grace, metering period, folders).
        box: decrypts the secrets injected into workers.
        store: volume storage (mounts).
    """

    def __init__(self, db: Database, backends: dict[str, Backend], settings: Settings, *,
                 box: SecretBox, store: VolumeStore):
        self.db = db
        self.backends = backends
        self.settings = settings
        self.box = box
        self.store = store

    # -- the loop ---------------------------------------------------------------------
    def run_once(self) -> None:
        with self.db.session() as s:
            ids = list(s.scalars(
                select(Job.id).where(Job.status.in_([x.value for x in LIVE]))
                .order_by(Job.priority.desc(), Job.created_at)
            ))
        reconcile_each(self.db, "job", ids, self._reconcile)

    def reconcile(self, job_id: str) -> None:
        """One pass over one job (several short transactions), under the lock on the job
        shared by every control-plane copy."""
        reconcile_locked(self.db, "job", job_id, self._reconcile)

    def _reconcile(self, job_id: str) -> None:
        with self.db.session() as s:
            job = lock_row(s, Job, job_id)
            if job is None:
                return
            if job.status == JobStatus.retrying and (
                    job.next_attempt_at is None or job.next_attempt_at <= now()):
                job.status = JobStatus.queued.value
                job.reason = (f"retry {job.failures} of {job.max_retries}: "
                              "waiting to be scheduled")
                job.updated_at = now()
            status = job.status
        if status == JobStatus.queued:
            self._schedule(job_id)
        self._start_missing(job_id)
        self._poll(job_id)
        for wid in self._decide_stops(job_id):
            self._stop_worker(wid)
        self._finish(job_id)
        self._meter_all(job_id)

    # -- scheduling -------------------------------------------------------------------
    def _schedule(self, job_id: str) -> None:
        with self.db.session() as s:
            job = lock_row(s, Job, job_id)
            if job is None or job.status != JobStatus.queued:
                return
            shape = s.get(Shape, job.shape)
            if shape is None:
                self._end(s, job, JobStatus.failed, f"shape {job.shape!r} no longer exists")
                return
            try:
                secret_svc.check_refs(s, workspace_id=job.workspace_id, refs=job.secrets,
                                      env=job.env)
                volume_svc.check_mounts(s, workspace_id=job.workspace_id,
                                        mounts=_mounts(job))
            except NeocloudError as e:
                self._end(s, job, JobStatus.failed, f"cannot start: {e.message}")
                return
            request = placement.request_for_shape(shape)
            result = placement.schedule(s, workspace_id=job.workspace_id,
                                        requests=[request] * job.workers, priority=job.priority)
            if isinstance(result, placement.Preempt):
                placement.preempt(s, victims=result.victims,
                                  reason=f"preempted by job {job.name} (priority {job.priority})")
                self._queued(s, job, f"{placement.PREEMPTING}{len(result.victims)} "
                                     f"lower-priority workload(s) to make room: {result.reason}")
                return
            if isinstance(result, Unschedulable):
                self._queued(s, job, result.reason)
                return
            job.attempt += 1
            first = s.get(Node, result[0].node_id)
            master_addr = first.address if first else "127.0.0.1"
            master_port = free_port()
            t = now()
            where: list[str] = []
            for rank, b in enumerate(result):
                w = JobWorker(
                    job_id=job.id, workspace_id=job.workspace_id, attempt=job.attempt, rank=rank,
                    status="starting", node_id=b.node_id, gpu_indices=list(b.gpu_indices),
                    master_addr=master_addr, master_port=master_port, started_at=t,
                    log_path=str(worker_log_path(self.settings.logs_dir, job.id, job.attempt,
                                                 rank)),
                )
                s.add(w)
                s.flush()
                placement.bind(s, binding=b, workspace_id=job.workspace_id, kind=ALLOC_KIND,
                               owner_id=w.id, priority=job.priority,
                               preemptible=job.preemptible)
                node = s.get(Node, b.node_id)
                gpus = f" GPUs {list(b.gpu_indices)}" if b.gpu_indices else ""
                where.append(f"{rank}->{node.name if node else '?'}{gpus}")
            job.status, job.reason = JobStatus.starting.value, None
            job.started_at = job.started_at or t
            job.next_attempt_at = None
            job.updated_at = t
            events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                          object_id=job.id, reason="Scheduled",
                          message=f"attempt {job.attempt}: {job.workers} worker(s) placed "
                                  f"({', '.join(where)})")

    def _queued(self, s: Session, job: Job, reason: str) -> None:
        job.reason = reason
        events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                      object_id=job.id, reason="Unschedulable", message=reason, warning=True,
                      dedupe=True)

    # -- starting ---------------------------------------------------------------------
    def _backend(self, s: Session, node_id: str | None) -> tuple[Backend, Node] | None:
        return backend_for(self.backends, s.get(Node, node_id) if node_id else None,
                           lambda n: n.backend)

    def _start_missing(self, job_id: str) -> None:
        """Start every worker written ``starting`` without a process handle: just placed,
        or placed right before a control-plane crash (no process exists without its
        handle recorded except in that window, so none is started twice)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.status not in (JobStatus.starting, JobStatus.running):
                return
            ids = [w.id for w in workers_of(s, job) if w.status == "starting" and not w.handle]
        for wid in ids:
            self._start_worker(wid)

    def workdir(self, job_id: str, attempt: int, rank: int) -> Path:
        """Working directory of a worker: ``<home>/jobs/<job id>/attempt-<k>/worker-<r>``."""
        return self.settings.home / "jobs" / job_id / f"attempt-{attempt}" / f"worker-{rank}"

    def _start_worker(self, wid: str) -> None:
        with self.db.session() as s:
            w = s.get(JobWorker, wid)
            job = s.get(Job, w.job_id) if w else None
            if w is None or job is None or w.status != "starting" or w.handle:
                return
            found = self._backend(s, w.node_id)
            if found is None:
                self._worker_done(s, w, None, "failed", "node or backend is gone")
                return
            be, node = found
            workdir = self.workdir(job.id, w.attempt, w.rank)
            try:
                workdir.mkdir(parents=True, exist_ok=True)
                secret_env = secret_svc.resolve(s, workspace_id=job.workspace_id,
                                                refs=job.secrets, box=self.box)
                mount_env = volume_svc.prepare_mounts(
                    self.store, workspace_id=job.workspace_id, mounts=job.volumes,
                    workdir=workdir)
            except (NeocloudError, OSError) as e:
                msg = e.message if isinstance(e, NeocloudError) else str(e)
                self._worker_done(s, w, None, "failed", f"cannot start: {msg}")
                return
            env = {**{k: str(v) for k, v in job.env.items()}, **mount_env, **secret_env,
                   **self.distributed_env(w, job.workers),
                   "NEOCLOUD_JOB": job.name, "NEOCLOUD_JOB_ATTEMPT": str(w.attempt)}
            log_path = Path(w.log_path or worker_log_path(self.settings.logs_dir, job.id,
                                                          w.attempt, w.rank))
            exit_file(log_path).unlink(missing_ok=True)
            spec = WorkloadSpec(
                workload_id=w.id,
                command=[self.settings.python or sys.executable, "-m", "neocloud.jobrun",
                         "--exit-file", str(exit_file(log_path)), "--", *job.command],
                env=env, cwd=workdir, gpu_indices=tuple(w.gpu_indices), log_path=log_path,
                node_address=node.address,
            )
        try:
            handle = start_or_adopt(be, spec)
        except (OSError, ValueError) as e:
            with self.db.session() as s:
                w = s.get(JobWorker, wid)
                if w is not None:
                    self._worker_done(s, w, None, "failed", f"could not start: {e.strerror}")
            return
        with self.db.session() as s:
            w = s.get(JobWorker, wid)
            if w is not None:
                w.handle, w.pid = handle, handle.get("pid")

    @staticmethod
    def distributed_env(w: JobWorker, workers: int) -> dict[str, str]:
        """What ``torch.distributed`` (``env://``) and ``torchrun`` read: one process per
        worker, worker ``rank`` on node ``rank``, the master on worker 0."""
        return {
            "MASTER_ADDR": w.master_addr, "MASTER_PORT": str(w.master_port),
            "WORLD_SIZE": str(workers), "RANK": str(w.rank), "NODE_RANK": str(w.rank),
            "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "NNODES": str(workers),
        }

    # -- watching ---------------------------------------------------------------------
    def _poll(self, job_id: str) -> None:
        """Record the exit of every worker whose process has ended."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            rows = [(w.id, w.node_id, dict(w.handle), w.log_path)
                    for w in workers_of(s, job) if w.status in ("starting", "running")
                    and w.handle]
            backends = {w[0]: self._backend(s, w[1]) for w in rows}
        for wid, _node, handle, log_path in rows:
            found = backends[wid]
            if found is None:
                continue
            state = found[0].inspect(handle)
            if state.running:
                with self.db.session() as s:
                    w = s.get(JobWorker, wid)
                    if w is not None and w.status == "starting":
                        w.status = "running"
                continue
            code = read_exit(exit_file(log_path)) if log_path else None
            if code is None:
                code = state.exit_code
            with self.db.session() as s:
                w = s.get(JobWorker, wid)
                if w is not None and w.status in ("starting", "running"):
                    self._worker_done(s, w, code, "succeeded" if code == 0 else "failed")

    def _worker_done(self, s: Session, w: JobWorker, code: int | None, status: str,
                     why: str | None = None) -> None:
        """Write a worker's end, meter its last stretch and free its allocation."""
        w.status, w.exit_code, w.finished_at = status, code, now()
        self._meter_row(s, w, final=True)
        placement.release(s, owner_id=w.id)
        job = s.get(Job, w.job_id)
        if job is not None and status == "failed":
            text = why or (f"exited with code {code}" if code is not None else
                           "exited (exit code unknown)")
            events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                          object_id=w.id, reason="WorkerFailed", warning=True,
                          message=f"attempt {w.attempt} worker {w.rank} {text}")
            if why:
                job.message = why

    def _over_time(self, job: Job, workers: list[JobWorker]) -> bool:
        if not job.time_limit_s:
            return False
        starts = [w.started_at for w in workers if w.started_at]
        return bool(starts) and (now() - min(starts)).total_seconds() > job.time_limit_s

    def _decide_stops(self, job_id: str) -> list[str]:
        """Mark the workers to stop (``stopping``); returns their ids."""
        with self.db.session() as s:
            job = lock_row(s, Job, job_id)
            if job is None:
                return []
            workers = workers_of(s, job)
            live = [w for w in workers if w.status in ACTIVE]
            stop = False
            if job.status == JobStatus.stopping:
                stop = True
            elif job.status in (JobStatus.starting, JobStatus.running):
                stop = any(w.status == "failed" for w in workers) or self._over_time(job, workers)
            if not stop:
                return [w.id for w in live if w.status == "stopping"]
            for w in live:
                w.status = "stopping"
            return [w.id for w in live]

    def _stop_worker(self, wid: str) -> None:
        with self.db.session() as s:
            w = s.get(JobWorker, wid)
            if w is None or w.status != "stopping":
                return
            found = self._backend(s, w.node_id)
            handle, log_path = dict(w.handle), w.log_path
        state = None
        if found is not None and handle:
            state = found[0].stop(handle, grace_s=self.settings.job_stop_grace_s)
        code = read_exit(exit_file(log_path)) if log_path else None
        if code is None and state is not None:
            code = state.exit_code
        with self.db.session() as s:
            w = s.get(JobWorker, wid)
            if w is not None and w.status == "stopping":
                self._worker_done(s, w, code, "stopped")

    # -- ending -----------------------------------------------------------------------
    def _finish(self, job_id: str) -> None:
        """Move the job on once its workers' states allow it."""
        with self.db.session() as s:
            job = lock_row(s, Job, job_id)
            if job is None or job.status not in (JobStatus.starting, JobStatus.running,
                                                 JobStatus.stopping):
                return
            workers = workers_of(s, job)
            if any(w.status in ACTIVE for w in workers):
                if job.status == JobStatus.starting and workers and all(
                        w.handle and w.status in ("running", "succeeded") for w in workers):
                    job.status, job.updated_at = JobStatus.running.value, now()
                    events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                                  object_id=job.id, reason="Running",
                                  message=f"attempt {job.attempt}: all {job.workers} "
                                          "worker(s) running")
                return
            if job.status == JobStatus.stopping:
                if job.requeue:
                    job.requeue = False
                    job.status = JobStatus.queued.value
                    job.reason = f"{job.reason or 'interrupted'}; waiting to be scheduled"
                    job.updated_at = now()
                    events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                                  object_id=job.id, reason="Requeued", message=job.reason)
                else:
                    self._end(s, job, JobStatus.stopped, job.reason or "stopped")
                return
            failed = [w for w in workers if w.status == "failed"]
            if failed:
                self._attempt_failed(s, job, min(failed, key=lambda w: w.finished_at or now()))
            elif any(w.status == "stopped" for w in workers):
                limit = job.time_limit_s or 0
                self._end(s, job, JobStatus.failed,
                          f"time limit of {limit:g} s exceeded; workers were stopped")
            elif workers and all(w.status == "succeeded" for w in workers):
                job.exit_code = 0
                self._end(s, job, JobStatus.succeeded,
                          f"all {job.workers} worker(s) exited with code 0")

    def _attempt_failed(self, s: Session, job: Job, w: JobWorker) -> None:
        job.failures += 1
        code = w.exit_code
        what = job.message if (code is None and job.message) else (
            f"worker {w.rank} exited with code {code}" if code is not None
            else f"worker {w.rank} exited (exit code unknown)")
        last = self._last_lines(s, job, w)
        if job.failures <= job.max_retries:
            delay = backoff_s(job.failures, base=self.settings.restart_backoff_base_s,
                              cap=self.settings.restart_backoff_max_s)
            job.status = JobStatus.retrying.value
            job.next_attempt_at = now() + timedelta(seconds=delay)
            job.reason = (f"attempt {job.attempt} failed: {what}; retry {job.failures} of "
                          f"{job.max_retries} in {delay:.0f} s")
            job.message = last or job.message
            job.updated_at = now()
            events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                          object_id=job.id, reason="Retrying", warning=True, message=job.reason)
            return
        job.exit_code = code
        job.message = last or job.message
        tries = f" (after {job.attempt} attempts)" if job.attempt > 1 else ""
        self._end(s, job, JobStatus.failed, f"{what}{tries}")

    def _last_lines(self, s: Session, job: Job, w: JobWorker) -> str | None:
        found = self._backend(s, w.node_id)
        if found is None or not w.handle:
            return None
        text = found[0].logs(dict(w.handle), tail=LAST_LINES).rstrip()
        return redact(text, self.secret_values(s, job)) if text else None

    def secret_values(self, s: Session, job: Job) -> list[str]:
        """The current values of the job's secrets (for redaction), skipping missing ones."""
        try:
            return list(secret_svc.resolve(s, workspace_id=job.workspace_id, refs=job.secrets,
                                           box=self.box).values())
        except NeocloudError:
            return []

    def _end(self, s: Session, job: Job, status: JobStatus, reason: str) -> None:
        job.status, job.reason = status.value, reason
        job.finished_at = job.updated_at = now()
        word = {"succeeded": "Succeeded", "failed": "Failed", "stopped": "Stopped"}[status.value]
        events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                      object_id=job.id, reason=word, warning=status is JobStatus.failed,
                      message=f"job {status.value}: {reason}")

    # -- shutdown, preemption ---------------------------------------------------------
    def stop_local_jobs(self) -> int:
        """Stop every job worker on a ``local`` node (``neocloud up`` shutdown); their jobs
        are queued again and run anew at the next start. Returns the count of workers."""
        with self.db.session() as s:
            rows = s.execute(
                select(JobWorker.id, JobWorker.job_id).join(Node, Node.id == JobWorker.node_id)
                .where(Node.backend == "local", JobWorker.status.in_(ACTIVE))
            ).all()
            for wid, job_id in rows:
                w, job = s.get(JobWorker, wid), s.get(Job, job_id)
                if w is not None:
                    w.status = "stopping"
                if job is not None and job.status in (JobStatus.starting, JobStatus.running):
                    job.status, job.requeue = JobStatus.stopping.value, True
                    job.reason = "the control plane was shut down"
        for wid, _job in rows:
            try:
                self._stop_worker(wid)
            except Exception:
                log.exception("stopping job worker %s failed", wid)
        for job_id in {r[1] for r in rows}:
            try:
                self._finish(job_id)
            except Exception:
                log.exception("requeueing job %s failed", job_id)
        return len(rows)

    # -- metering ---------------------------------------------------------------------
    def _meter_all(self, job_id: str) -> None:
        with self.db.session() as s:
            for w in s.scalars(select(JobWorker).where(JobWorker.job_id == job_id,
                                                       JobWorker.status.in_(ACTIVE))):
                self._meter_row(s, w, final=False)

    def _meter_row(self, s: Session, w: JobWorker, *, final: bool) -> None:
        job = s.get(Job, w.job_id)
        meter_running(s, w, period_s=self.settings.usage_period_s, final=final,
                      workspace_id=w.workspace_id, kind="job", object_id=w.id,
                      name=job.name if job else w.id,
                      shape=s.get(Shape, job.shape) if job else None)


def _mounts(job: Job) -> list[VolumeMount]:
    return [VolumeMount.model_validate(m) for m in job.volumes]


def preempt_job_worker(s: Session, worker_id: str, reason: str) -> None:
    """Preemption handler of job workers: the whole job stops and is queued again."""
    w = s.get(JobWorker, worker_id)
    job = s.get(Job, w.job_id) if w else None
    if job is None or job.status not in (JobStatus.starting, JobStatus.running):
        return
    job.status, job.requeue, job.reason = JobStatus.stopping.value, True, reason
    job.updated_at = now()
    events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                  object_id=job.id, reason="Preempted", warning=True,
                  message=f"job {reason}; it will be queued again")


placement.PREEMPT_HANDLERS[ALLOC_KIND] = preempt_job_worker

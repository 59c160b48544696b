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

Placement, status changes and process starts go through the reconciler core
(:mod:`neocloud.server.reconcilers.core`), which keeps the invariants written there: a
stop that lands while the job is placed or its workers start wins, and no worker holds a
GPU or a process once its job is stopped.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import NeocloudError
from neocloud.jobrun import read_exit
from neocloud.models.jobs import LAST_LINES, JobStatus, WorkerStatus
from neocloud.models.volumes import VolumeMount
from neocloud.server.backends.base import Backend, WorkloadSpec, WorkloadState
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Job, JobWorker, Node, Shape
from neocloud.server.reconcilers.core import (
    NodeVerdict,
    Waiting,
    backend_of,
    backoff_s,
    free_port_on,
    gpu_milli_of,
    lock_for_placement,
    lock_row,
    meter,
    node_lost,
    now,
    place,
    reconcile_each,
    reconcile_locked,
    release_ended,
    set_status,
    start_process,
)
from neocloud.server.scheduler import Binding
from neocloud.server.services import events, placement
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services.jobs import LIVE, job_work_dir, worker_log_path, workers_of
from neocloud.server.services.secrets import redact
from neocloud.server.settings import Settings
from neocloud.server.storage import VolumeStore

log = logging.getLogger(__name__)

#: Worker states that hold a process (or are about to).
ACTIVE = ("starting", "running", "stopping")
#: Kind of the allocation rows of job workers (one per worker, ``owner_id`` = worker id).
ALLOC_KIND = "job"
#: Start of the reason of a worker whose node was lost (its attempt fails and is retried).
NODE_LOST = "node lost"


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
        # an end with no exit code waits for its node's verdict (Ray: node lost, not an exit)
        self._verdict = NodeVerdict()
        """Worker id -> when its process was first seen ended with no exit code."""

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
            job = lock_row(s, Job, job_id, skip_locked=True)
            if job is None:
                return
            if job.status == JobStatus.retrying and (
                    job.next_attempt_at is None or job.next_attempt_at <= now()):
                job.reason = (f"retry {job.failures} of {job.max_retries}: "
                              "waiting to be scheduled")
                job.updated_at = now()
                set_status(s, job, JobStatus.queued, reason="Queued", message=job.reason)
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
            job = lock_for_placement(s, Job, job_id)
            if job is None or job.status != JobStatus.queued:
                return  # stopped (or placed) meanwhile: the stop wins
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
            t = now()
            where: list[str] = []

            def workers_for(bindings: list[Binding]) -> list[str]:
                job.attempt += 1
                first = s.get(Node, bindings[0].node_id)
                master_addr = first.address if first else "127.0.0.1"
                # The port is picked on worker 0's node before the workers start
                # (_master_port), outside this transaction and the placement lock.
                master_port = 0
                ids = []
                for rank, b in enumerate(bindings):
                    w = JobWorker(
                        job_id=job.id, workspace_id=job.workspace_id, attempt=job.attempt,
                        rank=rank, status=WorkerStatus.starting.value, node_id=b.node_id,
                        gpu_indices=list(b.gpu_indices), master_addr=master_addr,
                        master_port=master_port, started_at=t,
                        log_path=str(worker_log_path(self.settings.logs_dir, job.id,
                                                     job.attempt, rank)),
                    )
                    s.add(w)
                    s.flush()
                    ids.append(w.id)
                    node = s.get(Node, b.node_id)
                    gpus = f" GPUs {list(b.gpu_indices)}" if b.gpu_indices else ""
                    where.append(f"{rank}->{node.name if node else '?'}{gpus}")
                return ids

            placed = place(
                s, kind=ALLOC_KIND, waiter=job, workspace_id=job.workspace_id,
                requests=[placement.request_for_shape(shape)] * job.workers,
                priority=job.priority, preemptible=job.preemptible,
                preempted_by=f"job {job.name} (priority {job.priority})", owners=workers_for)
            if isinstance(placed, Waiting):
                self._queued(s, job, placed.reason)
                return
            job.reason = None
            job.started_at = job.started_at or t
            job.next_attempt_at = None
            job.updated_at = t
            set_status(s, job, JobStatus.starting, reason="Scheduled",
                       message=f"attempt {job.attempt}: {job.workers} worker(s) placed "
                               f"({', '.join(where)})")

    def _queued(self, s: Session, job: Job, reason: str) -> None:
        job.reason = reason
        events.record(s, workspace_id=job.workspace_id, kind="job", name=job.name,
                      object_id=job.id, reason="Unschedulable", message=reason, warning=True,
                      dedupe=True)

    # -- starting ---------------------------------------------------------------------
    def _backend(self, s: Session, node_id: str | None) -> tuple[Backend, Node] | None:
        return backend_of(self.backends, s, node_id)

    def _start_missing(self, job_id: str) -> None:
        """Start every worker written ``starting`` without a process handle: just placed,
        or placed right before a control-plane crash (no process exists without its
        handle recorded except in that window, so none is started twice)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.status not in (JobStatus.starting, JobStatus.running):
                return
            ids = [w.id for w in workers_of(s, job) if w.status == "starting" and not w.handle]
        if ids and not self._master_port(job_id):
            return
        for wid in ids:
            self._start_worker(wid)

    def _master_port(self, job_id: str) -> bool:
        """Give the workers of the current attempt ``MASTER_PORT``: a port free on worker
        0's node, asked of its backend (Ray asks that node). Returns whether the workers
        have one (``False``: the node could not be asked now; the next pass asks again)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            workers = workers_of(s, job) if job is not None else []
            if not workers or all(w.master_port for w in workers):
                return True
            first = min(workers, key=lambda w: w.rank)
            found = self._backend(s, first.node_id)
        if found is None:
            return True  # _start_worker fails the worker: its node or backend is gone
        try:
            port = free_port_on(*found)
        except OSError as e:
            log.warning("job %s: no port on node %s for MASTER_PORT: %s", job_id,
                        found[1].name, e)
            return False
        with self.db.session() as s:
            job = lock_row(s, Job, job_id)
            if job is None:
                return False
            for w in workers_of(s, job):
                if not w.master_port and w.attempt == first.attempt:
                    w.master_port = port
        return True

    def workdir(self, job_id: str, attempt: int, rank: int) -> Path:
        """Working directory of a worker: ``<home>/jobs/<job id>/attempt-<k>/worker-<r>``."""
        return (job_work_dir(self.settings.home / "jobs", job_id) / f"attempt-{attempt}"
                / f"worker-{rank}")

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
            if node.status == "not_ready":
                self._worker_done(s, w, None, "failed",
                                  f"{NODE_LOST} (node {node.name} is not ready)")
                return
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
            if not w.master_port:
                return  # _master_port gives it one first
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
                node_address=node.address, node_name=node.name,
                gpu_milli=gpu_milli_of(s, w.id), secret_env=frozenset(secret_env),
            )

        def record(s: Session, handle: dict[str, Any]) -> bool:
            w = lock_row(s, JobWorker, wid)
            if w is None:
                return False
            w.handle, w.pid = handle, handle.get("pid")
            job = s.get(Job, w.job_id)
            return (w.status == WorkerStatus.starting and job is not None
                    and job.status in (JobStatus.starting, JobStatus.running))

        try:
            start_process(self.db, be, spec, record=record,
                          grace_s=self.settings.job_stop_grace_s)
        except (OSError, ValueError) as e:
            with self.db.session() as s:
                w = lock_row(s, JobWorker, wid)
                if w is not None and w.status == WorkerStatus.starting:
                    why = e.strerror if isinstance(e, OSError) else str(e)
                    self._worker_done(s, w, None, "failed", f"could not start: {why}")

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
        """Record the exit of every worker whose process has ended, and the loss of
        every worker whose node is lost (``not_ready``, or gone from its backend): its
        attempt fails with reason :data:`NODE_LOST` and is retried as configured. An
        ended process is stopped through its backend, which frees what it holds."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            rows = [(w.id, w.node_id, dict(w.handle), w.log_path)
                    for w in workers_of(s, job) if w.status in ("starting", "running")
                    and (w.handle or self._on_lost_node(s, w.node_id))]
            backends = {w[0]: self._backend(s, w[1]) for w in rows}
            lost = {w[0] for w in rows if self._on_lost_node(s, w[1])}
        grace = self.settings.job_stop_grace_s
        for wid, _node, handle, log_path in rows:
            found = backends[wid]
            if found is None:
                continue
            be, node = found
            if wid in lost or node_lost(be, handle):
                release_ended(be, handle, grace_s=grace)
                with self.db.session() as s:
                    w = lock_row(s, JobWorker, wid)
                    if w is not None and w.status in ("starting", "running"):
                        self._worker_done(s, w, None, "failed",
                                          f"{NODE_LOST} (node {node.name} is not ready)")
                continue
            state = be.inspect(handle)
            if state.running:
                with self.db.session() as s:
                    w = lock_row(s, JobWorker, wid)
                    if w is not None and w.status == "starting":
                        set_status(s, w, WorkerStatus.running, reason="WorkerRunning",
                                   message=f"attempt {w.attempt} worker {w.rank} running")
                continue
            code = self.exit_code(be, state, log_path)
            if self._verdict.pending(be, wid, code):
                continue
            release_ended(be, handle, grace_s=grace)
            with self.db.session() as s:
                w = lock_row(s, JobWorker, wid)
                if w is not None and w.status in ("starting", "running"):
                    self._worker_done(s, w, code, "succeeded" if code == 0 else "failed")

    @staticmethod
    def _on_lost_node(s: Session, node_id: str | None) -> bool:
        node = s.get(Node, node_id) if node_id else None
        return node is not None and node.status == "not_ready"

    @staticmethod
    def exit_code(be: Backend, state: WorkloadState, log_path: str | None) -> int | None:
        """A worker's exit code: on a backend whose processes run on this machine
        (``local``), the one ``jobrun`` wrote beside the log (it survives a control-plane
        restart; negative: killed by that signal), else the backend's; on other backends
        (Ray) the exit file is on the worker's node, so the backend's comes first."""
        from_file = read_exit(exit_file(log_path)) if log_path else None
        if be.name == "local":
            return from_file if from_file is not None else state.exit_code
        return state.exit_code if state.exit_code is not None else from_file

    def _worker_done(self, s: Session, w: JobWorker, code: int | None, status: str,
                     why: str | None = None) -> None:
        """Write a worker's end, meter its last stretch and free its allocation (one
        transaction: a worker in an end state never holds a node)."""
        w.exit_code, w.finished_at = code, now()
        self._meter_row(s, w, final=True)
        placement.release(s, owner_id=w.id)
        job = s.get(Job, w.job_id)
        if status == "failed":
            text = why or (f"exited with code {code}" if code is not None else
                           "exited (exit code unknown)")
            set_status(s, w, WorkerStatus.failed, reason="WorkerFailed", warning=True,
                       message=f"attempt {w.attempt} worker {w.rank} {text}")
            if why and job is not None:
                job.message = why
        else:
            word = "exited with code 0" if status == "succeeded" else "stopped"
            set_status(s, w, WorkerStatus(status), reason=f"Worker{status.title()}",
                       message=f"attempt {w.attempt} worker {w.rank} {word}")

    def _over_time(self, job: Job, workers: list[JobWorker]) -> bool:
        if not job.time_limit_s:
            return False
        starts = [w.started_at for w in workers if w.started_at]
        return bool(starts) and (now() - min(starts)).total_seconds() > job.time_limit_s

    def _decide_stops(self, job_id: str) -> list[str]:
        """Mark the workers to stop (``stopping``); returns their ids."""
        with self.db.session() as s:
            job = lock_row(s, Job, job_id, skip_locked=True)
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
                set_status(s, w, WorkerStatus.stopping, reason="WorkerStopping",
                           message=f"attempt {w.attempt} worker {w.rank} stopping")
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
        code = None
        if found is not None:
            code = self.exit_code(found[0], state or WorkloadState(running=False), log_path)
        with self.db.session() as s:
            w = lock_row(s, JobWorker, wid)
            if w is not None and w.status == "stopping":
                self._worker_done(s, w, code, "stopped")

    # -- ending -----------------------------------------------------------------------
    def _finish(self, job_id: str) -> None:
        """Move the job on once its workers' states allow it."""
        with self.db.session() as s:
            job = lock_row(s, Job, job_id, skip_locked=True)
            if job is None or job.status not in (JobStatus.starting, JobStatus.running,
                                                 JobStatus.stopping):
                return
            workers = workers_of(s, job)
            if any(w.status in ACTIVE for w in workers):
                if job.status == JobStatus.starting and workers and all(
                        w.handle and w.status in ("running", "succeeded") for w in workers):
                    job.updated_at = now()
                    set_status(s, job, JobStatus.running, reason="Running",
                               message=f"attempt {job.attempt}: all {job.workers} "
                                       "worker(s) running")
                return
            if job.status == JobStatus.stopping:
                if job.requeue:
                    job.requeue = False
                    job.reason = f"{job.reason or 'interrupted'}; waiting to be scheduled"
                    job.updated_at = now()
                    set_status(s, job, JobStatus.queued, reason="Requeued", message=job.reason)
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
            job.next_attempt_at = now() + timedelta(seconds=delay)
            job.reason = (f"attempt {job.attempt} failed: {what}; retry {job.failures} of "
                          f"{job.max_retries} in {delay:.0f} s")
            job.message = last or job.message
            job.updated_at = now()
            set_status(s, job, JobStatus.retrying, reason="Retrying", warning=True,
                       message=job.reason)
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
        job.reason = reason
        job.finished_at = job.updated_at = now()
        word = {"succeeded": "Succeeded", "failed": "Failed", "stopped": "Stopped"}[status.value]
        set_status(s, job, status, reason=word, warning=status is JobStatus.failed,
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
                    set_status(s, w, WorkerStatus.stopping, reason="WorkerStopping",
                               message=f"attempt {w.attempt} worker {w.rank} stopping: the "
                                       "control plane was shut down")
                if job is not None and job.status in (JobStatus.starting, JobStatus.running):
                    job.requeue = True
                    job.reason = "the control plane was shut down"
                    set_status(s, job, JobStatus.stopping, reason="Stopping",
                               message=job.reason)
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
        meter(s, w, period_s=self.settings.usage_period_s, final=final, kind="job",
              name=job.name if job else w.id, shape_name=job.shape if job else None)


def _mounts(job: Job) -> list[VolumeMount]:
    return [VolumeMount.model_validate(m) for m in job.volumes]


def preempt_job_worker(s: Session, worker_id: str, reason: str) -> None:
    """Preemption handler of job workers: the whole job stops and is queued again."""
    w = s.get(JobWorker, worker_id)
    job = s.get(Job, w.job_id) if w else None
    if job is None or job.status not in (JobStatus.starting, JobStatus.running):
        return
    job.requeue, job.reason = True, reason
    job.updated_at = now()
    set_status(s, job, JobStatus.stopping, reason="Preempted", warning=True,
               message=f"job {reason}; it will be queued again")


placement.PREEMPT_HANDLERS[ALLOC_KIND] = preempt_job_worker

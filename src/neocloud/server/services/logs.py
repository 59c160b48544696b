"""The output of deployments' replicas, job workers and pods, read through their backend.

Routers call these functions; none of them opens a file: each workload's output is asked
of the backend that runs (or ran) it, with the handle the backend returned at start
(:meth:`neocloud.server.backends.base.Backend.logs`), so the same code serves logs of a
local process, of a Ray actor or of a simulated workload.

Shape of what they return: plain text. One process: its output as is. Several (every
replica of a deployment, every worker of a job): each one's output under a header line
``==> replica <id> <==`` or ``==> worker <rank> <==``, joined by a blank line. ``tail``
applies to each process's output. A process whose node or backend is gone, or that never
started, contributes ``""``.

Secret values are masked when logs are written; what is read is masked once more with the
current values of the workload's secrets and sensitive-looking ``env`` entries (plain,
base64 and URL-encoded forms), for output written before masking existed.

Errors: :class:`~neocloud.errors.NotFound` for an unknown workload (or another
workspace's), replica, worker or attempt, naming the parameter;
:class:`~neocloud.errors.Unavailable` when a backend cannot read a log it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import NotFound, Unavailable
from neocloud.server.backends.base import Backend, backend_for
from neocloud.server.crypto import SecretBox
from neocloud.server.db.tables import Node, Replica
from neocloud.server.services import deployments as deployment_svc
from neocloud.server.services import jobs as job_svc
from neocloud.server.services import pods as pod_svc
from neocloud.server.services.secrets import redact, values_of

Backends = Mapping[str, Backend]


def _read(s: Session, backends: Backends, node_id: str | None, handle: dict[str, Any],
          *, tail: int | None) -> str:
    """The output of one process through its node's backend (``""`` when there is none)."""
    if not handle:
        return ""
    found = backend_for(dict(backends), s.get(Node, node_id) if node_id else None,
                        lambda n: n.backend)
    if found is None:
        return ""
    try:
        return found[0].logs(dict(handle), tail=tail)
    except OSError as exc:
        raise Unavailable(f"the {found[0].name} backend cannot read this log: "
                          f"{exc.strerror or exc}") from None


def deployment_logs(
    s: Session, *, backends: Backends, box: SecretBox | None, workspace_id: str, name: str,
    tail: int | None = None, replica: str | None = None,
) -> str:
    """Output of the deployment's replicas (``replica``: only the one whose id is or starts
    with it). A deployment of one replica with output: that output alone.

    Raises:
        NotFound: no such deployment (``param="name"``) or replica (``param="replica"``).
    """
    dep = deployment_svc.get_deployment(s, workspace_id=workspace_id, name=name)
    reps = list(s.scalars(
        select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at)))
    if replica is not None:
        reps = [r for r in reps if r.id == replica or r.id.startswith(replica)]
        if not reps:
            raise NotFound(f"replica {replica!r} of deployment {name!r} not found",
                           param="replica")
    reps = [r for r in reps if r.handle]
    values = values_of(s, workspace_id=dep.workspace_id, refs=dict(dep.secrets or {}),
                       box=box, env=dict(dep.env or {}))
    if len(reps) == 1:
        return redact(_read(s, backends, reps[0].node_id, reps[0].handle, tail=tail), values)
    parts = [f"==> replica {r.id} <==\n{_read(s, backends, r.node_id, r.handle, tail=tail)}"
             for r in reps]
    return redact("\n".join(parts), values)


def job_logs(
    s: Session, *, backends: Backends, box: SecretBox | None, workspace_id: str, name: str,
    worker: int | None = None, attempt: int | None = None, tail: int | None = None,
) -> str:
    """Output of one worker (``worker``, its rank) or of every worker of one attempt
    (``attempt``, from 1; default: the latest). A job of one worker: its output alone;
    a job never started: ``""``.

    Raises:
        NotFound: no such job (``param="name"``), attempt (``"attempt"``) or worker
            (``"worker"``).
    """
    job = job_svc.get_job(s, workspace_id=workspace_id, name=name)
    k = attempt or job.attempt
    if k == 0:
        return ""
    if k > job.attempt:
        raise NotFound(f"job {name!r} has no attempt {k} (it has {job.attempt})",
                       param="attempt")
    workers = job_svc.workers_of(s, job, k)
    if worker is not None:
        workers = [w for w in workers if w.rank == worker]
        if not workers:
            raise NotFound(f"job {name!r} has no worker {worker} (workers 0..{job.workers - 1})",
                           param="worker")
    values = values_of(s, workspace_id=job.workspace_id, refs=dict(job.secrets or {}),
                       box=box, env=dict(job.env or {}))
    if worker is not None or len(workers) == 1:
        return redact(_read(s, backends, workers[0].node_id, workers[0].handle, tail=tail),
                      values)
    parts = [f"==> worker {w.rank} <==\n{_read(s, backends, w.node_id, w.handle, tail=tail)}"
             for w in workers]
    return redact("\n".join(parts), values)


def pod_logs(
    s: Session, *, backends: Backends, box: SecretBox | None, workspace_id: str, name: str,
    tail: int | None = None,
) -> str:
    """Output of the pod's process (its ``sshd`` log) while the pod has one (``""`` once
    it is stopped: the pod's process and handle are gone then).

    Raises:
        NotFound: no such pod (``param="name"``).
    """
    pod = pod_svc.get_pod(s, workspace_id=workspace_id, name=name)
    values = values_of(s, workspace_id=pod.workspace_id, refs=dict(pod.secrets or {}),
                       box=box, env=dict(pod.env or {}))
    return redact(_read(s, backends, pod.node_id, pod.handle, tail=tail), values)

"""Deployments: validate, write the row with its first status, wake the reconciler.

The reconciler (``server.reconcilers.deployments``) does the rest: it creates replica
rows, places them, starts and probes them.

Revisions: every accepted change of a deployment's spec raises ``revision`` and stores
the spec in ``deployment_revisions`` (``neocloud history``); an update made against
another revision (``If-Match`` or the ``revision`` field) is refused with 409, so a stale
client never overwrites a newer change. Changes of the replica count made by the
autoscaler (or a wake from zero) are not spec changes and keep the revision.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, String, cast, literal, select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, InvalidRequest, NotFound
from neocloud.models import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentStatus,
    DeploymentUpdate,
    ReplicaOut,
    ReplicaStatus,
)
from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.models.deployments import DryRunOut, Engine, ReasonCode
from neocloud.models.secrets import env_warnings
from neocloud.server.db.tables import Deployment, DeploymentRevision, Node, Replica
from neocloud.server.scheduler import Unschedulable
from neocloud.server.services import budgets as budget_svc
from neocloud.server.services import events, placement
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services.envvars import check_env
from neocloud.server.services.lifecycle import lock_row, set_status
from neocloud.server.services.shapes import get_shape

_BUILTINS = ("embeddings", "chat")
_REF = re.compile(r"^([A-Za-z_][\w.]*|[\w./-]+\.py):[A-Za-z_]\w*$")


def check_service_ref(ref: str, *, param: str = "service") -> None:
    """Raise :class:`InvalidRequest` unless ``ref`` is a built-in or ``module:Class``."""
    if ref in _BUILTINS or _REF.match(ref):
        return
    raise InvalidRequest(
        f"service {ref!r} is neither a built-in ({', '.join(_BUILTINS)}) nor "
        "'package.module:Class' / 'file.py:Class'",
        param=param,
    )


def check_engine(engine: Engine, service: str | None) -> str | None:
    """Check an ``engine`` / ``service`` pair before anything is stored; returns the
    service to store (``None`` for ``vllm``).

    ``builtin`` needs a service reference (:func:`check_service_ref`); ``vllm`` takes none
    and needs its engine environment on this machine
    (:func:`neocloud.serving.engines.vllm.engine_python`: ``NEOCLOUD_VLLM_PYTHON``,
    ``NEOCLOUD_VLLM_VENV`` or ``.venv-vllm``).

    Raises:
        InvalidRequest: a missing or conflicting ``service`` (400, ``param="service"``).
        EngineNotInstalled: engine ``vllm`` without its environment (400 code
            ``engine_not_installed``, ``param="engine"``, naming ``make install-vllm``).
    """
    if engine == Engine.vllm:
        if service is not None:
            raise InvalidRequest(
                f"engine vllm runs vLLM's OpenAI server on the deployment's model; it takes "
                f"no service (got {service!r}): leave service out, or use engine builtin",
                param="service")
        from neocloud.serving.engines.vllm import engine_python

        engine_python()
        return None
    if service is None:
        raise InvalidRequest("service is required with engine builtin (embeddings, chat, "
                             "'package.module:Class' or 'file.py:Class')", param="service")
    check_service_ref(service)
    return service


def _find(s: Session, *, workspace_id: str, name: str) -> Deployment | None:
    return s.scalars(
        select(Deployment).where(Deployment.workspace_id == workspace_id, Deployment.name == name)
    ).first()


def get_deployment(s: Session, *, workspace_id: str, name: str, lock: bool = False
                   ) -> Deployment:
    """The deployment ``name`` of the workspace; :class:`NotFound` for any other workspace's.

    With ``lock`` the newest row, locked until the transaction ends (``lifecycle.lock_row``),
    so that a change decided on it cannot race the deployment reconciler.
    """
    dep = _find(s, workspace_id=workspace_id, name=name)
    if dep is not None and lock:
        dep = lock_row(s, Deployment, dep.id)
    if dep is None:
        raise NotFound(f"deployment {name!r} not found", param="name")
    return dep


def create_deployment(s: Session, *, workspace_id: str, spec: DeploymentCreate) -> Deployment:
    """Store a new deployment in status ``pending``.

    Raises:
        AlreadyExists: the workspace has a deployment of that name (409).
        NotFound: unknown shape (404, ``param="shape"``).
        InvalidRequest: bad service reference, service and engine that do not go
            together, or bad env names (400).
        EngineNotInstalled: engine ``vllm`` without its environment (400, see
            :func:`check_engine`).
    """
    service = check_engine(spec.engine, spec.service)
    check_env(spec.env)
    get_shape(s, name=spec.shape, param="shape")
    # Budget hard stop: new work of a workspace over its budget is refused (402).
    budget_svc.require_within_budget(s, workspace_id=workspace_id)
    secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets, env=spec.env)
    old = _find(s, workspace_id=workspace_id, name=spec.name)
    if old is not None:
        if old.status == DeploymentStatus.deleting.value:
            raise Conflict(f"deployment {spec.name!r} is being deleted; retry in a moment",
                           param="name")
        raise AlreadyExists(f"deployment {spec.name!r} already exists", param="name")
    replicas = spec.replicas
    if spec.autoscaling is not None:
        a = spec.autoscaling
        replicas = min(max(replicas, a.min_replicas), a.max_replicas)
    dep = Deployment(
        workspace_id=workspace_id, name=spec.name, service=service,
        engine=spec.engine.value, model=spec.model,
        shape=spec.shape, replicas=replicas, env=dict(spec.env),
        secrets=dict(spec.secrets),
        priority=spec.priority, preemptible=spec.preemptible,
        drain_timeout_s=spec.drain_timeout_s, cold_start_timeout_s=spec.cold_start_timeout_s,
        autoscaling=spec.autoscaling.model_dump(mode="json") if spec.autoscaling else None,
        max_surge=spec.max_surge, max_unavailable=spec.max_unavailable,
        revision=1,
        status=DeploymentStatus.pending.value if replicas else
        DeploymentStatus.scaled_to_zero.value,
    )
    s.add(dep)
    s.flush()
    scaling = (f"autoscaling {spec.autoscaling.min_replicas}..{spec.autoscaling.max_replicas}"
               if spec.autoscaling else f"{replicas}")
    runs = f"service {service}" if service is not None else \
        f"engine {spec.engine.value}, model {spec.model or 'default'}"
    message = f"deployment {dep.name} created: {scaling} x {spec.shape}, {runs}"
    events.record(s, workspace_id=workspace_id, kind="deployment", name=dep.name,
                  object_id=dep.id, reason="Created", message=message)
    _record_revision(s, dep, message)
    return dep


def dry_run(s: Session, *, workspace_id: str, spec: DeploymentCreate) -> DryRunOut:
    """Check ``spec`` as :func:`create_deployment` does and say where one replica would go,
    storing nothing (the caller rolls back; the placement lock is held until then).

    Raises: the errors of :func:`create_deployment` (the same checks, in the same order).
    """
    check_engine(spec.engine, spec.service)
    check_env(spec.env)
    shape = get_shape(s, name=spec.shape, param="shape")
    secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets, env=spec.env)
    old = _find(s, workspace_id=workspace_id, name=spec.name)
    if old is not None:
        raise AlreadyExists(f"deployment {spec.name!r} already exists", param="name")
    result = placement.schedule(s, workspace_id=workspace_id,
                                requests=[placement.request_for_shape(shape)],
                                priority=spec.priority)
    warnings = env_warnings(spec.env)  # what the real create returns for this spec
    if isinstance(result, placement.Preempt):
        return DryRunOut(fits_now=False, can_ever_fit=True, preempts=len(result.victims),
                         reason=result.reason, code=ReasonCode.PREEMPTING, warnings=warnings)
    if isinstance(result, Unschedulable):
        return DryRunOut(fits_now=False, can_ever_fit=not result.never_fits,
                         reason=result.reason, code=result.code, warnings=warnings)
    node = s.get(Node, result[0].node_id)
    return DryRunOut(fits_now=True, can_ever_fit=True, node=node.name if node else None,
                     warnings=warnings)


def _spec_of(dep: Deployment) -> dict[str, Any]:
    """The user-set fields of a deployment, as stored in its revision history."""
    return {"service": dep.service, "engine": dep.engine, "model": dep.model, "shape": dep.shape,
            "replicas": dep.replicas, "env": dict(dep.env or {}),
            "secrets": dict(dep.secrets or {}), "priority": dep.priority,
            "preemptible": dep.preemptible, "drain_timeout_s": dep.drain_timeout_s,
            "cold_start_timeout_s": dep.cold_start_timeout_s, "autoscaling": dep.autoscaling,
            "max_surge": dep.max_surge, "max_unavailable": dep.max_unavailable}


def _record_revision(s: Session, dep: Deployment, message: str) -> None:
    s.add(DeploymentRevision(deployment_id=dep.id, revision=dep.revision,
                             generation=dep.generation, spec=_spec_of(dep), message=message))


def list_revisions(s: Session, *, workspace_id: str, name: str) -> list[DeploymentRevision]:
    """The revisions of deployment ``name``, oldest first (the last is the active one).

    Raises:
        NotFound: no such deployment in the workspace.
    """
    dep = get_deployment(s, workspace_id=workspace_id, name=name)
    return list(s.scalars(select(DeploymentRevision)
                          .where(DeploymentRevision.deployment_id == dep.id)
                          .order_by(DeploymentRevision.revision)))


def event_object_ids(s: Session, dep: Deployment) -> list[str]:
    """Ids whose events are this deployment's: the deployment and its replicas (a
    deployment re-created under a deleted one's name shares none of them)."""
    return [dep.id, *s.scalars(select(Replica.id).where(Replica.deployment_id == dep.id))]


def autoscaling_of(dep: Deployment) -> AutoscalingConfig | None:
    """The stored autoscaling settings of ``dep`` (``None``: a fixed replica count)."""
    return AutoscalingConfig.model_validate(dep.autoscaling) if dep.autoscaling else None


def autoscales_to_zero(autoscaling: dict[str, Any] | None) -> bool:
    """Whether a deployment's stored ``autoscaling`` column (``None`` or empty: a fixed
    replica count) lets it scale down to zero replicas (``min_replicas`` 0)."""
    return bool(autoscaling) and AutoscalingConfig.model_validate(autoscaling).min_replicas == 0


def serving_upstreams() -> Select[str, str, str]:
    """``(deployment_id, id, url)`` of every replica that serves requests: ``ready``, with
    a port, on a node of a backend that runs processes (not ``fake``: simulated replicas
    have no URL); the database writes each base URL (``http://<node address>:<port>``).
    The gateway's route table and the usage recovery both reach replicas by it."""
    url = literal("http://") + Node.address + literal(":") + cast(Replica.port, String)
    return (select(Replica.deployment_id, Replica.id, url)
            .join(Node, Node.id == Replica.node_id)
            .where(Replica.status == "ready", Replica.port.is_not(None),
                   Node.backend != "fake"))


def can_wake(dep: Deployment) -> bool:
    """Whether a request may start ``dep`` from zero: it autoscales down to zero and is
    not ``deleting``."""
    return autoscales_to_zero(dep.autoscaling) and dep.status != "deleting"


def wake(s: Session, *, deployment_id: str) -> bool:
    """A request arrived for a deployment at zero: ask for one replica (desired 0 -> 1).

    Only for a deployment that autoscales with ``min_replicas`` 0; the revision is kept
    (a wake is not a change of the spec). Returns whether the count changed.
    """
    dep = lock_row(s, Deployment, deployment_id)
    if dep is None or not can_wake(dep) or dep.replicas > 0:
        return False
    dep.replicas = 1
    dep.updated_at = datetime.now(UTC)
    events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                  object_id=dep.id, reason="ScalingFromZero",
                  message="0 -> 1: SCALE_FROM_ZERO; a request is waiting")
    return True


def parse_if_match(value: str | None) -> int | None:
    """The revision an ``If-Match`` header names (``"3"``, ``W/"3"``); ``None`` without one
    (or ``*``).

    Raises:
        InvalidRequest: not a revision ETag (400, ``param="If-Match"``).
    """
    if value is None or value.strip() == "*":
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidRequest(f"If-Match {value!r} is not a revision ETag such as '\"3\"'",
                             param="If-Match")
    return int(tag)


def update_deployment(
    s: Session, *, workspace_id: str, name: str, spec: DeploymentUpdate,
    if_match: int | None = None,
) -> Deployment:
    """Apply a change. A new engine, service, model, shape or env starts a new generation, which the
    reconciler rolls out one replica at a time (a new replica is ready before an old one stops).
    Every change raises the revision.

    Raises:
        Conflict: ``if_match`` or ``spec.revision`` is not the current revision (409,
            ``param`` names which), or the deployment is being deleted.
        BudgetExceeded: more replicas asked while the workspace's hard-stopped budget is
            spent (402).
        InvalidRequest / EngineNotInstalled: the new engine and service do not go
            together, or engine ``vllm`` is not installed (400, see :func:`check_engine`).
    """
    dep = get_deployment(s, workspace_id=workspace_id, name=name, lock=True)
    if dep.status == DeploymentStatus.deleting.value:
        raise Conflict(f"deployment {name!r} is being deleted", param="name")
    for given, param in ((if_match, "If-Match"), (spec.revision, "revision")):
        if given is not None and given != dep.revision:
            raise Conflict(f"deployment {name!r} is at revision {dep.revision}, not {given}; "
                           "read it again and retry", param=param, code="revision_conflict")
    changes: list[str] = []
    roll = False
    engine = spec.engine if spec.engine is not None else Engine(dep.engine)
    if engine != dep.engine or (spec.service is not None and spec.service != dep.service):
        # vllm drops the service; builtin keeps the stored one unless a new one is given
        wanted = spec.service if spec.service is not None or engine == Engine.vllm \
            else dep.service
        service = check_engine(engine, wanted)
        if engine != dep.engine:
            dep.engine, roll = engine.value, True
            changes.append(f"engine={engine.value}")
        if service != dep.service:
            dep.service, roll = service, True
            changes.append(f"service={service}")
    if "model" in spec.model_fields_set and spec.model != dep.model:
        dep.model, roll = spec.model, True
        changes.append(f"model={spec.model}")
    if spec.shape is not None and spec.shape != dep.shape:
        get_shape(s, name=spec.shape, param="shape")
        dep.shape, roll = spec.shape, True
        changes.append(f"shape={spec.shape}")
    if spec.env is not None and spec.env != dep.env:
        check_env(spec.env)
        dep.env, roll = dict(spec.env), True
        changes.append("env")
    if spec.secrets is not None and spec.secrets != dep.secrets:
        secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets,
                              env=spec.env if spec.env is not None else dep.env)
        dep.secrets, roll = dict(spec.secrets), True
        changes.append("secrets")
    if spec.priority is not None and spec.priority != dep.priority:
        changes.append(f"priority {dep.priority}->{spec.priority}")
        dep.priority = spec.priority
    if spec.preemptible is not None and spec.preemptible != dep.preemptible:
        changes.append(f"preemptible={spec.preemptible}")
        dep.preemptible = spec.preemptible
    if spec.drain_timeout_s is not None and spec.drain_timeout_s != dep.drain_timeout_s:
        changes.append(f"drain_timeout_s={spec.drain_timeout_s:g}")
        dep.drain_timeout_s = spec.drain_timeout_s
    if spec.cold_start_timeout_s is not None \
            and spec.cold_start_timeout_s != dep.cold_start_timeout_s:
        changes.append(f"cold_start_timeout_s={spec.cold_start_timeout_s:g}")
        dep.cold_start_timeout_s = spec.cold_start_timeout_s
    if "autoscaling" in spec.model_fields_set:
        new = spec.autoscaling.model_dump(mode="json") if spec.autoscaling else None
        if new != dep.autoscaling:
            changes.append("autoscaling " + (f"{spec.autoscaling.min_replicas}.."
                                             f"{spec.autoscaling.max_replicas}"
                                             if spec.autoscaling else "off"))
            dep.autoscaling = new
    surge = spec.max_surge if spec.max_surge is not None else dep.max_surge
    unavailable = spec.max_unavailable if spec.max_unavailable is not None \
        else dep.max_unavailable
    if (surge, unavailable) != (dep.max_surge, dep.max_unavailable):
        if surge == 0 and unavailable == 0:
            raise InvalidRequest("max_surge and max_unavailable cannot both be 0 (a rolling "
                                 "update could never start)", param="max_surge")
        changes.append(f"max_surge={surge}, max_unavailable={unavailable}")
        dep.max_surge, dep.max_unavailable = surge, unavailable
    replicas = spec.replicas if spec.replicas is not None else dep.replicas
    a = autoscaling_of(dep)
    if a is not None:
        replicas = min(max(replicas, a.min_replicas), a.max_replicas)
    if replicas != dep.replicas:
        if replicas > dep.replicas:  # more replicas is new work: a hard-stopped budget refuses
            budget_svc.require_within_budget(s, workspace_id=workspace_id)
        changes.append(f"replicas {dep.replicas}->{replicas}")
        dep.replicas = replicas
    if not changes:
        return dep
    if roll:
        dep.generation += 1
    dep.revision += 1
    dep.updated_at = datetime.now(UTC)
    message = (f"revision {dep.revision}: {', '.join(changes)}"
               + (f" (generation {dep.generation})" if roll else ""))
    events.record(s, workspace_id=workspace_id, kind="deployment", name=name, object_id=dep.id,
                  reason="Updated", message=message)
    _record_revision(s, dep, message)
    return dep


def delete_deployment(s: Session, *, workspace_id: str, name: str) -> None:
    """Mark the deployment ``deleting``; the reconciler stops its replicas, then removes it.

    The row is locked first and ``deleting`` is final (no status follows it), so a
    reconciler pass running at the same moment cannot bring the deployment back.

    Invariant: of concurrent deletes of one deployment exactly one succeeds, the one that
    moves it to ``deleting`` under the lock (as :mod:`.removal` holds for the objects
    deleted at once). A delete that finds it ``deleting`` already, or removed by the
    reconciler meanwhile, changes nothing and raises :class:`NotFound`: it once answered
    204 too, with an audit "success" for a deletion it did not make.

    Raises:
        NotFound: no such deployment, or its deletion was already requested.
    """
    dep = get_deployment(s, workspace_id=workspace_id, name=name, lock=True)
    if dep.status == DeploymentStatus.deleting.value:
        raise NotFound(f"deployment {name!r} not found: it is being deleted already",
                       param="name")
    dep.updated_at = datetime.now(UTC)
    set_status(s, dep, DeploymentStatus.deleting, reason="Deleting",
               message="deployment deletion requested")


def list_deployments(s: Session, *, workspace_id: str) -> list[Deployment]:
    return list(
        s.scalars(
            select(Deployment)
            .where(Deployment.workspace_id == workspace_id)
            .order_by(Deployment.created_at)
        )
    )


def replica_out(r: Replica, node_names: dict[str, str]) -> ReplicaOut:
    return ReplicaOut(
        id=r.id, status=ReplicaStatus(r.status), generation=r.generation,
        node=node_names.get(r.node_id) if r.node_id else None, gpu_indices=list(r.gpu_indices),
        port=r.port, pid=r.pid, restarts=r.restarts, message=r.message,
        created_at=r.created_at, ready_at=r.ready_at,
    )


def deployment_out(s: Session, dep: Deployment) -> DeploymentOut:
    reps = s.scalars(
        select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at)
    ).all()
    # the names of the nodes its replicas are on (not every node: a fleet has thousands)
    node_ids = {r.node_id for r in reps if r.node_id}
    node_names = {row[0]: row[1] for row in s.execute(
        select(Node.id, Node.name).where(Node.id.in_(node_ids)))} if node_ids else {}
    return DeploymentOut(
        id=dep.id, name=dep.name, service=dep.service, engine=Engine(dep.engine),
        model=dep.model, shape=dep.shape,
        replicas=dep.replicas,
        ready_replicas=sum(1 for r in reps if r.status == ReplicaStatus.ready.value),
        status=DeploymentStatus(dep.status), pending_reason=dep.pending_reason,
        pending_code=ReasonCode(dep.pending_code) if dep.pending_code else None,
        generation=dep.generation, revision=dep.revision,
        drain_timeout_s=dep.drain_timeout_s, cold_start_timeout_s=dep.cold_start_timeout_s,
        autoscaling=autoscaling_of(dep),
        max_surge=dep.max_surge, max_unavailable=dep.max_unavailable,
        env=dep.env, secrets=dict(dep.secrets or {}),
        priority=dep.priority,
        preemptible=dep.preemptible, endpoint=f"/endpoints/{dep.name}/",
        created_at=dep.created_at, updated_at=dep.updated_at,
        replica_list=[replica_out(r, node_names) for r in reps if r.status != "stopped"],
    )

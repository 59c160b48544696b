"""Tables of the control plane (SQLAlchemy 2 typed ORM).

Every row id is a 32-character hex string (uuid4) unless noted. Times are timezone-aware
UTC. CPU is in millicores, memory in MiB, GPU shares in milli-GPU (1000 = one GPU).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Workspace(Base):
    __tablename__ = "workspaces"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quota(Base):
    """Most a workspace may hold at once; ``None`` means no limit.

    ``gpus`` maps a GPU type (``H100``) to whole GPUs (fractional shares count as their
    fraction); the key ``"*"`` limits each type not listed; ``gpus_total`` limits all
    types together.
    """

    __tablename__ = "quotas"
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    gpus: Mapped[dict[str, Any]] = mapped_column(default=dict)
    gpus_total: Mapped[int | None] = mapped_column(Integer, default=None)
    cpu_milli: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_mib: Mapped[int | None] = mapped_column(Integer, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    backend: Mapped[str] = mapped_column(String(16))
    pool: Mapped[str | None] = mapped_column(String(63), default=None)
    address: Mapped[str] = mapped_column(String(255), default="127.0.0.1")
    cpu_milli: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[list[Any]] = mapped_column(default=list)
    """``[{"index": 0, "type": "H100", "memory_mib": 81559}, ...]``"""
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Shape(Base):
    __tablename__ = "shapes"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    cpu_milli: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    gpu_milli: Mapped[int] = mapped_column(Integer, default=0)
    gpu_type: Mapped[str | None] = mapped_column(String(63), default=None)
    price_per_hour_usd: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    service: Mapped[str | None] = mapped_column(String(512), default=None)
    """``None`` for engine ``vllm`` (it runs a model, not a service class)."""
    engine: Mapped[str] = mapped_column(String(16), default="builtin",
                                        server_default="builtin")
    """``models.deployments.Engine``: what runs the replicas."""
    model: Mapped[str | None] = mapped_column(String(512), default=None)
    shape: Mapped[str] = mapped_column(String(63))
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    """Environment variable -> secret name, resolved when a replica starts."""
    generation: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    preemptible: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    pending_reason: Mapped[str | None] = mapped_column(Text, default=None)
    pending_code: Mapped[str | None] = mapped_column(String(32), default=None)
    """Stable code of ``pending_reason`` (``models.deployments.ReasonCode``)."""
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Raised by every change of the spec; a stale one in an update is a 409."""
    drain_timeout_s: Mapped[float] = mapped_column(Float, default=120.0, server_default="120")
    """Seconds a stopping replica gets to finish its in-flight requests before SIGKILL."""
    cold_start_timeout_s: Mapped[float] = mapped_column(Float, default=120.0,
                                                        server_default="120")
    """Seconds the gateway holds requests while the deployment starts from zero."""
    autoscaling: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """``models.autoscaling.AutoscalingConfig`` as JSON; ``None``: a fixed replica count."""
    max_surge: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Replicas a rollout may run above ``replicas``."""
    max_unavailable: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Ready replicas a rollout may go below ``replicas``."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentRevision(Base):
    """One accepted version of a deployment's spec (``neocloud history``)."""

    __tablename__ = "deployment_revisions"
    __table_args__ = (UniqueConstraint("deployment_id", "revision"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Replica(Base):
    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    node_id: Mapped[str | None] = mapped_column(String(32), default=None)
    gpu_indices: Mapped[list[Any]] = mapped_column(default=list)
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    handle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Backend-specific record of the running process (pid, start time, log file)."""
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    next_restart_at: Mapped[datetime | None] = mapped_column(default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    preempting_at: Mapped[datetime | None] = mapped_column(default=None)
    """Since when this pending replica waits for work it preempted to stop (``None``: it
    preempts nothing)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    metered_until: Mapped[datetime | None] = mapped_column(default=None)
    """Running time before this instant is already in usage records."""
    stop_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    """When the replica was told to stop (its drain started); ``None`` before."""


class Allocation(Base):
    """Resources bound on a node to one workload (a replica, a job worker, a pod).

    The one record of what is taken on each node: placement, quotas and node views all
    read it. ``gpu_milli`` is the share taken on *each* GPU in ``gpu_indices``
    (1000 = whole GPUs).

    An allocation belongs to its workload in the schema: exactly one of ``replica_id``,
    ``job_worker_id`` and ``pod_id`` is set (the one of ``kind``, equal to ``owner_id``),
    a foreign key that deletes the allocation with its owner, so no allocation can
    outlive the workload that holds it.
    """

    __tablename__ = "allocations"
    __table_args__ = (
        CheckConstraint(
            "(kind = 'replica' AND replica_id IS NOT NULL AND replica_id = owner_id"
            " AND job_worker_id IS NULL AND pod_id IS NULL)"
            " OR (kind = 'job' AND job_worker_id IS NOT NULL AND job_worker_id = owner_id"
            " AND replica_id IS NULL AND pod_id IS NULL)"
            " OR (kind = 'pod' AND pod_id IS NOT NULL AND pod_id = owner_id"
            " AND replica_id IS NULL AND job_worker_id IS NULL)",
            name="one_owner",
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(32), unique=True)
    replica_id: Mapped[str | None] = mapped_column(
        ForeignKey("replicas.id", ondelete="CASCADE"), default=None)
    job_worker_id: Mapped[str | None] = mapped_column(
        ForeignKey("job_workers.id", ondelete="CASCADE"), default=None)
    pod_id: Mapped[str | None] = mapped_column(
        ForeignKey("pods.id", ondelete="CASCADE"), default=None)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    gpu_indices: Mapped[list[Any]] = mapped_column(default=list)
    gpu_milli: Mapped[int] = mapped_column(Integer, default=0)
    gpu_type: Mapped[str | None] = mapped_column(String(63), default=None)
    cpu_milli: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    preemptible: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(63))
    object_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    type: Mapped[str] = mapped_column(String(8), default="normal")
    reason: Mapped[str] = mapped_column(String(63))
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(16), default=None)
    """The status the object entered (status events only; see ``services.lifecycle``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageRecord(Base):
    """Metered consumption of one workload over ``[period_start, period_end)``.

    ``cost_usd`` = seconds / 3600 × ``price_per_hour_usd`` for running time, or the
    endpoint's per-token price × tokens for ``kind == "tokens"``.
    """

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(63))
    shape: Mapped[str | None] = mapped_column(String(63), default=None)
    period_start: Mapped[datetime] = mapped_column()
    period_end: Mapped[datetime] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    """Gateway requests served (``tokens`` records: status below 400)."""
    failed_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Gateway requests that failed (``tokens`` records: status 400 or above, a client
    that left included); their tokens are billed, they are not counted as served."""
    price_per_hour_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Billing (``server.metering``): one meter per record, its amount in micro-dollars.
    meter: Mapped[str | None] = mapped_column(String(24), default=None)
    quantity: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    unit_price_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    amount_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    gpu_type: Mapped[str | None] = mapped_column(String(63), default=None)
    pool: Mapped[str | None] = mapped_column(String(63), default=None)
    bill_day: Mapped[str | None] = mapped_column(String(10), default=None, index=True)
    """The day (``YYYY-MM-DD``, UTC) whose invoice covers this record."""
    bill_month: Mapped[str | None] = mapped_column(String(7), default=None, index=True)
    """The month (``YYYY-MM``, UTC) whose invoice covers this record."""


#: Length of ``request_usage.path`` (characters).
REQUEST_PATH_CHARS = 512


class RequestUsage(Base):
    """The ledger of gateway requests: one row per request, keyed by its meter id, from
    before it is forwarded until its tokens are billed (``server.metering.ledger``).

    ``state``: ``open`` (forwarded, not ended), ``counting`` (ended, the replica's own
    count is awaited) or ``closed`` (final: billed and deleted by the next flush). Times
    are unix seconds; ``seen_at`` is when the gateway that owns the row last said it was
    alive (a row open or counting whose owner stopped saying so is recovered).
    """

    __tablename__ = "request_usage"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    workspace_id: Mapped[str] = mapped_column(String(32))
    token_id: Mapped[str] = mapped_column(String(32))
    deployment_id: Mapped[str] = mapped_column(String(32))
    replica_id: Mapped[str | None] = mapped_column(String(32), default=None)
    path: Mapped[str] = mapped_column(String(REQUEST_PATH_CHARS))
    status: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)


class Secret(Base):
    """A workspace secret. ``ciphertext`` is the value encrypted by ``server.crypto``
    (never the value in clear)."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    ciphertext: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Volume(Base):
    """A workspace volume; its files live in the volume store. ``size_bytes`` and
    ``file_count`` are as measured at ``measured_at``."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    measured_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A run-to-completion job of ``workers`` gang-scheduled workers.

    ``attempt`` counts starts (the workers of the current one carry the same number);
    ``failures`` counts failed attempts, compared with ``max_retries``.
    """

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    command: Mapped[list[Any]] = mapped_column(default=list)
    shape: Mapped[str] = mapped_column(String(63))
    workers: Mapped[int] = mapped_column(Integer, default=1)
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets: Mapped[dict[str, Any]] = mapped_column(default=dict)
    volumes: Mapped[list[Any]] = mapped_column(default=list)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    time_limit_s: Mapped[float | None] = mapped_column(Float, default=None)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    preemptible: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    requeue: Mapped[bool] = mapped_column(Boolean, default=False)
    """Once the workers have stopped, queue the job again instead of ending it
    (preemption, control-plane shutdown); no retry is used up."""
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    preempting_at: Mapped[datetime | None] = mapped_column(default=None)
    """Since when this queued job waits for work it preempted to stop (``None``: it
    preempts nothing)."""
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobWorker(Base):
    """One worker process of one attempt of a job (rank ``rank`` of ``workers``)."""

    __tablename__ = "job_workers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="starting")
    node_id: Mapped[str | None] = mapped_column(String(32), default=None)
    gpu_indices: Mapped[list[Any]] = mapped_column(default=list)
    master_addr: Mapped[str] = mapped_column(String(255), default="127.0.0.1")
    master_port: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    handle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log_path: Mapped[str | None] = mapped_column(String(1024), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    metered_until: Mapped[datetime | None] = mapped_column(default=None)


class Pod(Base):
    """A dev pod. ``desired`` is what the user asked for (``running``, ``stopped``,
    ``deleted``); ``status`` is where it is."""

    __tablename__ = "pods"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    shape: Mapped[str] = mapped_column(String(63))
    volume: Mapped[str] = mapped_column(String(63))
    ssh_public_key: Mapped[str | None] = mapped_column(Text, default=None)
    jupyter: Mapped[bool] = mapped_column(Boolean, default=False)
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets: Mapped[dict[str, Any]] = mapped_column(default=dict)
    volumes: Mapped[list[Any]] = mapped_column(default=list)
    idle_timeout_s: Mapped[float | None] = mapped_column(Float, default=None)
    desired: Mapped[str] = mapped_column(String(16), default="running")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    preempting_at: Mapped[datetime | None] = mapped_column(default=None)
    """Since when this queued pod waits for work it preempted to stop (``None``: it
    preempts nothing)."""
    node_id: Mapped[str | None] = mapped_column(String(32), default=None)
    gpu_indices: Mapped[list[Any]] = mapped_column(default=list)
    ssh_port: Mapped[int | None] = mapped_column(Integer, default=None)
    jupyter_port: Mapped[int | None] = mapped_column(Integer, default=None)
    jupyter_token: Mapped[str | None] = mapped_column(String(64), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    handle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    last_activity_at: Mapped[datetime | None] = mapped_column(default=None)
    metered_until: Mapped[datetime | None] = mapped_column(default=None)


# -- audit log (migration 0004) ---------------------------------------------------------


class AuditEntry(Base):
    """One API call that changed state or was denied (written by
    ``server.services.audit``; never updated).

    ``workspace_id`` / ``token_name``: the caller (``None`` when no valid token was sent);
    ``target_workspace_id``: the workspace owning the resource when it is not the caller's
    (a denied cross-workspace attempt); ``action``: the API operation (``delete_job``);
    ``target``: the path under ``/api/v1`` (``jobs/train``); ``outcome``: ``success``,
    ``denied`` or ``failed``; ``status``: the HTTP status answered; ``code``: the error's
    machine-readable code, if any.
    """

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    workspace_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    target_workspace_id: Mapped[str | None] = mapped_column(String(32), index=True,
                                                           default=None)
    token_name: Mapped[str | None] = mapped_column(String(63), default=None)
    method: Mapped[str] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(63))
    target: Mapped[str] = mapped_column(String(1024))
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    code: Mapped[str | None] = mapped_column(String(63), default=None)


# -- billing and metrics history (migration 0005) ---------------------------------------


class Price(Base):
    """One version of one price, in force from ``effective_at`` until the next version of
    the same ``(kind, target)``. Amounts in integer micro-dollars (see ``models.billing``)."""

    __tablename__ = "prices"
    __table_args__ = (UniqueConstraint("kind", "target", "effective_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(512))
    per_hour_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    input_per_m_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    output_per_m_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    per_gib_hour_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    effective_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(63), default=None)


class Invoice(Base):
    """A closed invoice of one workspace and period (``2026-11`` or ``2026-11-30``);
    written once with its lines, never changed. Open periods are computed, not stored."""

    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("workspace_id", "period"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[datetime] = mapped_column()
    period_end: Mapped[datetime] = mapped_column()
    total_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    closed_at: Mapped[datetime] = mapped_column(default=utcnow)


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(63))
    object_id: Mapped[str] = mapped_column(String(32))
    shape: Mapped[str | None] = mapped_column(String(63), default=None)
    meter: Mapped[str] = mapped_column(String(24))
    gpu_type: Mapped[str | None] = mapped_column(String(63), default=None)
    quantity: Mapped[float] = mapped_column(Float)
    unit_price_micros: Mapped[int] = mapped_column(BigInteger)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    records: Mapped[int] = mapped_column(Integer)


class Budget(Base):
    """A workspace's monthly spending limit. ``alerted`` holds the thresholds (percent)
    already announced in ``alerted_month``; ``stopped_month`` the month running work was
    stopped in (so it is stopped once)."""

    __tablename__ = "budgets"
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    monthly_micros: Mapped[int] = mapped_column(BigInteger)
    thresholds: Mapped[list[Any]] = mapped_column(default=list)
    hard_stop: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_running: Mapped[bool] = mapped_column(Boolean, default=False)
    alerted_month: Mapped[str | None] = mapped_column(String(7), default=None)
    alerted: Mapped[list[Any]] = mapped_column(default=list)
    stopped_month: Mapped[str | None] = mapped_column(String(7), default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricPoint(Base):
    """One bucket of a metrics-history series (``server.services.metrics_history``).

    ``series`` is ``deployment`` (gateway traffic: counts and a latency histogram over
    ``gateway.stats.LATENCY_BUCKETS``) or ``node`` (allocation samples, summed; divide by
    ``samples`` for the average). ``t`` is the bucket start in unix seconds.
    """

    __tablename__ = "metric_points"
    __table_args__ = (UniqueConstraint("series", "object_id", "resolution_s", "t"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(32))
    workspace_id: Mapped[str | None] = mapped_column(String(32), default=None)
    resolution_s: Mapped[int] = mapped_column(Integer)
    t: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_sum_s: Mapped[float] = mapped_column(Float, default=0.0)
    latency_buckets: Mapped[list[Any]] = mapped_column(default=list)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    gpus: Mapped[float] = mapped_column(Float, default=0.0)
    gpus_allocated: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_milli: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_allocated_milli: Mapped[float] = mapped_column(Float, default=0.0)

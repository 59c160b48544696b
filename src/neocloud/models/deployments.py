"""Deployments (long-running model services) and their replicas."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, computed_field, model_validator

from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.models.common import (
    Env,
    Name,
    OutModel,
    SecretRefs,
    ShapeName,
    WireModel,
)
from neocloud.models.secrets import MaskedEnv, env_warnings

#: The form of a service reference: a built-in (``embeddings``, ``chat``),
#: ``package.module:Class`` or ``file.py:Class`` (the control plane checks it: 400).
SERVICE_REF_PATTERN = r"^(embeddings|chat|([A-Za-z_][\w.]*|[\w./-]+\.py):[A-Za-z_]\w*)$"

#: A service reference: ``embeddings``, ``chat``, ``package.module:Class`` or ``file.py:Class``.
ServiceRef = str


class DeploymentStatus(StrEnum):
    pending = "pending"
    """Accepted; no replica is ready yet (see ``pending_reason``)."""
    ready = "ready"
    """Every desired replica is ready."""
    degraded = "degraded"
    """Some, not all, desired replicas are ready."""
    scaled_to_zero = "scaled_to_zero"
    failed = "failed"
    deleting = "deleting"


class ReasonCode(StrEnum):
    """Stable, machine-readable code of a deployment's ``pending_reason`` (the message
    beside it is for people and may change)."""

    NO_MATCHING_GPU_TYPE = "NO_MATCHING_GPU_TYPE"
    """No registered node has GPUs of the type the shape asks for."""
    INSUFFICIENT_GPUS_PER_NODE = "INSUFFICIENT_GPUS_PER_NODE"
    """No registered node has as many GPUs (or as much CPU / memory) as one replica needs."""
    WAITING_FOR_CAPACITY = "WAITING_FOR_CAPACITY"
    """Some node could hold a replica, but none has room now."""
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    """The workspace's quota has no room for another replica."""
    CRASH_LOOP = "CRASH_LOOP"
    """Every replica keeps crashing at start; restarted with back-off."""
    STARTUP_TIMEOUT = "STARTUP_TIMEOUT"
    """A replica did not answer ``/ready`` within the ready timeout."""
    SHAPE_MISSING = "SHAPE_MISSING"
    """The deployment's shape was removed."""
    PREEMPTING = "PREEMPTING"
    """Lower-priority work is being stopped to make room."""


#: Seconds a stopping replica gets to finish in-flight requests (default of ``drain_timeout_s``).
DEFAULT_DRAIN_TIMEOUT_S = 120.0
#: Seconds the gateway holds requests while a deployment starts from zero (default).
DEFAULT_COLD_START_TIMEOUT_S = 120.0


class Engine(StrEnum):
    """What runs a deployment's replicas."""

    builtin = "builtin"
    """The platform's serving runtime (``python -m neocloud.serving SERVICE``)."""
    vllm = "vllm"
    """vLLM's OpenAI server, from the engine environment ``make install-vllm`` creates
    (``neocloud.serving.engines.vllm``); it takes a ``model`` and no ``service``."""


class ReplicaStatus(StrEnum):
    pending = "pending"
    """Waiting for a node (see ``message``)."""
    starting = "starting"
    """Process started; waiting for ``/ready``."""
    ready = "ready"
    failed = "failed"
    """Crashed; restarted after a back-off."""
    stopping = "stopping"
    stopped = "stopped"

    @property
    def live(self) -> bool:
        return self in (ReplicaStatus.starting, ReplicaStatus.ready)


class DeploymentCreate(WireModel):
    """Create a deployment.

    ``engine`` ``builtin`` (default): ``service`` (required) is ``embeddings``, ``chat``,
    ``package.module:Class`` or ``file.py:Class``, and ``model`` optionally picks the model
    of a built-in service (``hf:<org>/<name>`` or a local folder). ``engine`` ``vllm``: no
    ``service``; ``model`` is a local folder, a ``.gguf`` file or ``hf:<org>/<name>``
    (default: the built-in chat model, SmolLM2-135M-Instruct, as a standard checkpoint).
    The deployment answers to its ``name`` in the OpenAI ``model`` field.
    """

    # What the service checks of ``engine`` and ``service`` together, said in the schema.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["service"], "properties": {
            "service": {"type": "string"}, "engine": {"const": Engine.builtin.value}}},
        {"required": ["engine"], "properties": {"engine": {"const": Engine.vllm.value}},
         "not": {"required": ["service"]}},
    ]})

    name: Name
    service: str | None = Field(default=None, min_length=1, max_length=512,
                                json_schema_extra={"pattern": SERVICE_REF_PATTERN})
    """Required with engine ``builtin``; not allowed with ``vllm`` (400 naming it)."""
    engine: Engine = Engine.builtin
    model: str | None = Field(default=None, max_length=512)
    shape: ShapeName = "cpu.small"
    replicas: int = Field(default=1, ge=0, le=64)
    env: Env = Field(default_factory=dict)
    secrets: SecretRefs = Field(default_factory=dict)
    """Environment variable -> name of a secret of the workspace (injected at start)."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Larger is more important; work of higher priority may preempt lower-priority,
    preemptible work when no node has room."""
    preemptible: bool = False
    """Whether higher-priority work may stop these replicas to take their place."""
    drain_timeout_s: float = Field(default=DEFAULT_DRAIN_TIMEOUT_S, ge=0, le=3600)
    """Seconds a stopping replica gets to finish its in-flight requests before SIGKILL
    (scale-in, rolling update, delete); no new request is routed to it meanwhile."""
    cold_start_timeout_s: float = Field(default=DEFAULT_COLD_START_TIMEOUT_S, gt=0, le=3600)
    """Seconds the gateway holds a request while the deployment starts from zero; then 503
    with ``Retry-After``."""
    autoscaling: AutoscalingConfig | None = None
    """Follow the load between ``min_replicas`` and ``max_replicas`` (``replicas`` is then
    the starting count, bounded to them); ``None``: a fixed ``replicas``."""
    max_surge: int = Field(default=1, ge=0, le=64)
    """Replicas a rolling update may run above ``replicas``."""
    max_unavailable: int = Field(default=0, ge=0, le=64)
    """Ready replicas a rolling update may go below ``replicas`` (0: never fewer)."""

    @model_validator(mode="after")
    def _rollout_can_move(self) -> DeploymentCreate:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0 (a rolling "
                             "update could never start)")
        return self


class DeploymentUpdate(WireModel):
    """Change a deployment; fields left out keep their value. A change of ``engine``,
    ``service``, ``model``, ``shape`` or ``env`` rolls the replicas to a new generation.
    Moving to engine ``vllm`` drops the service; moving back to ``builtin`` needs one."""

    service: str | None = Field(default=None, min_length=1, max_length=512,
                                json_schema_extra={"pattern": SERVICE_REF_PATTERN})
    engine: Engine | None = None
    model: str | None = Field(default=None, max_length=512)
    shape: ShapeName | None = None
    replicas: int | None = Field(default=None, ge=0, le=64)
    env: Env | None = None
    secrets: SecretRefs | None = None
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    preemptible: bool | None = None
    drain_timeout_s: float | None = Field(default=None, ge=0, le=3600)
    cold_start_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    autoscaling: AutoscalingConfig | None = None
    """New autoscaling settings; an explicit ``null`` turns autoscaling off."""
    max_surge: int | None = Field(default=None, ge=0, le=64)
    max_unavailable: int | None = Field(default=None, ge=0, le=64)
    revision: int | None = Field(default=None, ge=1)
    """The revision this change was made against; another current one is a 409 (as a
    stale ``If-Match`` header is)."""


class ReplicaOut(OutModel):
    id: str
    status: ReplicaStatus
    generation: int
    node: str | None
    gpu_indices: list[int]
    port: int | None
    pid: int | None
    restarts: int
    message: str | None
    created_at: datetime
    ready_at: datetime | None


class DryRunOut(OutModel):
    """What ``POST /deployments?dry_run=true`` answers, storing nothing: whether one
    replica of the spec fits now (``node``), could fit by preempting lower-priority work
    (``preempts``), or could ever fit on a registered node; ``reason`` names the nodes that
    come closest and why every node is rejected, ``code`` its stable code; ``warnings``
    the advice the real create would return (see :attr:`DeploymentOut.warnings`)."""

    dry_run: bool = True
    fits_now: bool
    can_ever_fit: bool
    node: str | None = None
    preempts: int = 0
    reason: str | None = None
    code: ReasonCode | None = None
    warnings: list[str] = Field(default_factory=list)


class RevisionOut(OutModel):
    """One accepted version of a deployment's spec; ``active`` for the current one (the
    others are superseded)."""

    revision: int
    generation: int
    message: str
    spec: dict[str, Any]
    created_at: datetime
    active: bool


class DeploymentOut(OutModel):
    id: str
    name: str
    service: str | None
    """``None`` for engine ``vllm``."""
    engine: Engine = Engine.builtin
    model: str | None
    """``None``: none was given, the service's or engine's own default runs (``default``
    in the CLI and in the Created event)."""
    shape: str
    replicas: int
    ready_replicas: int
    status: DeploymentStatus
    pending_reason: str | None
    pending_code: ReasonCode | None = None
    """Stable code of ``pending_reason``."""
    generation: int
    revision: int = 1
    """Raised by every change of the spec (the ``ETag`` of ``GET``)."""
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    cold_start_timeout_s: float = DEFAULT_COLD_START_TIMEOUT_S
    autoscaling: AutoscalingConfig | None = None
    max_surge: int = 1
    max_unavailable: int = 0
    env: MaskedEnv
    secrets: dict[str, str] = Field(default_factory=dict)
    """Environment variable -> secret name (never the value)."""
    priority: int = 0
    preemptible: bool = False
    endpoint: str
    """Gateway path of the deployment's own routes, e.g. ``/endpoints/minilm/``."""
    created_at: datetime
    updated_at: datetime
    replica_list: list[ReplicaOut] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def warnings(self) -> list[str]:
        """Advice about this spec, e.g. a plain ``env`` value that looks like a secret
        (see :func:`neocloud.models.secrets.env_warnings`)."""
        return env_warnings(self.env)

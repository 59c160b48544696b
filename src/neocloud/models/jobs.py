"""Jobs: run-to-completion work of 1..N gang-scheduled workers, with retries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, computed_field

from neocloud.models.common import (
    Env,
    Name,
    OutModel,
    ProcessArgs,
    SecretRefs,
    ShapeName,
    WireModel,
)
from neocloud.models.secrets import MaskedEnv, env_warnings
from neocloud.models.volumes import VolumeMount

#: Lines of output kept in a failed job's ``message`` (the last ones of the failing worker).
LAST_LINES = 20


class JobStatus(StrEnum):
    """Life of a job.

    ``queued`` (waiting for room; see ``reason``) -> ``starting`` (all workers placed,
    processes launching) -> ``running`` -> ``succeeded`` | ``failed`` (exit code and last
    log lines in ``message``) | ``stopped`` (by ``stop``). A failed attempt with retries
    left becomes ``retrying`` until its back-off ends, then ``queued`` again. ``stopping``
    is the moment between a stop request and the workers' exit.
    """

    queued = "queued"
    starting = "starting"
    running = "running"
    retrying = "retrying"
    stopping = "stopping"
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.stopped)


class WorkerStatus(StrEnum):
    starting = "starting"
    running = "running"
    stopping = "stopping"
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"


class JobCreate(WireModel):
    """Create a job.

    ``command`` is run as is (no shell) by each of ``workers`` workers, which are placed
    all at once (gang) and get ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``,
    ``NODE_RANK``, ``LOCAL_RANK`` and ``NNODES`` for ``torch.distributed``. ``secrets``
    maps an environment variable to the name of a secret of the workspace. A failed
    attempt is retried up to ``max_retries`` times after an exponential back-off.
    ``time_limit_s`` (seconds of running time per attempt) fails the job when exceeded.
    Higher ``priority`` is placed first and may preempt lower-priority ``preemptible`` work.
    """

    name: Name
    command: ProcessArgs = Field(min_length=1, max_length=1024)
    shape: ShapeName = "cpu.small"
    workers: int = Field(default=1, ge=1, le=256)
    env: Env = Field(default_factory=dict)
    secrets: SecretRefs = Field(default_factory=dict)
    volumes: list[VolumeMount] = Field(default_factory=list, max_length=16, json_schema_extra={
        "uniqueItems": True})  # and no two at one path (checked by the control plane)
    max_retries: int = Field(default=0, ge=0, le=100)
    time_limit_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    priority: int = Field(default=0, ge=-1000, le=1000)
    preemptible: bool = False


class JobWorkerOut(OutModel):
    """One worker of the current attempt. ``exit_code`` is negative for a signal."""

    rank: int
    attempt: int
    status: WorkerStatus
    node: str | None
    gpu_indices: list[int]
    pid: int | None
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None


class JobOut(OutModel):
    id: str
    name: str
    command: list[str]
    shape: str
    workers: int
    env: MaskedEnv
    secrets: dict[str, str]
    """Environment variable -> secret name (never the value)."""
    volumes: list[VolumeMount]
    max_retries: int
    attempt: int
    """How many times the workers were started (0 while never started)."""
    failures: int
    """Failed attempts so far; the job is retried while ``failures <= max_retries``."""
    time_limit_s: float | None
    priority: int
    preemptible: bool
    status: JobStatus
    reason: str | None
    """Why the job waits (queued), retries, failed or stopped."""
    exit_code: int | None
    message: str | None
    """The last log lines of the failing worker when the job failed."""
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_list: list[JobWorkerOut] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def warnings(self) -> list[str]:
        """Advice about this spec, e.g. a plain ``env`` value that looks like a secret
        (see :func:`neocloud.models.secrets.env_warnings`)."""
        return env_warnings(self.env)

"""Dev pods: interactive machines rented by the hour (shell, SSH, JupyterLab)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import Field, computed_field, field_validator

from neocloud.models.common import (
    Env,
    Name,
    OutModel,
    SecretRefs,
    ShapeName,
    WireModel,
)
from neocloud.models.secrets import MaskedEnv, env_warnings
from neocloud.models.volumes import VolumeMount

_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/=]+( [^\r\n]*)?$"
)

#: Default idle timeout of a pod: 1 hour (seconds).
DEFAULT_IDLE_TIMEOUT_S = 3600.0


class PodStatus(StrEnum):
    """``queued`` (waiting for room; see ``reason``) -> ``starting`` -> ``running`` ->
    ``stopping`` -> ``stopped`` (by ``stop`` or the idle timeout; files stay). ``failed``:
    the pod's process exited on its own (see ``reason``); ``start`` tries again."""

    queued = "queued"
    starting = "starting"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"


class PodCreate(WireModel):
    """Create (and start) a pod.

    Its working directory is the volume ``volume`` (created when missing; default
    ``<name>-home``). ``ssh_public_key`` (one OpenSSH public key line) may log in with
    ``ssh``. ``idle_timeout_s`` stops the pod after that many seconds without an SSH or
    shell session (``null``: never).
    """

    name: Name
    shape: ShapeName = "cpu.small"
    volume: Name | None = None
    ssh_public_key: str | None = Field(default=None, max_length=16384, json_schema_extra={
        "pattern": "^\\s*" + _SSH_KEY.pattern.strip("^$") + "\\s*$"})
    jupyter: bool = False
    env: Env = Field(default_factory=dict)
    secrets: SecretRefs = Field(default_factory=dict)
    volumes: list[VolumeMount] = Field(default_factory=list, max_length=16, json_schema_extra={
        "uniqueItems": True})  # and no two at one path (checked by the control plane)
    idle_timeout_s: float | None = Field(default=DEFAULT_IDLE_TIMEOUT_S, gt=0, le=30 * 86400)

    @field_validator("ssh_public_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not _SSH_KEY.match(v):
            raise ValueError("not an OpenSSH public key line ('ssh-ed25519 AAAA... comment')")
        return v


class PodSsh(OutModel):
    """How to reach the pod's ``sshd``: ``ssh -p PORT USER@HOST``."""

    host: str
    port: int
    user: str
    command: str


class PodOut(OutModel):
    id: str
    name: str
    shape: str
    status: PodStatus
    reason: str | None
    volume: str
    jupyter: bool
    env: MaskedEnv
    secrets: dict[str, str]
    """Environment variable -> secret name (never the value)."""
    volumes: list[VolumeMount]
    idle_timeout_s: float | None
    has_ssh_key: bool
    node: str | None
    gpu_indices: list[int]
    ssh: PodSsh | None
    jupyter_url: str | None
    created_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    last_activity_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def warnings(self) -> list[str]:
        """Advice about this spec, e.g. a plain ``env`` value that looks like a secret
        (see :func:`neocloud.models.secrets.env_warnings`)."""
        return env_warnings(self.env)

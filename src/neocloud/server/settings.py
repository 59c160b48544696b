"""Control-plane settings, read from the environment (prefix ``NEOCLOUD_``) once at start.

An empty variable counts as unset (``NEOCLOUD_PUBLIC_METRICS=`` is the default, ``False``),
as ``NEOCLOUD_TOKEN=`` and ``NEOCLOUD_URL=`` do for the CLI. :func:`load_settings` turns a
value that does not parse into :class:`InvalidSetting`, which names the variable and the
values it accepts (the CLI prints it as a usage error, exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from neocloud.errors import InvalidRequest

ENV_PREFIX = "NEOCLOUD_"

#: What a value of each kind of field may be, by pydantic's error type.
_ACCEPTED = {
    "bool_parsing": "1, 0, true, false, yes, no, on or off (or empty for the default)",
    "bool_type": "1, 0, true, false, yes, no, on or off (or empty for the default)",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
}


class InvalidSetting(InvalidRequest):
    """A ``NEOCLOUD_*`` variable (named in ``param``) holds a value its setting refuses."""

    default_code = "invalid_setting"


def default_home() -> Path:
    """The data folder: ``$NEOCLOUD_HOME`` or ``~/.neocloud``."""
    return Path.home() / ".neocloud"


class Settings(BaseSettings):
    """Every knob of the control plane. Units are in the names (seconds, bytes, MiB).

    Environment variables: ``NEOCLOUD_HOME``, ``NEOCLOUD_DATABASE_URL``, ``NEOCLOUD_HOST``,
    ``NEOCLOUD_PORT``, ``NEOCLOUD_BACKEND`` and the rest of the fields upper-cased.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      env_ignore_empty=True)

    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<home>/neocloud.db``. PostgreSQL:
    ``postgresql+psycopg://user@host/db``."""
    host: str = "127.0.0.1"
    port: int = 8700
    backend: str = "local"
    """Backend of this machine's node: ``local``, ``fake`` (simulated, for tests) or
    ``ray`` (work runs on the nodes that ``neocloud node join`` the Ray cluster at
    ``ray_address``; this machine is then not registered as a node itself)."""
    ray_address: str = "auto"
    """The Ray cluster of the ``ray`` backend (GCS ``host:port``; ``auto``: the cluster
    this machine is a node of)."""
    ray_node_ip: str | None = None
    """This machine's address in the Ray cluster, when it has several."""
    register_local_node: bool = True
    """Register this machine as a node at start."""
    reconcile_interval_s: float = 1.0
    replica_ready_timeout_s: float = 600.0
    """Seconds a built-in engine replica gets to answer ``/ready`` before it is restarted."""
    vllm_ready_timeout_s: float = 1800.0
    """The same for an engine ``vllm`` replica: vLLM compiles and profiles at start
    (minutes on CPU; the first start of a model also fills vLLM's compile cache)."""
    replica_stop_grace_s: float = 10.0
    restart_backoff_base_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    usage_period_s: float = 60.0
    """Longest stretch of running time covered by one usage record (seconds)."""
    max_body_bytes: int = 8 * 1024 * 1024
    token_cache_ttl_s: float = 5.0
    python: str | None = None
    """Interpreter that runs replicas; default: the control plane's own."""
    secret_key: SecretStr | None = None
    """Key that encrypts secrets at rest (``NEOCLOUD_SECRET_KEY``); default: a random key
    generated once into ``<home>/secret.key``."""
    job_stop_grace_s: float = 10.0
    """Seconds a stopped job worker or pod gets between SIGTERM and SIGKILL."""
    volume_max_file_bytes: int = 1 << 40
    """Largest file one volume upload may store (bytes; default 1 TiB)."""
    public_metrics: bool = False
    """Serve the control plane's Prometheus ``/metrics`` without a token
    (``NEOCLOUD_PUBLIC_METRICS=1``). By default it needs a token of an operator workspace:
    its labels name every workspace and deployment."""

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'neocloud.db'}"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, with ``overrides`` (field name -> value, e.g.
    from command-line options) taking precedence.

    Raises:
        InvalidSetting: a value does not parse; the first problem, naming its variable
            (``NEOCLOUD_<FIELD>``), the value given and the values accepted.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise invalid_setting(exc) from None


def invalid_setting(exc: ValidationError) -> InvalidSetting:
    """The first problem of ``exc`` (from :class:`Settings`) as :class:`InvalidSetting`."""
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    loc = first.get("loc") or ("?",)
    var = f"{ENV_PREFIX}{str(loc[0]).upper()}"
    accepted = _ACCEPTED.get(str(first.get("type")))
    why = f"it must be {accepted}" if accepted else str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return InvalidSetting(f"{var}={first.get('input')!r} is not valid: {why}{more}", param=var)

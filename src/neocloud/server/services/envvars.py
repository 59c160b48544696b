"""Environment variables given to workloads: names that are valid, and names neocloud
sets itself."""

from __future__ import annotations

import re

from neocloud.errors import InvalidRequest

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""A POSIX environment variable name."""

#: Variables the platform sets itself; a workload may not override them.
RESERVED_ENV = frozenset({
    "CUDA_VISIBLE_DEVICES", "NEOCLOUD_SERVED_MODEL_NAME", "NEOCLOUD_WORKLOAD_ID", "PORT",
})


def check_env(env: dict[str, str], *, param: str = "env") -> None:
    """Raise :class:`InvalidRequest` naming ``param`` for an invalid or reserved name."""
    for key in env:
        if not ENV_NAME.match(key):
            raise InvalidRequest(f"env name {key!r} is not a valid variable name", param=param)
        if key in RESERVED_ENV:
            raise InvalidRequest(f"env name {key!r} is set by neocloud itself", param=param)

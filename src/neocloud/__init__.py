"""neocloud: an open-source AI cloud anyone can run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from neocloud.sdk import Client

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    # ``neocloud.Client`` is imported on first use so that ``import neocloud`` stays light.
    if name == "Client":
        from neocloud.sdk import Client

        return Client
    raise AttributeError(f"module 'neocloud' has no attribute {name!r}")

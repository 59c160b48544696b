"""Python SDK of the neocloud REST API: :class:`Client` and one resource class per noun."""

from __future__ import annotations

from neocloud.sdk.client import Client
from neocloud.sdk.deployments import WaitProgress

__all__ = ["Client", "WaitProgress"]

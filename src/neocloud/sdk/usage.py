"""``client.usage``: what the workspace's work cost so far."""

from __future__ import annotations

from neocloud.models import Bill
from neocloud.sdk._http import HttpApi


class Usage:
    """Metered usage of the workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def bill(self) -> Bill:
        """The workspace's bill so far: one line per workload, seconds, GPU-seconds,
        tokens and cost in USD, plus ``replica_seconds`` and ``total_usd``."""
        return self._api.get_model(Bill, "/usage")

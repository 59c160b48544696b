"""Usage and the bill of a workspace."""

from __future__ import annotations

from datetime import datetime

from neocloud.models.common import OutModel


class BillLine(OutModel):
    """Usage of one workload over the period. Seconds of wall time; cost in USD."""

    kind: str
    """``replica``, ``job``, ``pod``, ``tokens`` or ``volume``."""
    name: str
    shape: str | None
    seconds: float
    gpu_seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    storage_bytes: int = 0
    """For ``kind == "volume"``: the bytes the volume holds (last measured)."""
    cost_usd: float


class Bill(OutModel):
    workspace: str
    period_start: datetime | None
    period_end: datetime
    lines: list[BillLine]
    replica_seconds: float
    total_usd: float

"""Usage and the bill of a workspace.

Money is carried as integer micro-dollars (``amount_micros``, ``total_micros``; 1 USD =
1,000,000 µ$) and summed as integers; the USD fields (``cost_usd``, ``total_usd``) are
derived from them for display and for clients written before the micro-dollar fields.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import computed_field

from neocloud.models.billing import MICROS_PER_USD
from neocloud.models.common import OutModel


class BillLine(OutModel):
    """Usage of one workload over the period. Seconds of wall time; amount in µ$."""

    kind: str
    """``replica``, ``job``, ``pod``, ``tokens`` or ``volume``."""
    name: str
    shape: str | None
    seconds: float
    gpu_seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    """For ``kind == "tokens"``: gateway requests served (status below 400)."""
    failed_requests: int = 0
    """For ``kind == "tokens"``: gateway requests forwarded to a replica that failed
    (status 400 or above, a client that left mid-answer included); their tokens are
    billed too (the engine did that work), they are not counted in ``requests``. The
    gateway's own refusals, which reach no replica, are not usage."""
    storage_bytes: int = 0
    """For ``kind == "volume"``: the bytes the volume holds (last measured)."""
    amount_micros: int
    """The recorded amounts (µ$) plus the estimate of the running time not yet recorded."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_usd(self) -> float:
        """``amount_micros`` in USD."""
        return self.amount_micros / MICROS_PER_USD


class Bill(OutModel):
    workspace: str
    period_start: datetime | None
    period_end: datetime
    lines: list[BillLine]
    replica_seconds: float
    total_micros: int
    """The sum of the lines' ``amount_micros`` (exact, an integer sum)."""
    running_workloads: int = 0
    """Replicas, job workers and pods running now: the lines include their running time
    since their last usage record, which no invoice holds yet."""
    unrecorded_micros: int = 0
    """The µ$ of that running time (part of ``total_micros``), priced as its usage records
    will be; an invoice adds it once it is recorded. The rest of ``total_micros`` is the
    sum of the records, which the invoices of their periods add up to."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_usd(self) -> float:
        """``total_micros`` in USD."""
        return self.total_micros / MICROS_PER_USD

"""Price lists, invoices, budgets and chargeback on the wire.

Every amount of money is an integer number of micro-dollars (1 USD = 1,000,000); the
``*_usd`` fields beside some of them are for display only.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, computed_field

from neocloud.models.common import OutModel, WireModel

#: Micro-dollars: a non-negative integer up to 2**53 (9 billion dollars), which a JSON
#: number holds exactly (a larger bound is rounded by JSON clients) and a PostgreSQL
#: ``BIGINT`` stores.
Micros = Annotated[int, Field(ge=0, le=2**53)]

MICROS_PER_USD = 1_000_000


class PriceKind(StrEnum):
    """What a price list entry prices.

    - ``shape``: running time of one workload of the shape, per hour (billed per second);
    - ``model``: tokens through the gateway for a deployment name, model or service
      (``*`` for every one), per million input and per million output tokens;
    - ``storage``: volume bytes held, per GiB-hour (target ``*``);
    - ``pool``: what a node pool costs its owner per hour (for chargeback).
    """

    shape = "shape"
    model = "model"
    storage = "storage"
    pool = "pool"


_ZERO = {"maximum": 0}


class PriceSet(WireModel):
    """A new version of one price, in force from ``effective_at`` (default: now)."""

    # Which amounts apply to which kind (the service refuses the others, naming them),
    # for the OpenAPI schema: one branch per kind, the other amounts 0 (storage: target
    # ``*``).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"properties": {"kind": {"enum": ["shape", "pool"]}, "input_per_m_micros": _ZERO,
                        "output_per_m_micros": _ZERO, "per_gib_hour_micros": _ZERO}},
        {"properties": {"kind": {"enum": ["model"]}, "per_hour_micros": _ZERO,
                        "per_gib_hour_micros": _ZERO}},
        {"properties": {"kind": {"enum": ["storage"]}, "target": {"enum": ["*"]},
                        "per_hour_micros": _ZERO, "input_per_m_micros": _ZERO,
                        "output_per_m_micros": _ZERO}},
    ]})

    kind: PriceKind
    target: str = Field(min_length=1, max_length=512)
    per_hour_micros: Micros = 0
    input_per_m_micros: Micros = 0
    output_per_m_micros: Micros = 0
    per_gib_hour_micros: Micros = 0
    effective_at: datetime | None = None


class PriceOut(OutModel):
    id: int
    kind: PriceKind
    target: str
    per_hour_micros: int
    input_per_m_micros: int
    output_per_m_micros: int
    per_gib_hour_micros: int
    effective_at: datetime
    created_at: datetime
    created_by: str | None = None


class Meter(StrEnum):
    """What a usage record and an invoice line measure, with the unit of its quantity."""

    gpu_seconds = "gpu_seconds"
    """GPU-seconds (a fractional share counts its fraction); priced by the shape per hour."""
    cpu_seconds = "cpu_seconds"
    """CPU-seconds of shapes without GPUs; priced by the shape per hour."""
    input_tokens = "input_tokens"
    """Prompt tokens; priced per million."""
    output_tokens = "output_tokens"
    """Completion tokens; priced per million."""
    storage_byte_hours = "storage_byte_hours"
    """Bytes held × hours; priced per GiB-hour."""


METER_UNITS: dict[Meter, tuple[str, str, float]] = {
    Meter.gpu_seconds: ("GPU-second", "GPU-hour", 3600.0),
    Meter.cpu_seconds: ("CPU-second", "CPU-hour", 3600.0),
    Meter.input_tokens: ("token", "million tokens", 1e6),
    Meter.output_tokens: ("token", "million tokens", 1e6),
    Meter.storage_byte_hours: ("byte-hour", "GiB-hour", float(1 << 30)),
}
"""Per meter: the unit of a quantity, the unit a price is per, and how many quantity units
make one price unit (a shape's hourly price is split evenly over its GPUs, or its CPUs)."""


class PeriodKind(StrEnum):
    day = "day"
    month = "month"


class InvoiceStatus(StrEnum):
    draft = "draft"
    """The period is open (or within its closing grace): lines still grow."""
    closed = "closed"
    """Written once at close; never changes."""


class InvoiceLine(OutModel):
    """One workload and meter at one unit price over the invoice's period.

    ``quantity`` is in ``quantity_unit`` (GPU-seconds, CPU-seconds, tokens, byte-hours);
    ``unit_price_micros`` is per ``price_unit`` (a GPU-hour or CPU-hour: the shape's hourly
    price over its GPUs or CPUs; a million tokens; a GiB-hour), and ``priced_quantity`` is
    the quantity in that unit, so ``priced_quantity * unit_price_micros`` is
    ``amount_micros`` up to rounding; ``amount_micros`` is the sum of the covered usage
    records' amounts (exact).
    """

    kind: str
    name: str
    object_id: str
    shape: str | None = None
    meter: Meter
    gpu_type: str | None = None
    quantity: float
    unit_price_micros: int
    amount_micros: int
    records: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def quantity_unit(self) -> str:
        return METER_UNITS[self.meter][0]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def price_unit(self) -> str:
        return METER_UNITS[self.meter][1]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def priced_quantity(self) -> float:
        return self.quantity / METER_UNITS[self.meter][2]


class InvoiceOut(OutModel):
    workspace: str
    period: str
    """``2026-11`` (a month) or ``2026-11-30`` (a day), UTC."""
    period_kind: PeriodKind
    period_start: datetime
    period_end: datetime
    status: InvoiceStatus
    closed_at: datetime | None = None
    lines: list[InvoiceLine]
    total_micros: int
    total_usd: float


class BudgetSet(WireModel):
    """A workspace's monthly budget.

    ``thresholds`` are percentages of ``monthly_micros`` at which an event is recorded
    (and the console shows a banner); with ``hard_stop`` new work and gateway requests are
    refused once the month's spend reaches 100 %; with ``stop_running`` too, running work
    is stopped then.
    """

    monthly_micros: Micros
    thresholds: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [50, 80, 100], max_length=16)
    hard_stop: bool = False
    stop_running: bool = False


class BudgetStatus(StrEnum):
    ok = "ok"
    alerting = "alerting"
    """At least one threshold has been crossed this month."""
    exceeded = "exceeded"
    """Spend reached 100 % of the amount."""


class BudgetOut(OutModel):
    workspace: str
    monthly_micros: int
    thresholds: list[int]
    hard_stop: bool
    stop_running: bool
    month: str
    spent_micros: int
    percent: float
    status: BudgetStatus
    crossed: list[int]
    """Thresholds (percent) this month's spend has reached."""
    refusing: bool
    """New work and gateway requests are refused (hard stop at 100 %)."""


class ChargebackShare(OutModel):
    workspace: str
    """A workspace name, or ``(idle)`` for capacity nobody used."""
    used_units: float
    """GPU-seconds on GPU pools, CPU-seconds on pools without GPUs."""
    amount_micros: int


class ChargebackPool(OutModel):
    pool: str
    unit: str
    """``gpu_seconds`` or ``cpu_seconds``."""
    capacity_units: float
    cost_micros: int
    shares: list[ChargebackShare]


class ChargebackOut(OutModel):
    period: str
    period_start: datetime
    period_end: datetime
    pools: list[ChargebackPool]
    total_micros: int

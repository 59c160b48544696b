"""Shapes: named resource requests with a price per hour."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from neocloud.models.common import INT32_MAX, OutModel, ShapeName, WireModel

#: Highest shape price, USD per hour: the price lists' bound (2**53 micro-dollars, exact in
#: a float and in JSON). Unbounded, a price of 1e308 became an infinite amount in
#: micro-dollars and failed every bill and every stop of a replica of that shape.
MAX_PRICE_PER_HOUR_USD = 2**53 / 1_000_000


class ShapeCreate(WireModel):
    """A resource shape. CPU in millicores, memory in MiB, price in USD per hour.

    ``gpu_count`` whole GPUs, or ``gpu_milli`` (1..999) of one GPU for a fractional shape.
    ``gpu_type`` restricts the GPU model (e.g. ``H100``); ``None`` takes any.
    """

    # The rule of ``_gpu_fields``, for the OpenAPI schema: not both GPU fields set.
    model_config = ConfigDict(json_schema_extra={"not": {
        "required": ["gpu_count", "gpu_milli"],
        "properties": {"gpu_count": {"minimum": 1}, "gpu_milli": {"minimum": 1}}}})

    name: ShapeName
    cpu_milli: int = Field(ge=1, le=INT32_MAX)
    memory_mib: int = Field(ge=1, le=INT32_MAX)
    gpu_count: int = Field(default=0, ge=0, le=64)
    gpu_milli: int = Field(default=0, ge=0, le=999)
    gpu_type: ShapeName | None = None
    price_per_hour_usd: float = Field(ge=0, le=MAX_PRICE_PER_HOUR_USD)

    @model_validator(mode="after")
    def _gpu_fields(self) -> ShapeCreate:
        if self.gpu_count and self.gpu_milli:
            raise ValueError("set gpu_count or gpu_milli, not both")
        return self


class ShapeOut(OutModel):
    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int
    gpu_milli: int
    gpu_type: str | None
    price_per_hour_usd: float

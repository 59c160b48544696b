"""Shapes: named resource requests with a price per hour (USD)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, NotFound
from neocloud.models import ShapeCreate
from neocloud.server.db.tables import Shape

#: Shapes every new cloud starts with. Prices are list prices in USD per hour, set near
#: public on-demand GPU cloud rates of 2025-2026 (A10 ~ 1.1, H100 ~ 2.5 per GPU-hour);
#: operators change or add their own with ``neocloud shape add``.
DEFAULT_SHAPES: tuple[ShapeCreate, ...] = (
    ShapeCreate(name="cpu.small", cpu_milli=500, memory_mib=2048, price_per_hour_usd=0.04),
    ShapeCreate(name="cpu.medium", cpu_milli=1000, memory_mib=4096, price_per_hour_usd=0.08),
    ShapeCreate(name="cpu.large", cpu_milli=4000, memory_mib=16384, price_per_hour_usd=0.32),
    ShapeCreate(
        name="gpu.t4.quarter", cpu_milli=1000, memory_mib=4096, gpu_milli=250,
        gpu_type="T4", price_per_hour_usd=0.15,
    ),
    ShapeCreate(
        name="gpu.a10", cpu_milli=4000, memory_mib=32768, gpu_count=1, gpu_type="A10",
        price_per_hour_usd=1.10,
    ),
    ShapeCreate(
        name="gpu.h100", cpu_milli=8000, memory_mib=131072, gpu_count=1, gpu_type="H100",
        price_per_hour_usd=2.50,
    ),
    ShapeCreate(
        name="gpu.h100x8", cpu_milli=64000, memory_mib=1048576, gpu_count=8, gpu_type="H100",
        price_per_hour_usd=20.00,
    ),
)


def ensure_defaults(s: Session) -> None:
    """Insert the default shapes that do not exist yet (operators' edits are kept)."""
    have = set(s.scalars(select(Shape.name)))
    for shape in DEFAULT_SHAPES:
        if shape.name not in have:
            s.add(Shape(**shape.model_dump()))


def create_shape(s: Session, *, spec: ShapeCreate) -> Shape:
    """Add a shape. Raises :class:`AlreadyExists` when the name is taken."""
    if s.get(Shape, spec.name) is not None:
        raise AlreadyExists(f"shape {spec.name!r} already exists", param="name")
    row = Shape(**spec.model_dump())
    s.add(row)
    s.flush()
    return row


def get_shape(s: Session, *, name: str, param: str = "name") -> Shape:
    """The shape called ``name``. Raises :class:`NotFound` naming ``param``."""
    row = s.get(Shape, name)
    if row is None:
        known = ", ".join(sorted(s.scalars(select(Shape.name))))
        raise NotFound(f"unknown shape {name!r}; known shapes: {known}", param=param)
    return row


def list_shapes(s: Session) -> list[Shape]:
    return list(s.scalars(select(Shape).order_by(Shape.price_per_hour_usd, Shape.name)))

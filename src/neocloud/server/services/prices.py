"""Price lists: versioned prices in integer micro-dollars, set by operators.

Each ``(kind, target)`` has a history of versions; the version in force at time ``t`` is
the one with the latest ``effective_at <= t``. A version may take effect in the future
(a scheduled change) or now, never in the past (:data:`CLOCK_SKEW_S`). Running time of a
shape with no version is priced at the shape's own ``price_per_hour_usd`` (rounded to
micro-dollars) from the beginning of time, so a cloud bills correctly before any operator
touches the price list.

Token prices are looked up for a deployment by, in order, its name, its ``model``, its
``service``, then ``*``; the first target with a version in force wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, InvalidRequest, NotFound
from neocloud.models.billing import PriceKind, PriceSet
from neocloud.server.db.tables import Price, Shape
from neocloud.server.metering.money import micros_of_usd


@dataclass(frozen=True)
class Priced:
    """A price in force: the row (``None`` for a shape's own list price) and its amounts."""

    price_id: int | None
    per_hour_micros: int = 0
    input_per_m_micros: int = 0
    output_per_m_micros: int = 0
    per_gib_hour_micros: int = 0


FREE = Priced(price_id=None)

CLOCK_SKEW_S = 300.0
"""Seconds an ``effective_at`` may lie before the control plane's clock and still be taken
(as that earlier time): the allowance for the skew between the operator's clock and the
server's. Invariant: **a price version never takes effect before the moment it is set**
(less this allowance). Usage is priced when it is recorded and never repriced, so a
version dated further back was listed as in force over usage billed at the old price:
the bill no longer matched the price list."""


def set_price(s: Session, *, spec: PriceSet, created_by: str | None,
              now: datetime | None = None) -> Price:
    """Add a version of a price, in force from ``spec.effective_at`` (default ``now``).

    Raises:
        InvalidRequest: a field that does not belong to the kind is set (names it), or
            ``effective_at`` is more than :data:`CLOCK_SKEW_S` before ``now``
            (``param="effective_at"``).
        NotFound: the shape of a ``shape`` price does not exist (``param="target"``).
        AlreadyExists: a version of the same price with the same effective time exists.
    """
    now = now or datetime.now(UTC)
    allowed = {
        PriceKind.shape: {"per_hour_micros"},
        PriceKind.pool: {"per_hour_micros"},
        PriceKind.model: {"input_per_m_micros", "output_per_m_micros"},
        PriceKind.storage: {"per_gib_hour_micros"},
    }[spec.kind]
    for field in ("per_hour_micros", "input_per_m_micros", "output_per_m_micros",
                  "per_gib_hour_micros"):
        if field not in allowed and getattr(spec, field):
            raise InvalidRequest(f"{field} does not apply to a {spec.kind.value} price",
                                 param=field)
    if spec.kind is PriceKind.shape and s.get(Shape, spec.target) is None:
        raise NotFound(f"shape {spec.target!r} does not exist", param="target")
    if spec.kind is PriceKind.storage and spec.target != "*":
        raise InvalidRequest("a storage price has target '*'", param="target")
    effective = spec.effective_at or now
    if effective.tzinfo is None:
        effective = effective.replace(tzinfo=UTC)
    if (now - effective).total_seconds() > CLOCK_SKEW_S:
        raise InvalidRequest(
            f"effective_at {effective.isoformat()} is in the past (now is "
            f"{now.replace(microsecond=0).isoformat()}): usage already recorded keeps the "
            "price it was billed at, so a price version takes effect now or later; leave "
            "effective_at out for now", param="effective_at")
    dup = s.scalars(select(Price).where(
        Price.kind == spec.kind.value, Price.target == spec.target,
        Price.effective_at == effective)).first()
    if dup is not None:
        raise AlreadyExists(f"a {spec.kind.value} price for {spec.target!r} already takes "
                            f"effect at {effective.isoformat()}", param="effective_at")
    row = Price(kind=spec.kind.value, target=spec.target, per_hour_micros=spec.per_hour_micros,
                input_per_m_micros=spec.input_per_m_micros,
                output_per_m_micros=spec.output_per_m_micros,
                per_gib_hour_micros=spec.per_gib_hour_micros, effective_at=effective,
                created_by=created_by, created_at=now)
    s.add(row)
    s.flush()
    return row


def list_prices(s: Session, *, kind: PriceKind | None = None,
                target: str | None = None) -> list[Price]:
    """Every version, oldest effective time first."""
    q = select(Price).order_by(Price.kind, Price.target, Price.effective_at)
    if kind is not None:
        q = q.where(Price.kind == kind.value)
    if target is not None:
        q = q.where(Price.target == target)
    return list(s.scalars(q))


def _in_force(s: Session, kind: PriceKind, target: str, t: datetime) -> Price | None:
    return s.scalars(
        select(Price).where(Price.kind == kind.value, Price.target == target,
                            Price.effective_at <= t)
        .order_by(Price.effective_at.desc()).limit(1)).first()


def _priced(row: Price) -> Priced:
    return Priced(price_id=row.id, per_hour_micros=row.per_hour_micros,
                  input_per_m_micros=row.input_per_m_micros,
                  output_per_m_micros=row.output_per_m_micros,
                  per_gib_hour_micros=row.per_gib_hour_micros)


def shape_price(s: Session, shape: Shape | None, t: datetime) -> Priced:
    """The per-hour price of running ``shape`` at ``t`` (its list price without a version)."""
    if shape is None:
        return FREE
    row = _in_force(s, PriceKind.shape, shape.name, t)
    if row is not None:
        return _priced(row)
    return Priced(price_id=None, per_hour_micros=micros_of_usd(shape.price_per_hour_usd))


def token_price(s: Session, targets: Iterable[str | None], t: datetime) -> Priced:
    """The per-token price at ``t`` of the first of ``targets`` that has one, else ``*``,
    else free."""
    for target in [*targets, "*"]:
        if not target:
            continue
        row = _in_force(s, PriceKind.model, target, t)
        if row is not None:
            return _priced(row)
    return FREE


def storage_price(s: Session, t: datetime) -> Priced:
    row = _in_force(s, PriceKind.storage, "*", t)
    return _priced(row) if row is not None else FREE


def pool_price(s: Session, pool: str, t: datetime) -> Priced:
    row = _in_force(s, PriceKind.pool, pool, t)
    return _priced(row) if row is not None else FREE


def changes_between(s: Session, kind: PriceKind, targets: Iterable[str | None],
                    start: datetime, end: datetime) -> list[datetime]:
    """Effective times of versions of ``targets`` strictly inside ``(start, end)``, sorted:
    the instants where a span must be cut so each piece has one price."""
    names = [t for t in targets if t]
    if not names:
        return []
    rows = s.scalars(select(Price.effective_at).where(
        Price.kind == kind.value, Price.target.in_(names), Price.effective_at > start,
        Price.effective_at < end))
    return sorted(set(rows))

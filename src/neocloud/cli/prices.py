"""``neocloud price``: the versioned price lists (setting a price is for operators).

Amounts are typed in USD (``2.50``) and sent as integer micro-dollars, converted exactly
(decimal arithmetic, never floats)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, table
from neocloud.models.billing import PriceKind, PriceOut
from neocloud.models.shapes import ShapeOut

price_app = typer.Typer(help="Price lists: per shape, model, storage and node pool.",
                        invoke_without_command=True)


def micros(value: str | None, option: str) -> int:
    """``value`` USD as integer micro-dollars, exactly; a usage error when it is not a
    non-negative amount with at most 6 decimals."""
    if value is None:
        return 0
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not an amount in USD, e.g. 2.50",
                                 param_hint=option) from None
    m = d * 1_000_000
    if not d.is_finite() or d < 0 or m != m.to_integral_value():
        raise typer.BadParameter(f"{value!r}: a non-negative USD amount with at most 6 "
                                 "decimals", param_hint=option)
    return int(m)


def usd6(m: int) -> str:
    """Micro-dollars as ``$2.500000``-style text, trimmed to at least 2 decimals."""
    text = f"{Decimal(m) / 1_000_000:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


@price_app.callback()
def _prices(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        ls(ctx, kind=None, json_out=False)


#: How a token price and a storage price are set, for the hints of ``price ls``.
SET_MODEL_HINT = "neocloud price set model '*' --input-per-m USD --output-per-m USD"
SET_STORAGE_HINT = "neocloud price set storage '*' --per-gib-hour USD"


def _utc(when: datetime) -> datetime:
    """``when`` as an aware UTC time (a naive one is taken as UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def list_price_micros(shape: ShapeOut) -> int:
    """A shape's own hourly list price in micro-dollars, rounded as the server bills it
    (``round(usd * 1e6)``) while no price version of the shape is in force."""
    return max(0, round(shape.price_per_hour_usd * 1_000_000))


def price_rows(versions: list[PriceOut], shapes: list[ShapeOut] | None,
               now: datetime) -> list[tuple[str, str, str, str, str]]:
    """Table rows (KIND, TARGET, PRICE, EFFECTIVE, BY): every version, then the list price
    of each shape that has no version in force at ``now`` (it is billed at that price),
    ordered by kind and target. ``shapes`` is ``None`` when shapes are not listed."""

    def amount(p: PriceOut) -> str:
        if p.kind in (PriceKind.shape, PriceKind.pool):
            return f"{usd6(p.per_hour_micros)}/h"
        if p.kind is PriceKind.model:
            return f"in {usd6(p.input_per_m_micros)}/M, out {usd6(p.output_per_m_micros)}/M"
        return f"{usd6(p.per_gib_hour_micros)}/GiB-h"

    keyed = [((p.kind.value, p.target, 0), (p.kind.value, p.target, amount(p),
              _utc(p.effective_at).strftime("%Y-%m-%d %H:%M:%S UTC"), p.created_by or "-"))
             for p in versions]
    in_force = {p.target for p in versions
                if p.kind is PriceKind.shape and _utc(p.effective_at) <= now}
    for sh in shapes or []:
        if sh.name not in in_force:
            keyed.append(((PriceKind.shape.value, sh.name, -1), (
                PriceKind.shape.value, sh.name, f"{usd6(list_price_micros(sh))}/h",
                "(list price)", "shape")))
    order = {k.value: i for i, k in enumerate(PriceKind)}
    keyed.sort(key=lambda kr: (order.get(kr[0][0], len(order)), kr[0][1], kr[0][2]))
    return [row for _, row in keyed]


def unset_hints(versions: list[PriceOut], kind: PriceKind | None, now: datetime) -> list[str]:
    """What is billed nothing because no price is in force at ``now``: tokens (no model
    price at all, or none for ``*``) and volume storage; only for ``kind`` when given."""
    live = [p for p in versions if _utc(p.effective_at) <= now]
    hints = []
    if kind in (None, PriceKind.model):
        models = {p.target for p in live if p.kind is PriceKind.model}
        if not models:
            hints.append("No token price is set: tokens through the gateway are billed "
                         f"$0.00 (operators: {SET_MODEL_HINT}).")
        elif "*" not in models:
            hints.append("Tokens of a deployment that no model price names (by its name, "
                         f"model or service) are billed $0.00 (a default: {SET_MODEL_HINT}).")
    if kind in (None, PriceKind.storage):
        if not any(p.kind is PriceKind.storage for p in live):
            hints.append("No storage price is set: volumes are billed $0.00 (operators: "
                         f"{SET_STORAGE_HINT}).")
    return hints


@price_app.command("ls")
def ls(
    ctx: typer.Context,
    kind: PriceKind | None = typer.Option(None, "--kind", help="Only this kind of price."),
    json_out: bool = typer.Option(
        False, "--json",
        help="Print the price versions as JSON (the API's GET /prices: shapes' list prices "
             "are in `neocloud shape ls --json`)."),
) -> None:
    """What is billed, and at what price: every price version, and each shape's own hourly
    list price while no version of it is in force. Running time is billed per second at
    the hourly price, tokens per million; a meter without a price is billed $0 (said
    below the table)."""
    api = client(ctx)
    versions = api.prices.list(kind=kind)
    if json_out:
        print_json(versions)
        return
    now = datetime.now(UTC)
    shapes = api.shapes.list() if kind in (None, PriceKind.shape) else None
    output.out.print(table(("KIND", "TARGET", "PRICE", "EFFECTIVE", "BY"),
                           price_rows(versions, shapes, now)))
    for hint in unset_hints(versions, kind, now):
        output.note(hint)


@price_app.command("set")
def set_price(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="shape, model, storage or pool."),
    target: str = typer.Argument(..., help="Shape, deployment/model/service name or '*', "
                                 "pool name; '*' for storage."),
    per_hour: str | None = typer.Option(None, "--per-hour", help="USD per hour (shape, pool)."),
    input_per_m: str | None = typer.Option(None, "--input-per-m",
                                           help="USD per million input tokens (model)."),
    output_per_m: str | None = typer.Option(None, "--output-per-m",
                                            help="USD per million output tokens (model)."),
    per_gib_hour: str | None = typer.Option(None, "--per-gib-hour",
                                            help="USD per GiB-hour (storage)."),
    effective: datetime | None = typer.Option(None, "--effective",
                                              help="When it takes effect (UTC; default "
                                              "now; not in the past: recorded usage keeps "
                                              "its price)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add a price version; earlier usage keeps the price it was billed at."""
    p = client(ctx).prices.set(
        kind, target, per_hour_micros=micros(per_hour, "--per-hour"),
        input_per_m_micros=micros(input_per_m, "--input-per-m"),
        output_per_m_micros=micros(output_per_m, "--output-per-m"),
        per_gib_hour_micros=micros(per_gib_hour, "--per-gib-hour"), effective_at=effective)
    if json_out:
        print_json(p)
        return
    output.note(f"{p.kind.value} price of {p.target} set, in force from "
                f"{p.effective_at.strftime('%Y-%m-%d %H:%M:%S UTC')}")


def register(app: typer.Typer) -> None:
    app.add_typer(price_app, name="price")

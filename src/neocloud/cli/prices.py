"""``neocloud price``: the versioned price lists (setting a price is for operators).

Amounts are typed in USD (``2.50``) and sent as integer micro-dollars, converted exactly
(decimal arithmetic, never floats)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, table
from neocloud.models.billing import PriceKind, PriceOut

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


@price_app.command("ls")
def ls(
    ctx: typer.Context,
    kind: str | None = typer.Option(None, "--kind", help="shape, model, storage or pool."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List every price version (a shape without one costs its own price per hour)."""
    rows = client(ctx).prices.list(kind=kind)
    if json_out:
        print_json(rows)
        return

    def amount(p: PriceOut) -> str:
        if p.kind in (PriceKind.shape, PriceKind.pool):
            return f"{usd6(p.per_hour_micros)}/h"
        if p.kind is PriceKind.model:
            return f"in {usd6(p.input_per_m_micros)}/M, out {usd6(p.output_per_m_micros)}/M"
        return f"{usd6(p.per_gib_hour_micros)}/GiB-h"

    output.out.print(table(("KIND", "TARGET", "PRICE", "EFFECTIVE", "BY"), [
        (p.kind.value, p.target, amount(p), p.effective_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
         p.created_by or "-") for p in rows]))


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
                                              help="When it takes effect (UTC; default now)."),
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

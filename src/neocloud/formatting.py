"""How people read numbers and invoice quantities, in the CLI and the console alike.

One rule for every quantity, so that a value and its limit read alike (``1`` beside
``1``, never ``1.0`` beside ``1``): integers and large values without decimals, small ones
to three significant digits, trailing zeros dropped. Invoice quantities that would round
away in the price's unit (a few CPU-seconds are ``0.0008`` CPU-hours) are printed in the
quantity's own, smaller unit instead.
"""

from __future__ import annotations

import math

from neocloud.models.billing import InvoiceLine

#: Below this many price units (e.g. GPU-hours) a time quantity is printed in seconds.
SMALL_PRICED = 0.1


def num(x: float | int | None, digits: int = 3) -> str:
    """``x`` for a person: ``-`` for ``None``; whole numbers and values of 1,000 or more
    without decimals (with thousands separators); others to ``digits`` significant
    digits, trailing zeros dropped (``0.000123``, ``2.5``, ``1``)."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if float(x).is_integer() or abs(x) >= 1000:
        return f"{round(x):,}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def _plural(unit: str) -> str:
    return unit if unit.endswith("tokens") else unit + "s"


def quantity(ln: InvoiceLine) -> str:
    """An invoice line's quantity with its unit: tokens as a count; time in the price's
    unit (``1.25 GPU-hours``) unless under :data:`SMALL_PRICED` of it, then in seconds
    (``36.2 CPU-seconds``); storage in GiB-hours, to three significant digits."""
    if ln.quantity_unit == "token":
        return f"{ln.quantity:,.0f} tokens"
    if ln.quantity_unit.endswith("-second") and ln.priced_quantity < SMALL_PRICED:
        return f"{num(ln.quantity)} {_plural(ln.quantity_unit)}"
    return f"{num(ln.priced_quantity)} {_plural(ln.price_unit)}"

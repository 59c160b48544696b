"""``client.usage``: what the workspace's work cost so far.

Amounts are integer micro-dollars (``amount_micros``, ``total_micros``). A server older
than these fields answered USD floats only (``cost_usd`` per line, ``total_usd``); its
bill is read too, with the micro-dollars derived from them (see :func:`micros_from_usd`).
"""

from __future__ import annotations

from typing import Any

from neocloud.models import Bill
from neocloud.models.billing import MICROS_PER_USD
from neocloud.sdk._http import HttpApi, parse


def micros_from_usd(body: Any) -> Any:
    """The ``/usage`` answer ``body`` with ``amount_micros`` and ``total_micros`` filled
    in where a server older than them left them out: a line's ``amount_micros`` is its
    ``cost_usd`` rounded to the micro-dollar, ``total_micros`` the sum of the lines' (the
    current meaning: an exact integer sum). A line with neither field is left as it is
    (the bill is then refused as an unexpected answer); anything else is unchanged."""
    if not isinstance(body, dict) or not isinstance(body.get("lines"), list):
        return body
    lines = []
    for line in body["lines"]:
        if (isinstance(line, dict) and "amount_micros" not in line
                and isinstance(line.get("cost_usd"), int | float)):
            line = {**line, "amount_micros": round(line["cost_usd"] * MICROS_PER_USD)}
        lines.append(line)
    out = {**body, "lines": lines}
    amounts = [ln.get("amount_micros") for ln in lines if isinstance(ln, dict)]
    if ("total_micros" not in out and len(amounts) == len(lines)
            and all(isinstance(a, int) for a in amounts)):
        out["total_micros"] = sum(amounts)
    return out


class Usage:
    """Metered usage of the workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def bill(self) -> Bill:
        """The workspace's bill so far: one line per workload, seconds, GPU-seconds,
        tokens and cost (``amount_micros``, µ$; ``cost_usd``), plus ``replica_seconds``
        and ``total_micros`` / ``total_usd``. The bill of a server older than the
        micro-dollar fields is read too (:func:`micros_from_usd`).

        Raises:
            UpstreamError: the answer is not a bill (a line without any amount).
        """
        return parse(Bill, self._api.request("GET", "/usage"), micros_from_usd)

"""``client.prices``: the versioned price lists (amounts in integer micro-dollars)."""

from __future__ import annotations

from datetime import datetime

from neocloud.models.billing import PriceKind, PriceOut, PriceSet
from neocloud.sdk._http import HttpApi, build


class Prices:
    """Price lists: per shape (per hour, billed per second), per model (per million input
    and output tokens), storage (per GiB-hour) and node pools' own cost (per hour)."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self, *, kind: PriceKind | str | None = None,
             target: str | None = None) -> list[PriceOut]:
        """Every price version, oldest effective time first."""
        return self._api.get_list(PriceOut, "/prices", params={
            "kind": PriceKind(kind).value if kind else None, "target": target})

    def set(self, kind: PriceKind | str, target: str, *, per_hour_micros: int = 0,
            input_per_m_micros: int = 0, output_per_m_micros: int = 0,
            per_gib_hour_micros: int = 0, effective_at: datetime | None = None) -> PriceOut:
        """Add a price version in force from ``effective_at`` (default: now); operators.

        Raises:
            PermissionDenied: not an operator. InvalidRequest: a field that does not
            belong to ``kind``, or an unknown shape.
        """
        body = build(PriceSet, kind=PriceKind(kind), target=target,
                     per_hour_micros=per_hour_micros, input_per_m_micros=input_per_m_micros,
                     output_per_m_micros=output_per_m_micros,
                     per_gib_hour_micros=per_gib_hour_micros, effective_at=effective_at)
        return self._api.send_model("POST", PriceOut, "/prices", body)

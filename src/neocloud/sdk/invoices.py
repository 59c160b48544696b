"""``client.invoices``: the workspace's invoices per period, and operators' chargeback."""

from __future__ import annotations

from neocloud.models.billing import ChargebackOut, InvoiceOut, PeriodKind
from neocloud.sdk._http import HttpApi


class Invoices:
    """Invoices per UTC day (``2026-11-30``) or month (``2026-11``); the current period is
    a live draft, closed ones never change."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def get(self, period: str | None = None, *, workspace: str | None = None) -> InvoiceOut:
        """The invoice of ``period`` (default: this month); ``workspace`` for operators."""
        return self._api.get_model(InvoiceOut, f"/invoices/{period or 'current'}",
                                   params={"workspace": workspace})

    def csv(self, period: str | None = None, *, workspace: str | None = None) -> str:
        """The invoice as CSV text (one row per line, then a TOTAL row)."""
        return self._api.request("GET", f"/invoices/{period or 'current'}", params={
            "format": "csv", "workspace": workspace}).text

    def list(self, *, kind: PeriodKind | str = PeriodKind.month,
             workspace: str | None = None) -> list[InvoiceOut]:
        """Every period with usage, newest first."""
        return self._api.get_list(InvoiceOut, "/invoices", params={
            "kind": PeriodKind(kind).value, "workspace": workspace})

    def chargeback(self, period: str | None = None) -> ChargebackOut:
        """Each node pool's cost split over workspaces and idle capacity (operators)."""
        return self._api.get_model(ChargebackOut, "/chargeback", params={"period": period})

"""``client.budgets``: the workspace's monthly budget (integer micro-dollars)."""

from __future__ import annotations

from neocloud.models.billing import BudgetOut, BudgetSet
from neocloud.sdk._http import HttpApi, build


class Budgets:
    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def get(self, *, workspace: str | None = None) -> BudgetOut:
        """The budget and this month's spend. Raises ``NotFound`` without a budget."""
        return self._api.get_model(BudgetOut, "/budget", params={"workspace": workspace})

    def set(self, monthly_micros: int, *, thresholds: list[int] | None = None,
            hard_stop: bool = False, stop_running: bool = False,
            workspace: str | None = None) -> BudgetOut:
        """Set the monthly budget (workspace admins; operators for any ``workspace``)."""
        fields: dict[str, object] = {"monthly_micros": monthly_micros, "hard_stop": hard_stop,
                                     "stop_running": stop_running}
        if thresholds is not None:
            fields["thresholds"] = thresholds
        body = build(BudgetSet, **fields)
        path = "/budget" + (f"?workspace={workspace}" if workspace else "")
        return self._api.send_model("PUT", BudgetOut, path, body)

    def delete(self, *, workspace: str | None = None) -> None:
        self._api.request("DELETE", "/budget", params={"workspace": workspace})

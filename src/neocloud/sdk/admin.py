"""``client.admin``: operator tools."""

from __future__ import annotations

from neocloud.models.admin import CheckReport
from neocloud.sdk._http import HttpApi


class Admin:
    """Tools for operators (an admin token of an operator workspace)."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def check(self) -> CheckReport:
        """Run the invariant checker over the database and the backends; returns every
        broken invariant (``report.ok`` when none). Nothing is repaired.

        Raises:
            PermissionDenied: the token is not an operator admin token.
        """
        return self._api.get_model(CheckReport, "/admin/check")

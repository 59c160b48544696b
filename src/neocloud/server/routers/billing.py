"""The billing and metrics routers, registered together under ``/api/v1``."""

from __future__ import annotations

from neocloud.server.routers import budgets, invoices, metrics, prices

ROUTERS = (prices.router, invoices.router, budgets.router, metrics.router)

"""Budgets: a monthly spending limit per workspace, with alerts and an optional hard stop.

This month's spend is the sum of the amounts of the usage records billed in the current
UTC month (``bill_month``), the same records the month's invoice covers.

- :func:`check_budget` is pure: the budget, the spend and the thresholds already
  announced in, the verdict out (no I/O, no clock).
- :func:`require_within_budget` is the admission check: it raises
  :class:`~neocloud.errors.BudgetExceeded` (HTTP 402, code ``budget_exceeded``) when the
  workspace's budget has a hard stop and the spend reached 100 %. Creating work does not
  spend, so refusing is atomic with respect to concurrent creates; work that was admitted
  just before the spend crossed is held by the same check inside placement (under the
  placement lock) and, with ``stop_running``, stopped by :func:`enforce`.
- :func:`refusals` gives the workspaces whose gateway requests are refused; the route
  table carries it to the gateway.
- :func:`enforce` (run by the metering loop) records one event per threshold crossed per
  month and stops running work once when ``stop_running`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neocloud.errors import BudgetExceeded, NotFound
from neocloud.models.billing import MICROS_PER_USD, BudgetOut, BudgetSet, BudgetStatus
from neocloud.server.db.tables import Budget, UsageRecord, Workspace, utcnow
from neocloud.server.metering.periods import month_of
from neocloud.server.services import events
from neocloud.server.services.removal import delete_locked, lock_for_delete


@dataclass(frozen=True)
class BudgetCheck:
    """The verdict of :func:`check_budget`.

    Attributes:
        percent: spend as a percentage of the amount (``inf`` for a zero amount with spend).
        crossed: every threshold the spend has reached, ascending.
        new_alerts: of those, the ones not yet announced.
        exceeded: spend reached 100 % of the amount.
        refuse: new work and gateway requests must be refused (``exceeded`` and hard stop).
    """

    percent: float
    crossed: tuple[int, ...]
    new_alerts: tuple[int, ...]
    exceeded: bool
    refuse: bool


def check_budget(*, monthly_micros: int, thresholds: list[int], hard_stop: bool,
                 spent_micros: int, announced: frozenset[int] = frozenset()) -> BudgetCheck:
    """Judge ``spent_micros`` of this month against a budget of ``monthly_micros``.

    A threshold ``p`` (percent) is reached when ``spent × 100 >= amount × p`` (integer
    arithmetic, so exactly 100 % is exceeded). A zero amount is exceeded at once.
    """
    exceeded = spent_micros >= monthly_micros
    crossed = tuple(sorted(p for p in set(thresholds)
                           if spent_micros * 100 >= monthly_micros * p))
    if monthly_micros > 0:
        percent = 100.0 * spent_micros / monthly_micros
    else:
        percent = 100.0 if spent_micros == 0 else float("inf")
    return BudgetCheck(percent=percent, crossed=crossed,
                       new_alerts=tuple(p for p in crossed if p not in announced),
                       exceeded=exceeded, refuse=exceeded and hard_stop)


def spent_micros(s: Session, *, workspace_id: str, month: str) -> int:
    """µ$ billed to the workspace in ``month`` (``YYYY-MM``)."""
    return int(s.scalar(select(func.coalesce(func.sum(UsageRecord.amount_micros), 0)).where(
        UsageRecord.workspace_id == workspace_id, UsageRecord.bill_month == month)) or 0)


def _check(s: Session, b: Budget, month: str) -> tuple[int, BudgetCheck]:
    spent = spent_micros(s, workspace_id=b.workspace_id, month=month)
    announced = frozenset(b.alerted or []) if b.alerted_month == month else frozenset()
    return spent, check_budget(monthly_micros=b.monthly_micros, thresholds=list(b.thresholds),
                               hard_stop=b.hard_stop, spent_micros=spent, announced=announced)


def set_budget(s: Session, *, workspace_id: str, spec: BudgetSet) -> Budget:
    """Create or replace the workspace's budget (alerts already sent this month stay)."""
    b = s.get(Budget, workspace_id)
    if b is None:
        b = Budget(workspace_id=workspace_id, alerted=[])
        s.add(b)
    b.monthly_micros = spec.monthly_micros
    b.thresholds = sorted(set(spec.thresholds))
    b.hard_stop = spec.hard_stop
    b.stop_running = spec.stop_running
    b.updated_at = utcnow()
    ws = s.get(Workspace, workspace_id)
    events.record(s, workspace_id=workspace_id, kind="budget", name=ws.name if ws else "-",
                  reason="BudgetSet",
                  message=f"monthly budget {spec.monthly_micros / MICROS_PER_USD:.2f} USD, "
                          f"alerts at {b.thresholds} %"
                          + (", hard stop" if spec.hard_stop else "")
                          + (", stops running work" if spec.stop_running else ""))
    s.flush()
    return b


def delete_budget(s: Session, *, workspace_id: str) -> None:
    """Remove the budget. Raises :class:`NotFound` when there is none (or another call
    removed it first: of concurrent removals exactly one succeeds, :mod:`.removal`)."""
    missing = "this workspace has no budget"
    b = lock_for_delete(s, Budget, s.get(Budget, workspace_id), missing=missing,
                        param="workspace")
    delete_locked(s, b, missing=missing, param="workspace")


def budget_out(s: Session, *, workspace_id: str, now: datetime | None = None) -> BudgetOut:
    """The budget and this month's standing. Raises :class:`NotFound` without a budget."""
    b = s.get(Budget, workspace_id)
    if b is None:
        raise NotFound("this workspace has no budget (set one with 'neocloud budget set')",
                       param="workspace")
    month = month_of(now or datetime.now(UTC))
    spent, c = _check(s, b, month)
    ws = s.get(Workspace, workspace_id)
    status = (BudgetStatus.exceeded if c.exceeded else
              BudgetStatus.alerting if c.crossed else BudgetStatus.ok)
    return BudgetOut(workspace=ws.name if ws else workspace_id,
                     monthly_micros=b.monthly_micros, thresholds=list(b.thresholds),
                     hard_stop=b.hard_stop, stop_running=b.stop_running, month=month,
                     spent_micros=spent, percent=min(c.percent, 1e9), status=status,
                     crossed=list(c.crossed), refusing=c.refuse)


def require_within_budget(s: Session, *, workspace_id: str,
                          now: datetime | None = None) -> None:
    """Admission check for new work of the workspace.

    Raises:
        BudgetExceeded: the budget has a hard stop and this month's spend reached it (402).
    """
    b = s.get(Budget, workspace_id)
    if b is None or not b.hard_stop:
        return
    month = month_of(now or datetime.now(UTC))
    spent, c = _check(s, b, month)
    if c.refuse:
        raise BudgetExceeded(_refusal(b, spent), param="budget")


def _refusal(b: Budget, spent: int) -> str:
    return (f"the workspace's monthly budget of {usd(b.monthly_micros)} USD is spent "
            f"({usd(spent)} USD this month) and has a hard stop; "
            "raise it with 'neocloud budget set'")


def usd(micros: int) -> str:
    """Micro-dollars as a US-dollar amount for a person: cents when whole, else every
    micro-dollar digit that is not a trailing zero (``10.00``, ``0.000682``)."""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{frac:06d}"
    shown = digits[:2] if digits[2:] == "0000" else digits.rstrip("0")
    return f"{'-' if micros < 0 else ''}{whole}.{shown}"


def refusals(s: Session, now: datetime | None = None) -> dict[str, str]:
    """Workspace id -> refusal message, for every workspace whose hard stop is reached."""
    month = month_of(now or datetime.now(UTC))
    out: dict[str, str] = {}
    for b in s.scalars(select(Budget).where(Budget.hard_stop.is_(True))):
        spent, c = _check(s, b, month)
        if c.refuse:
            out[b.workspace_id] = _refusal(b, spent)
    return out


def enforce(s: Session, now: datetime, stop_work: Callable[[Session, str, str], int]) -> int:
    """Announce newly crossed thresholds (one warning event each per month) and, for a
    reached hard stop with ``stop_running``, call ``stop_work(s, workspace_id, reason)``
    once per month. Returns the events recorded."""
    month = month_of(now)
    n = 0
    for b in s.scalars(select(Budget)):
        spent, c = _check(s, b, month)
        ws = s.get(Workspace, b.workspace_id)
        name = ws.name if ws else b.workspace_id
        if b.alerted_month != month:
            b.alerted_month, b.alerted = month, []
        for p in c.new_alerts:
            events.record(s, workspace_id=b.workspace_id, kind="budget", name=name,
                          reason="BudgetThreshold", warning=True,
                          message=f"{p} % of the monthly budget reached: "
                                  f"{spent / MICROS_PER_USD:.2f} of "
                                  f"{b.monthly_micros / MICROS_PER_USD:.2f} USD in {month}")
            n += 1
        if c.new_alerts:
            b.alerted = sorted({*b.alerted, *c.new_alerts})
        if c.refuse and b.stop_running and b.stopped_month != month:
            stopped = stop_work(s, b.workspace_id, f"budget of {month} exceeded")
            b.stopped_month = month
            events.record(s, workspace_id=b.workspace_id, kind="budget", name=name,
                          reason="BudgetStop", warning=True,
                          message=f"monthly budget exceeded: stopped {stopped} running "
                                  "workloads")
            n += 1
    return n

"""What every part of the deployment reconciler shares: its state, the constants, the
backend and metering of a replica, and how a crash is recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from neocloud.gateway.stats import DeploymentStats
from neocloud.models.deployments import ReasonCode, ReplicaStatus
from neocloud.server.autoscaling.scrape import EngineScraper
from neocloud.server.backends.base import Backend
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.core import (
    NodeVerdict,
    backend_of,
    backoff_s,
    meter,
    node_lost,
    now,
    release_ended,
    set_status,
)
from neocloud.server.services import secrets as secret_svc
from neocloud.server.settings import Settings

if TYPE_CHECKING:
    from neocloud.server.reconcilers.deployments.autoscale import Scaler

LIVE = ("pending", "starting", "ready", "failed")
"""Replica states that count towards a deployment's replicas."""

CRASH_LOOP_RESTARTS = 3
"""A deployment whose every replica crashed this many times in a row, with none ready, is
``failed`` (it keeps being restarted with back-off, and turns ready when one succeeds)."""

DRAIN_MARGIN_S = 5.0
"""Seconds the control plane waits beyond a deployment's drain timeout before SIGKILL: the
serving runtime is given the drain timeout itself (``NEOCLOUD_GRACE_PERIOD_S``), so it
ends cut streams with its own final error event before the kill."""

STOP_WAIT_S = 0.2
"""Seconds a pass waits for the stops it started before it goes on (a stop that takes
longer finishes in the background and is seen by a later pass)."""


@dataclass
class Known:
    """Rows a step read and wrote (detached, as of its commit), handed to the next step
    of the same pass so that it need not read them again; every write of that step
    still re-reads its rows under their locks."""

    reps: list[Replica] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    deps: dict[str, Deployment] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.reps]


class ReconcilerBase:
    """The state of the deployment reconciler and the helpers its parts share.

    Args:
        db: the database.
        backends: backend per node ``backend`` name (``local``, ``fake``).
        settings: control-plane settings (timeouts, back-off, metering period).
        on_change: called with the ids of the deployments a pass (or a step) touched or
            saw change, whose routes may have changed (``DbRouteTable.refresh``).
        box: decrypts the secrets a deployment references.
    """

    def __init__(
        self,
        db: Database,
        backends: dict[str, Backend],
        settings: Settings,
        *,
        on_change: Callable[[Collection[str]], None] | None = None,
        box: SecretBox | None = None,
    ):
        self.db = db
        self.backends = backends
        self.settings = settings
        self.on_change = on_change
        self.box = box
        """Decrypts the secrets a deployment references (``None``: none can be injected)."""
        self._health_failures: dict[str, int] = {}
        self.stats: Callable[[str], DeploymentStats | None] | None = None
        """The gateway's live figures of a deployment (autoscaling, scale-in order);
        ``None``: no gateway in this process (every deployment looks idle)."""
        self.clock: Callable[[], float] = time.monotonic
        """The clock autoscaling samples are taken on (seconds)."""
        self._scalers: dict[str, Scaler] = {}
        self.scraper = EngineScraper()
        """Reads the engine signals of ready replicas (``/metrics``) for deployments that
        scale on one (``server.autoscaling.scrape``)."""
        self._stops: dict[str, Future[None]] = {}
        self._verdict = NodeVerdict()
        self._stops_lock = threading.Lock()

    def _meter_due(self, r: Replica) -> bool:
        """Whether replica ``r`` has a usage record due (``usage_period_s`` of running
        time not yet recorded; the rule of ``meter_running``)."""
        start = r.metered_until or r.started_at
        return (r.node_id is not None and start is not None
                and (now() - start).total_seconds() >= self.settings.usage_period_s)

    def _backend(self, s: Session, node_id: str | None) -> tuple[Backend, Node] | None:
        return backend_of(self.backends, s, node_id)

    def _url(self, node: Node, r: Replica, path: str) -> str:
        return f"http://{node.address}:{r.port}{path}"

    def _ended(self, be: Backend, rid: str, handle: dict[str, Any],
               code: int | None) -> bool:
        """Whether the process of replica ``rid`` that reads as ended is to be recorded as
        crashed now. Not while its node is gone from the backend or may be about to be
        (:class:`~neocloud.server.reconcilers.core.NodeVerdict`): the node's loss moves
        the replica instead. A crashed process is stopped through its backend at once,
        which frees what the backend still holds for it (Ray's GPU accounting)."""
        if node_lost(be, handle) or self._verdict.pending(be, rid, code):
            return False
        release_ended(be, handle, grace_s=self.settings.replica_stop_grace_s)
        return True

    def _exit_message(self, be: Backend, handle: dict[str, Any], code: int | None) -> str:
        last = be.logs(handle, tail=5, this_run=True).strip()
        msg = "process exited" + (f" with code {code}" if code is not None else "")
        return f"{msg}; last log lines:\n{last}" if last else msg

    def _crashed(self, s: Session, r: Replica, message: str,
                 code: ReasonCode = ReasonCode.CRASH_LOOP) -> None:
        dep = s.get(Deployment, r.deployment_id)
        if dep is not None and dep.secrets:
            message = secret_svc.redact(message, secret_svc.values_of(
                s, workspace_id=dep.workspace_id, refs=dict(dep.secrets), box=self.box))
        r.restarts += 1
        delay = backoff_s(r.restarts, base=self.settings.restart_backoff_base_s,
                          cap=self.settings.restart_backoff_max_s)
        r.message = message
        r.next_restart_at = now() + timedelta(seconds=delay)
        r.ready_at = None
        if dep is not None:
            lines = [ln for ln in message.splitlines() if ln.strip()]
            detail = lines[0] + (f": {lines[-1].strip()}" if len(lines) > 1 else "")
            dep.pending_reason = f"replica {r.id[:8]} failed: {detail}"
            dep.pending_code = code.value
        set_status(s, r, ReplicaStatus.failed, reason="Crashed", warning=True,
                   message=f"replica {r.id[:8]} {message}; restart {r.restarts} "
                           f"in {delay:.0f} s")

    def _meter(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is not None:
                self._meter_row(s, r, final=False)

    def _meter_row(self, s: Session, r: Replica, *, final: bool) -> None:
        dep = s.get(Deployment, r.deployment_id)
        meter(s, r, period_s=self.settings.usage_period_s, final=final, kind="replica",
              name=dep.name if dep else r.id, shape_name=dep.shape if dep else None)


def lock_replicas(s: Session, ids: Sequence[str]) -> dict[str, Replica]:
    """The newest rows of replicas ``ids`` (id -> row; those gone are missing), locked
    until the transaction ends: :func:`~neocloud.server.services.lifecycle.lock_row` for
    many rows in one statement. PostgreSQL: ``SELECT ... FOR UPDATE`` in id order (two
    transactions locking overlapping sets never deadlock); SQLite: a no-op ``UPDATE`` of
    the rows first takes the write lock, then they are read."""
    if not ids:
        return {}
    q = select(Replica).where(Replica.id.in_(list(ids)))
    if s.get_bind().dialect.name == "postgresql":
        q = q.order_by(Replica.id).with_for_update()
    else:
        table: Any = Replica.__table__
        s.execute(update(table).where(table.c.id.in_(list(ids))).values(id=table.c.id))
    rows = s.scalars(q.execution_options(populate_existing=True)).all()
    return {r.id: r for r in rows}


M = TypeVar("M")


def rows_in(s: Session, model: type[M], column: Any, keys: Iterable[Any]) -> list[M]:
    """The rows of ``model`` whose ``column`` is one of ``keys`` (no query for none)."""
    wanted = set(keys)
    if not wanted:
        return []
    return list(s.scalars(select(model).where(column.in_(wanted))))

"""What the control-plane app holds while it runs: one typed object, built by
:func:`neocloud.server.app.create_app` and reached by routes through
:mod:`neocloud.server.deps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from neocloud.server.backends.base import Backend
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.settings import Settings
from neocloud.server.storage import VolumeStore

if TYPE_CHECKING:
    from neocloud.gateway.app import Gateway
    from neocloud.server.gateway_host import DbRouteTable, UsageBuffer
    from neocloud.server.reconcilers.deployments import DeploymentReconciler, ReconcilerThread
    from neocloud.server.reconcilers.jobs import JobReconciler
    from neocloud.server.reconcilers.nodes import NodeReconciler
    from neocloud.server.reconcilers.pods import PodReconciler


@dataclass
class Reconcilers:
    """The reconcilers of each workload kind and the thread that runs them."""

    deployments: DeploymentReconciler
    jobs: JobReconciler
    pods: PodReconciler
    thread: ReconcilerThread
    nodes: NodeReconciler | None = None
    """Node health and drains (runs first: the others act on the node statuses)."""
    metering: ReconcilerThread | None = None
    """The thread of the usage flush and the metering loop (apart, so that placement
    never waits for them)."""

    def run_once(self) -> None:
        """One pass of every reconciler, in this thread (tests drive them this way)."""
        if self.nodes is not None:
            self.nodes.run_once()
        self.deployments.run_once()
        self.jobs.run_once()
        self.pods.run_once()


@dataclass
class AppState:
    """The running control plane's parts.

    Attributes:
        settings: the process's settings.
        db: the database (engine and session factory).
        backends: backend per node kind (``local``, ``fake``, ...).
        secret_box: encrypts and decrypts secret values at rest.
        volume_store: where volume files live.
        routes: the gateway's route table, rebuilt from the database.
        usage: the gateway's usage buffer, flushed to the database by the reconciler thread.
        gateway: the gateway ASGI app mounted under ``/v1`` and ``/endpoints``.
        reconcilers: the reconcilers and their thread.
    """

    settings: Settings
    db: Database
    backends: dict[str, Backend]
    secret_box: SecretBox
    volume_store: VolumeStore
    routes: DbRouteTable
    usage: UsageBuffer
    gateway: Gateway
    reconcilers: Reconcilers

    def wake_reconcilers(self) -> None:
        """Ask the reconcilers for a pass now (they act on what is committed)."""
        self.reconcilers.thread.wake()

    def commit_and_wake(self, s: Session) -> None:
        """Commit what a route wrote, then wake the reconcilers to act on it (the state is
        in the database before anything acts on it). Routes that use
        :data:`neocloud.server.deps.SessionDep` need not call it: that session commits
        before the response is sent and wakes the reconcilers when it wrote anything."""
        s.commit()
        self.wake_reconcilers()

"""The deployment reconciler: makes running replicas match each deployment row.

Each pass, per deployment: fetch and lock its row (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several control-plane copies share the work), decide, write the new
replica states, commit, and only then act on the backend (start or stop a process), then
write what the backend answered. A restart at any point finds every replica in the
database with the handle of its process: running ones are adopted, never started twice.

Replica life: ``pending`` (no node; the scheduler's reason is kept) → ``starting``
(allocation written, process started) → ``ready`` (``/ready`` answered 200) → ``stopping``
→ ``stopped``. A process that exits becomes ``failed`` and is started again on the same
allocation after an exponential back-off (``base × 2^restarts``, capped).

Rolling update and scale-in: :mod:`.scaling`; graceful drain: :mod:`.stopping`;
autoscaling: :mod:`.autoscale`.

Placement, status changes and process starts go through the reconciler core
(:mod:`neocloud.server.reconcilers.core`), which keeps the invariants written there: a
replica is placed only while its deployment wants it (not ``deleting``, same
generation), and a DELETE that lands while a replica starts wins.

The parts, one module each: ``reconciler`` (the pass), ``scaling`` (rows to create and
to stop), ``placing`` (pending replicas placed), ``starting`` (processes started),
``readiness`` (ready, crashed, restarted), ``stopping`` (drain, delete, preemption),
``node_loss`` (replicas of lost nodes moved), ``autoscale``, ``settled`` (health checks
only), ``changes`` (what changed first) and ``status``; ``base`` holds what they share.

Woken by an API write, a pass runs first, between its parts, the deployments that
changed since it last looked (:mod:`.changes`: what a request asked for, not the pass's
own status writes), then the rest: **every change is acted on within one pass of its
commit**, and a new deployment on a settled fleet does not wait for the health checks of
every settled one.
"""

from __future__ import annotations

from neocloud.server.reconcilers.core import ReconcilerThread, backoff_s, free_port, now
from neocloud.server.reconcilers.deployments.base import (
    CRASH_LOOP_RESTARTS,
    DRAIN_MARGIN_S,
    LIVE,
    STOP_WAIT_S,
)
from neocloud.server.reconcilers.deployments.reconciler import DeploymentReconciler
from neocloud.server.reconcilers.deployments.starting import kv_cache_gib
from neocloud.server.reconcilers.deployments.stopping import preempt_replica
from neocloud.server.services import placement

__all__ = ["CRASH_LOOP_RESTARTS", "DRAIN_MARGIN_S", "LIVE", "STOP_WAIT_S",
           "DeploymentReconciler", "ReconcilerThread", "backoff_s", "free_port",
           "kv_cache_gib", "now", "preempt_replica"]

placement.PREEMPT_HANDLERS["replica"] = preempt_replica

"""Starting a replica's process: its port on its node, its command line and environment,
and the handle recorded under its row lock (a stop that lands meanwhile wins)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import NeocloudError
from neocloud.models.deployments import DeploymentStatus, Engine, ReplicaStatus
from neocloud.server.backends.base import Backend, WorkloadSpec, backend_for
from neocloud.server.db.tables import Allocation, Deployment, Node, Replica, Shape
from neocloud.server.reconcilers.core import (
    free_port_on,
    lock_row,
    set_status,
    start_process,
    start_processes,
)
from neocloud.server.reconcilers.deployments.base import (
    Known,
    ReconcilerBase,
    lock_replicas,
    rows_in,
)
from neocloud.server.services import secrets as secret_svc


def kv_cache_gib(memory_mib: int | None) -> float:
    """The KV cache of an engine ``vllm`` CPU replica, GiB: half the shape's memory
    (``memory_mib`` MiB), rounded down to a whole GiB, at least 1 (the rest holds the
    weights, activations and the server; vLLM's ``VLLM_CPU_KVCACHE_SPACE``)."""
    if not memory_mib:
        return 1.0
    return float(max(1, memory_mib // 2 // 1024))


class Starting(ReconcilerBase):
    """Starts the process of a replica written ``starting``."""

    def command_for(self, dep: Deployment, port: int, *, gpus: int = 0,
                    memory_mib: int | None = None, host: str = "127.0.0.1") -> list[str]:
        """The command line of a replica of ``dep`` listening on ``host:port`` (its node's
        address: the gateway and the readiness probe reach it there).

        Engine ``builtin``: ``python -m neocloud.serving SERVICE``. Engine ``vllm``: the
        launcher ``python -m neocloud.serving.engines.vllm`` (it finds the engine
        environment, resolves the model, default the built-in chat model's standard
        checkpoint), on device ``cuda`` when the replica was given ``gpus`` > 0, else
        ``cpu`` with a KV cache of :func:`kv_cache_gib` of the shape's ``memory_mib``.
        """
        python = self.settings.python or sys.executable
        if dep.engine == Engine.vllm:
            cmd = [python, "-m", "neocloud.serving.engines.vllm", "--host", host,
                   "--port", str(port), "--name", dep.name,
                   "--device", "cuda" if gpus > 0 else "cpu",
                   "--kv-cache-gib", f"{kv_cache_gib(memory_mib):g}"]
            if dep.model:
                cmd += ["--model", dep.model]
            return cmd
        service = dep.service or ""
        if service.split(":", 1)[0].endswith(".py"):
            path, cls = service.rsplit(":", 1)
            service = f"{Path(path).expanduser().resolve()}:{cls}"
        cmd = [python, "-m", "neocloud.serving", service,
               "--host", host, "--port", str(port), "--name", dep.name]
        if dep.model:
            cmd += ["--model", dep.model]
        return cmd

    def ready_timeout_s(self, engine: str) -> float:
        """Seconds a starting replica of ``engine`` gets to answer ``/ready`` (settings
        ``replica_ready_timeout_s``, ``vllm_ready_timeout_s``)."""
        if engine == Engine.vllm:
            return self.settings.vllm_ready_timeout_s
        return self.settings.replica_ready_timeout_s

    def _port(self, rid: str) -> bool:
        """Give a replica about to start its port: one free on its node, asked of its
        backend (Ray asks that node), outside any transaction. Returns whether it has one;
        a node that cannot be asked fails the start (restarted with back-off)."""
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None or r.status != ReplicaStatus.starting:
                return False
            if r.port:
                return True
            found = self._backend(s, r.node_id)
        if found is None:
            return True  # _start_process fails the replica: its node or backend is gone
        try:
            port = free_port_on(*found)
        except OSError as e:
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == ReplicaStatus.starting:
                    self._crashed(s, r, f"could not start: no free port on node "
                                        f"{found[1].name}: {e}")
            return False
        with self.db.session() as s:
            r = lock_row(s, Replica, rid)
            if r is None or r.status != ReplicaStatus.starting or r.handle:
                return False
            r.port = r.port or port
        return True

    def _start_process(self, rid: str) -> None:
        """Start the process of a replica already written as ``starting``, on a port free
        on its node (:meth:`_port`), listening on the node's address."""
        if not self._port(rid):
            return
        with self.db.session() as s:
            r = s.get(Replica, rid)
            dep = s.get(Deployment, r.deployment_id) if r else None
            if r is None or dep is None or r.status != "starting":
                return
            found = self._backend(s, r.node_id)
            if found is None:
                r.message = "node or backend is gone"
                set_status(s, r, ReplicaStatus.failed, reason="Crashed", warning=True,
                           message=f"replica {r.id[:8]}: node or backend is gone")
                return
            be, node = found
            try:
                secret_env = self._secret_env(s, dep)
            except NeocloudError as e:
                self._crashed(s, r, f"could not start: {e.message}")
                return
            alloc = s.scalars(select(Allocation).where(Allocation.owner_id == r.id)).first()
            spec = self._spec(r, dep, node, s.get(Shape, dep.shape), alloc, secret_env)

        def record(s: Session, handle: dict[str, Any]) -> bool:
            r = lock_row(s, Replica, rid)
            if r is None:
                return False
            r.handle, r.pid = handle, handle.get("pid")
            dep = s.get(Deployment, r.deployment_id)
            return (r.status == ReplicaStatus.starting and dep is not None
                    and dep.status != DeploymentStatus.deleting)

        try:
            start_process(self.db, be, spec, record=record,
                          grace_s=self.settings.replica_stop_grace_s)
        except (OSError, ValueError) as e:
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == ReplicaStatus.starting:
                    self._crashed(s, r, f"could not start: {e}")

    def _secret_env(self, s: Session, dep: Deployment) -> dict[str, str]:
        """The values of ``dep``'s secrets by variable name (empty without secrets or a
        key box).

        Raises:
            NeocloudError: a secret cannot be read (missing, or its value undecryptable).
        """
        if not dep.secrets or self.box is None:
            return {}
        return secret_svc.resolve(s, workspace_id=dep.workspace_id,
                                  refs=dict(dep.secrets), box=self.box)

    def _spec(self, r: Replica, dep: Deployment, node: Node, shape: Shape | None,
              alloc: Allocation | None, secret_env: dict[str, str]) -> WorkloadSpec:
        """The process spec of replica ``r`` of ``dep`` on ``node`` (its port written),
        with its shape, allocation and resolved secrets."""
        return WorkloadSpec(
            workload_id=r.id,
            command=self.command_for(dep, r.port or 0, gpus=len(r.gpu_indices),
                                     memory_mib=shape.memory_mib if shape else None,
                                     host=node.address),
            env={**{k: str(v) for k, v in dep.env.items()}, **secret_env,
                 "NEOCLOUD_SERVED_MODEL_NAME": dep.name,
                 # the runtime drains in-flight requests this long on SIGTERM
                 "NEOCLOUD_GRACE_PERIOD_S": f"{dep.drain_timeout_s:g}"},
            gpu_indices=tuple(r.gpu_indices),
            log_path=self.settings.logs_dir / "replicas" / f"{r.id}.log",
            port=r.port,
            node_address=node.address,
            node_name=node.name,
            gpu_milli=alloc.gpu_milli if alloc is not None and alloc.gpu_milli else 1000,
            secret_env=frozenset(secret_env),
        )

    def _start_many(self, rids: Sequence[str], known: Known | None = None) -> Known:
        """Start the processes of replicas ``rids`` written ``starting``: what
        :meth:`_start_process` does for one, in three transactions for all (two when
        ``known`` has the rows, from the placement); returns the replicas whose process
        was started and recorded, with their nodes and deployments.

        Read the replicas and their nodes; pick each one's port on its node outside any
        transaction (:func:`~neocloud.server.reconcilers.core.free_port_on`); in one
        transaction, under the rows' locks, write the ports of those still ``starting``
        with no handle and build their process specs; start (or adopt) the processes; in
        one transaction record every handle under the rows' locks
        (:func:`~neocloud.server.reconcilers.core.start_processes`), a process whose
        replica is no longer wanted (a stop or delete landed meanwhile) being stopped at
        once. A replica whose node or backend is gone goes through
        :meth:`_start_process`; a port that cannot be had, secrets that cannot be read
        or a start that fails are written as a crash, as there.
        """
        if not rids:
            return Known()
        if known is not None and set(rids) <= set(known.ids):
            reps = [r for r in known.reps if r.id in set(rids)]
            nodes = known.nodes
        else:
            with self.db.session() as s:
                reps = [r for r in s.scalars(select(Replica).where(
                    Replica.id.in_(list(rids)))) if r.status == ReplicaStatus.starting
                    and not r.handle]
                nodes = {n.id: n for n in rows_in(s, Node, Node.id,
                                                  (r.node_id for r in reps if r.node_id))}
        alone: list[str] = []
        ports: dict[str, int] = {}
        no_port: dict[str, str] = {}
        for r in reps:
            found = backend_for(self.backends, nodes.get(r.node_id or ""), lambda n: n.backend)
            if found is None:
                alone.append(r.id)
            elif not r.port:
                try:
                    ports[r.id] = free_port_on(*found)
                except OSError as e:
                    no_port[r.id] = f"could not start: no free port on node {found[1].name}: {e}"
        starts: list[tuple[Backend, WorkloadSpec]] = []
        with self.db.session() as s:
            rows = lock_replicas(s, [r.id for r in reps if r.id not in alone])
            deps = {d.id: d for d in rows_in(s, Deployment, Deployment.id,
                                             (r.deployment_id for r in rows.values()))}
            shapes = {sh.name: sh for sh in rows_in(s, Shape, Shape.name,
                                                    (d.shape for d in deps.values()))}
            allocs = {a.owner_id: a for a in rows_in(s, Allocation, Allocation.owner_id,
                                                     rows)}
            for r in (rows[rid] for rid in rids if rid in rows):
                dep = deps.get(r.deployment_id)
                node = nodes.get(r.node_id or "")
                if r.status != ReplicaStatus.starting or r.handle or dep is None \
                        or node is None:
                    continue
                if r.id in no_port:
                    self._crashed(s, r, no_port[r.id])
                    continue
                r.port = r.port or ports.get(r.id)
                try:
                    secret_env = self._secret_env(s, dep)
                except NeocloudError as e:
                    self._crashed(s, r, f"could not start: {e.message}")
                    continue
                spec = self._spec(r, dep, node, shapes.get(dep.shape), allocs.get(r.id),
                                  secret_env)
                starts.append((self.backends[node.backend], spec))

        recorded = Known(nodes=nodes, deps=deps)

        def record(s: Session, handles: dict[str, dict[str, Any]]) -> set[str]:
            rows = lock_replicas(s, list(handles))
            deps = {d.id: d for d in rows_in(s, Deployment, Deployment.id,
                                             (r.deployment_id for r in rows.values()))}
            wanted: set[str] = set()
            for rid, handle in handles.items():
                row = rows.get(rid)
                if row is None:
                    continue
                row.handle, row.pid = handle, handle.get("pid")
                dep = deps.get(row.deployment_id)
                if (row.status == ReplicaStatus.starting and dep is not None
                        and dep.status != DeploymentStatus.deleting):
                    wanted.add(rid)
                    recorded.reps.append(row)
            return wanted

        handles, errors = start_processes(self.db, starts, record=record,
                                          grace_s=self.settings.replica_stop_grace_s)
        for rid, err in errors.items():
            with self.db.session() as s:
                failed = lock_row(s, Replica, rid)
                if failed is not None and failed.status == ReplicaStatus.starting:
                    self._crashed(s, failed, f"could not start: {err}")
        for rid in alone:
            self._start_process(rid)
        return recorded

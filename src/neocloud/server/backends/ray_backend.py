"""The ``ray`` backend: workload processes on the nodes of a Ray cluster.

neocloud's scheduler decides where work runs; Ray runs it there. For each start the
backend creates a detached actor (:class:`~neocloud.server.backends.ray_supervisor.
WorkloadSupervisor`) on the chosen node, which starts the workload as its child process:

* **Placement**: a label selector on Ray's default ``ray.io/node-id`` label, which Ray 2.60
  recommends in place of a hard ``NodeAffinitySchedulingStrategy`` (Ray docs, "Scheduling":
  labels). The node id is found from the node's name (the ``neocloud.io/node`` label that
  ``neocloud node join`` gives its Ray node) or, without one, from its address.
* **GPUs**: the actor asks Ray for ``len(gpu_indices) * gpu_milli / 1000`` GPUs, so Ray
  accounts what neocloud allocated; the child gets ``CUDA_VISIBLE_DEVICES`` = the allocated
  indices and ``NEOCLOUD_GPU_COUNT`` = their number (:func:`~.base.gpu_env`). CPUs and
  memory are neocloud's to account: the actor asks Ray for none, so Ray never holds back
  work neocloud placed.
* **Identity**: an actor per start, named ``<workload id>.<random>`` in the ``neocloud``
  namespace; the handle holds that name, the Ray node id and the child's pid and start
  time. Two nodes that both number their GPUs from 0 never mix up their processes.
* **Adoption**: :meth:`RayBackend.find` lists the named actors of a workload, so a start
  whose handle was never recorded is found (and a new start first removes the ended runs
  of the same workload, whose actors still hold Ray resources).
* **Logs**: the child writes to a file on its node through :mod:`neocloud.logrun` (secret
  values masked, as on the local backend); one pump thread of the backend copies
  new bytes into the handle's ``log_path`` on the control plane every
  ``pump_interval_s`` seconds (and :meth:`logs`, :meth:`inspect` and :meth:`stop` copy what
  is left first), so the logs stay readable after the node is gone.
* **Stop**: the actor sends SIGTERM to the child's process group, waits ``grace_s``, then
  SIGKILL; the backend copies the last output, then kills the actor, which frees its Ray
  resources. The group dies with its actor (:mod:`neocloud.procguard`): nothing of a
  workload outlives its supervisor, e.g. when a node's raylet dies. A workload that
  ended keeps its actor (and GPUs in Ray's accounting) until :meth:`stop`: callers stop
  every workload they are done with (idempotent).

Needs the ``ray`` extra (``pip install neocloud[ray]``); importing this module without it
raises ``ImportError``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
    RayTaskError,
)

from neocloud.logrun import MASK_ENV
from neocloud.server.backends.base import (
    WORKLOAD_ENV,
    WorkloadSpec,
    WorkloadState,
    gpu_env,
    handle_log,
    masked_env_names,
)
from neocloud.server.backends.ray_supervisor import WorkloadSupervisor
from neocloud.server.datafolder import make_private_dirs, open_private

log = logging.getLogger(__name__)

#: Ray namespace of the supervisor actors.
NAMESPACE = "neocloud"
#: Ray node label that carries the neocloud node name (set by ``neocloud node join``).
NODE_LABEL = "neocloud.io/node"
#: Ray's default label with the node id (Ray docs, "Use labels to control scheduling").
RAY_NODE_ID_LABEL = "ray.io/node-id"
_READ_CHUNK = 1 << 20
#: Seconds the list of alive Ray nodes is reused (one GCS call per pass, not per workload).
NODES_TTL_S = 1.0

_Supervisor: Any = ray.remote(WorkloadSupervisor)


def _bind_free_port(host: str) -> int:
    """Runs on a node: a TCP port free on ``host`` there (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_free_port: Any = ray.remote(_bind_free_port)


class RayBackend:
    """Start, inspect, stop and read the logs of workload processes on a Ray cluster.

    Args:
        address: the Ray cluster (``host:port`` of its GCS, or ``auto``); ``None`` uses the
            Ray connection this process already has.
        node_ip: this process's address in the cluster when the machine has several (Ray's
            ``_node_ip_address``).
        start_timeout_s: seconds a start waits for Ray to place and start the actor before
            it fails with ``OSError``.
        call_timeout_s: seconds one call to a supervisor may take.
        poll_timeout_s: seconds :meth:`inspect` waits for a supervisor's answer (a poll
            is trivial; one that does not answer reads as running, so a short wait keeps a
            reconcile pass from stalling on a node whose raylet just died).
        pump_interval_s: seconds between two copies of new log output.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, node_ip: str | None = None,
                 start_timeout_s: float = 60.0, call_timeout_s: float = 15.0,
                 poll_timeout_s: float = 2.0,
                 pump_interval_s: float = 0.5):
        self.address = address
        self.node_ip = node_ip
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.poll_timeout_s = poll_timeout_s
        self.pump_interval_s = pump_interval_s
        self._lock = threading.Lock()
        self._follow: dict[str, _Mirror] = {}
        self._exit: dict[str, int | None] = {}
        self._pump: threading.Thread | None = None
        self._closed = threading.Event()
        self._http = httpx.Client(timeout=2.0)
        self._nodes: set[str] = set()
        self._nodes_at = -NODES_TTL_S

    # -- connection and nodes -------------------------------------------------------------

    def connect(self) -> None:
        """Join the Ray cluster as a driver, once."""
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {}
        if self.node_ip:
            kwargs["_node_ip_address"] = self.node_ip
        ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False,
                 configure_logging=False, logging_level=logging.WARNING, **kwargs)

    def ray_node_id(self, *, node_name: str | None, address: str) -> str:
        """The id of the alive Ray node of ``node_name`` (by its ``neocloud.io/node``
        label) or, without a name, of the one alive node at ``address``.

        Raises:
            OSError: no such alive node, or several at that address.
        """
        self.connect()
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if node_name:
            hits = [n for n in alive if (n.get("Labels") or {}).get(NODE_LABEL) == node_name]
            what = f"labelled {NODE_LABEL}={node_name}"
            if not hits:
                hits = [n for n in alive if n["NodeManagerAddress"] == address
                        and NODE_LABEL not in (n.get("Labels") or {})]
                what += f" (or unlabelled at {address})"
        else:
            hits = [n for n in alive if n["NodeManagerAddress"] == address]
            what = f"at {address}"
        if len(hits) != 1:
            raise OSError(f"{'no' if not hits else 'more than one'} alive Ray node {what}")
        return str(hits[0]["NodeID"])

    def _alive_nodes(self) -> set[str]:
        """Ids of the nodes Ray holds alive, asked at most once per ``NODES_TTL_S``."""
        now = time.monotonic()
        if now - self._nodes_at > NODES_TTL_S:
            self.connect()
            self._nodes = {str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")}
            self._nodes_at = now
        return self._nodes

    def alive_node_ids(self) -> frozenset[str]:
        """Ids of the Ray nodes alive now (Ray marks a node dead about 14 s after its
        raylet stops answering); the node-health reconciler compares them with the
        ``ray.io/node-id`` label of each node. Asked of the GCS at most once per
        ``NODES_TTL_S`` seconds.

        Raises:
            ray.exceptions.RayError, ConnectionError: the cluster cannot be reached.
        """
        return frozenset(self._alive_nodes())

    def free_port(self, *, node_name: str | None, address: str) -> int:
        """A TCP port free right now at ``address`` on the Ray node of ``node_name`` (a
        zero-resource task binds port 0 there), e.g. ``MASTER_PORT`` of a gang.

        Raises:
            OSError: no such alive node, or it did not answer within ``call_timeout_s``.
        """
        node_id = self.ray_node_id(node_name=node_name, address=address)
        ref = _free_port.options(num_cpus=0, label_selector={RAY_NODE_ID_LABEL: node_id},
                                 max_retries=0).remote(address)
        try:
            return int(ray.get(ref, timeout=self.start_timeout_s))
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            raise OSError(f"node {node_id[:12]} gave no free port within "
                          f"{self.start_timeout_s:g} s") from None
        except RayError as e:
            raise OSError(f"node {node_id[:12]} gave no free port: {e}") from None

    # -- the Backend interface --------------------------------------------------------------

    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        """Create the supervisor on the chosen node and start the process there.

        Raises:
            OSError: no alive Ray node for the spec, Ray could not place the actor within
                ``start_timeout_s``, or the command or working folder is missing there.
        """
        self.connect()
        node_id = self.ray_node_id(node_name=spec.node_name, address=spec.node_address)
        self._remove_ended(spec.workload_id)
        name = f"{spec.workload_id}.{secrets.token_hex(4)}"
        log_path = spec.log_path
        offset = 0
        if log_path is not None:
            make_private_dirs(log_path.parent)
            with open(open_private(log_path, os.O_WRONLY | os.O_APPEND), "ab") as f:
                offset = f.seek(0, os.SEEK_END)
        meta = {"log_path": str(log_path) if log_path else "", "log_offset": offset}
        gpus = len(spec.gpu_indices) * spec.gpu_milli / 1000
        actor = _Supervisor.options(
            name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            max_concurrency=4, num_cpus=0, num_gpus=gpus,
            label_selector={RAY_NODE_ID_LABEL: node_id},
        ).remote(spec.workload_id, meta)
        env = {**spec.env, **gpu_env(spec.gpu_indices), WORKLOAD_ENV: spec.workload_id}
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The node's log is written through the masking writer, as the local backend does.
        env[MASK_ENV] = ",".join(masked_env_names(spec))
        try:
            info: dict[str, Any] = ray.get(actor.launch.remote(
                spec.command, env, str(spec.cwd) if spec.cwd else None, sys.executable),
                timeout=self.start_timeout_s)
        except GetTimeoutError:
            ray.kill(actor, no_restart=True)
            raise OSError(f"Ray did not start the workload on node {node_id[:12]} within "
                          f"{self.start_timeout_s:g} s (are its GPUs free in Ray?)") from None
        except RayTaskError as e:
            ray.kill(actor, no_restart=True)
            cause = e.cause if isinstance(e.cause, BaseException) else None
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror or str(cause),
                              cause.filename) from None
            raise OSError(f"could not start on node {node_id[:12]}: {cause or e}") from None
        except RayError as e:
            ray.kill(actor, no_restart=True)
            raise OSError(f"could not start on node {node_id[:12]}: {e}") from None
        handle = self._handle(name, node_id, info)
        self._watch(handle, actor)
        return handle

    def find(self, workload_id: str) -> dict[str, Any] | None:
        """The handle of the running process of ``workload_id`` (its supervisor found by
        name), or ``None``."""
        for name, actor in self._actors_of(workload_id):
            try:
                state = ray.get(actor.poll.remote(), timeout=self.call_timeout_s)
                if not state["running"]:
                    continue
                info = ray.get(actor.describe.remote(), timeout=self.call_timeout_s)
            except RayError:
                continue
            handle = self._handle(name, str(info["node_id"]), info)
            handle["adopted"] = True
            self._watch(handle, actor)
            return handle
        return None

    def inspect(self, handle: dict[str, Any]) -> WorkloadState:
        """Running, or ended with the exit code (``None`` when the node is gone: Ray marks
        a node dead about 14 s after its raylet stops answering).

        A supervisor that does not answer within ``poll_timeout_s``, or that Ray reports
        unavailable (its raylet died: the node is about to be marked dead), reads as
        running: the node's loss, not an exit, is what the caller must see next
        (:meth:`alive_node_ids`)."""
        name = handle.get("actor", "")
        if handle.get("node_id") not in self._alive_nodes():
            with self._lock:  # the node is gone, and its copy of the logs with it
                self._follow.pop(name, None)
            return WorkloadState(running=False, exit_code=self._exit.get(name))
        actor = self._actor(name)
        if actor is None:
            return WorkloadState(running=False, exit_code=self._exit.get(name))
        self._watch(handle, actor)
        try:
            state = ray.get(actor.poll.remote(), timeout=self.poll_timeout_s)
        except (GetTimeoutError, ActorUnavailableError):
            return WorkloadState(running=True)
        except RayError:
            self._nodes_at = -NODES_TTL_S  # ask again: did its node die with it?
            if handle.get("node_id") not in self._alive_nodes():
                with self._lock:
                    self._follow.pop(name, None)
                return WorkloadState(running=False, exit_code=self._exit.get(name))
            self._pull(name)
            return WorkloadState(running=False, exit_code=self._exit.get(name))
        if not state["running"]:
            self._pull(name)
            self._exit[name] = state["exit_code"]
        return WorkloadState(running=bool(state["running"]), exit_code=state["exit_code"])

    def stop(self, handle: dict[str, Any], *, grace_s: float) -> WorkloadState:
        """SIGTERM to the process group, ``grace_s`` seconds, then SIGKILL; then the last
        output is copied and the supervisor removed. Idempotent."""
        name = handle.get("actor", "")
        actor = self._actor(name)
        code = self._exit.get(name)
        if actor is not None:
            self._watch(handle, actor)
            try:
                code = ray.get(actor.terminate.remote(grace_s),
                               timeout=grace_s + self.call_timeout_s)
            except RayError:
                pass
            self._pull(name)
            try:
                ray.get(actor.discard.remote(), timeout=self.call_timeout_s)
            except RayError:
                pass
            ray.kill(actor, no_restart=True)
            self._wait_gone(name)
        with self._lock:
            self._follow.pop(name, None)
        self._exit[name] = code
        return WorkloadState(running=False, exit_code=code)

    def logs(
        self, handle: dict[str, Any], *, tail: int | None = None, this_run: bool = False
    ) -> str:
        """The output as copied to the control plane (new output is copied first)."""
        name = handle.get("actor", "")
        if name in self._follow:
            self._pull(name)
        elif (actor := self._actor(name)) is not None:
            self._watch(handle, actor)
            self._pull(name)
        return handle_log(handle, tail=tail, this_run=this_run)

    def probe_ready(self, handle: dict[str, Any], url: str, *, timeout_s: float) -> bool:
        try:
            return self._http.get(url, timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Stop copying logs (the workloads keep running, to be adopted again)."""
        self._closed.set()
        if self._pump is not None:
            self._pump.join(5)
        self._http.close()

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _handle(name: str, node_id: str, info: dict[str, Any]) -> dict[str, Any]:
        meta = info.get("meta") or {}
        return {"actor": name, "node_id": node_id, "pid": info.get("pid"),
                "create_time": info.get("create_time"), "node_log": info.get("node_log"),
                "supervisor_pid": info.get("supervisor_pid"),
                "log_path": meta.get("log_path", ""),
                "log_offset": int(meta.get("log_offset", 0))}

    def _actor(self, name: str) -> Any:
        if not name:
            return None
        self.connect()
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None

    def _actors_of(self, workload_id: str) -> list[tuple[str, Any]]:
        """The supervisors (name, actor) of every run of ``workload_id`` still known."""
        self.connect()
        prefix = f"{workload_id}."
        found = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if entry["namespace"] != NAMESPACE or not name.startswith(prefix) \
                    or "." in name[len(prefix):]:
                continue
            actor = self._actor(name)
            if actor is not None:
                found.append((name, actor))
        return found

    def _remove_ended(self, workload_id: str) -> None:
        """Remove the supervisors of earlier runs of ``workload_id`` whose process ended."""
        for name, actor in self._actors_of(workload_id):
            try:
                state = ray.get(actor.poll.remote(), timeout=self.call_timeout_s)
            except RayError:
                state = {"running": False, "exit_code": None}
            if state["running"]:
                continue
            self._watch({"actor": name}, actor)
            self._pull(name)
            ray.kill(actor, no_restart=True)
            with self._lock:
                self._follow.pop(name, None)

    def _wait_gone(self, name: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._actor(name) is not None:
            time.sleep(0.05)

    def _watch(self, handle: dict[str, Any], actor: Any) -> None:
        """Follow the output of the supervisor of ``handle`` into its ``log_path``."""
        name = handle.get("actor", "")
        with self._lock:
            if name in self._follow:
                return
            path = handle.get("log_path") or ""
            offset = int(handle.get("log_offset", 0))
            self._follow[name] = _Mirror(actor, Path(path) if path else None, offset)
            if self._pump is None:
                self._pump = threading.Thread(target=self._pump_loop, daemon=True,
                                              name="ray-log-pump")
                self._pump.start()

    def _pull(self, name: str) -> None:
        with self._lock:
            mirror = self._follow.get(name)
        if mirror is not None:
            mirror.pull(self.call_timeout_s)

    def _pump_loop(self) -> None:
        while not self._closed.wait(self.pump_interval_s):
            with self._lock:
                names = list(self._follow)
            for name in names:
                try:
                    self._pull(name)
                except Exception:  # one workload's logs never stop the others'
                    log.debug("log copy of %s failed", name, exc_info=True)


class _Mirror:
    """The control plane's copy of one workload's output: bytes up to ``node_offset`` of
    the node's file are in ``path`` from ``base`` on."""

    def __init__(self, actor: Any, path: Path | None, base: int):
        self.actor = actor
        self.path = path
        self.lock = threading.Lock()
        size = path.stat().st_size if path is not None and path.exists() else base
        self.base = base
        self.node_offset = max(size - base, 0)

    def pull(self, timeout_s: float) -> None:
        """Copy what the node's file has beyond what was copied (nothing once the node or
        actor is gone)."""
        if self.path is None:
            return
        with self.lock:
            while True:
                try:
                    data = ray.get(self.actor.read.remote(self.node_offset, _READ_CHUNK),
                                   timeout=timeout_s)
                except (RayError, RayActorError):
                    return
                if not data:
                    return
                with open(open_private(self.path, os.O_WRONLY | os.O_APPEND), "ab") as f:
                    f.write(data)
                self.node_offset += len(data)
                if len(data) < _READ_CHUNK:
                    return

"""``client.deployments``: long-running model services."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from neocloud.errors import Conflict, Timeout, Unavailable
from neocloud.models import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentStatus,
    DeploymentUpdate,
    EventOut,
    ReplicaOut,
    ReplicaStatus,
)
from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.models.deployments import DryRunOut, Engine, ReasonCode, RevisionOut
from neocloud.sdk._http import HttpApi, build, parse

#: Aliases keep ``list[...]`` readable inside classes that define a ``list`` method.
EventList = list[EventOut]
DeploymentList = list[DeploymentOut]
RevisionList = list[RevisionOut]


@dataclass(frozen=True)
class WaitProgress:
    """What :meth:`Deployments.wait_ready` saw on one poll.

    ``deployment`` is the latest state; ``events`` the deployment's events so far, oldest
    first; ``elapsed_s`` the seconds since the wait began.
    """

    deployment: DeploymentOut
    events: list[EventOut]
    elapsed_s: float

    @property
    def latest_event(self) -> EventOut | None:
        return self.events[-1] if self.events else None


class Deployments:
    """Create, read, change and delete deployments of the token's workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def create(
        self,
        name: str,
        service: str | None = None,
        *,
        engine: Engine | str | None = None,
        model: str | None = None,
        shape: str = "cpu.small",
        replicas: int = 1,
        env: Mapping[str, str] | None = None,
        priority: int = 0,
        preemptible: bool = False,
        secrets: Mapping[str, str] | None = None,
        autoscaling: AutoscalingConfig | None = None,
        drain_timeout_s: float | None = None,
        cold_start_timeout_s: float | None = None,
        max_surge: int | None = None,
        max_unavailable: int | None = None,
    ) -> DeploymentOut:
        """Create a deployment (``POST /deployments``); replicas start in the background.

        Args:
            name: DNS-label name; also the OpenAI ``model`` name of the endpoint.
            service: ``embeddings``, ``chat``, ``package.module:Class`` or ``file.py:Class``
                (engine ``builtin``, required there); left out with engine ``vllm``.
            engine: ``builtin`` (server default) or ``vllm`` (vLLM's OpenAI server, from
                the engine environment ``make install-vllm`` creates on the server).
            model: model of a built-in service, or vLLM's model (``hf:<org>/<name>``, a
                local folder or ``.gguf``; vLLM default: the built-in chat model).
            shape: shape name, e.g. ``cpu.small`` or ``gpu.a10``.
            replicas: desired replica count, 0..64.
            env: environment variables for every replica.
            priority: larger is more important; may preempt lower-priority preemptible work.
            preemptible: whether higher-priority work may stop these replicas.
            secrets: ``{ENV_NAME: SECRET_NAME}``: workspace secrets given to every replica
                as environment variables.
            autoscaling: follow the load between ``min_replicas`` (0 allowed: scale to
                zero, woken by a request) and ``max_replicas``; ``None``: fixed ``replicas``.
            drain_timeout_s: seconds a stopping replica may finish in-flight requests
                (server default 120).
            cold_start_timeout_s: seconds a request is held while the deployment starts
                from zero, then 503 (server default 120).
            max_surge / max_unavailable: replicas a rolling update may run above, and
                ready ones it may go below, the desired count (server defaults 1 and 0).

        Raises:
            ValidationFailed: a field is malformed (checked before sending).
            AlreadyExists: a deployment of that name exists in the workspace.
            NotFound: the shape does not exist.
            InvalidRequest: ``service`` and ``engine`` do not go together, or engine
                ``vllm`` is not installed on the server (code ``engine_not_installed``).
        """
        body = build(
            DeploymentCreate,
            name=name,
            service=service,
            engine=engine,
            model=model,
            shape=shape,
            replicas=replicas,
            env=dict(env) if env is not None else None,
            priority=priority,
            preemptible=preemptible,
            secrets=dict(secrets) if secrets is not None else None,
            autoscaling=autoscaling,
            drain_timeout_s=drain_timeout_s,
            cold_start_timeout_s=cold_start_timeout_s,
            max_surge=max_surge,
            max_unavailable=max_unavailable,
        )
        return self._api.send_model("POST", DeploymentOut, "/deployments", body)

    def dry_run(self, name: str, service: str | None = None, *, shape: str = "cpu.small",
                priority: int = 0, **fields: object) -> DryRunOut:
        """Check a deployment spec and say where one replica would go, storing nothing
        (``POST /deployments?dry_run=true``): ``fits_now`` with its ``node``, or
        ``can_ever_fit`` with the ``reason`` and ``code``. ``fields``: any other field of
        :meth:`create`. Raises what :meth:`create` raises."""
        body = build(DeploymentCreate, name=name, service=service, shape=shape,
                     priority=priority, **fields)
        payload = body.model_dump(mode="json", exclude_unset=True)
        return parse(DryRunOut, self._api.request("POST", "/deployments", json=payload,
                                                  params={"dry_run": "true"}))

    def get(self, name: str) -> DeploymentOut:
        """One deployment with its ``replica_list``. Raises ``NotFound``."""
        return self._api.get_model(DeploymentOut, _path(name))

    def list(self) -> DeploymentList:
        """All deployments of the workspace (deleted ones drop out once stopped)."""
        return self._api.get_list(DeploymentOut, "/deployments")

    def update(
        self,
        name: str,
        *,
        service: str | None = None,
        engine: Engine | str | None = None,
        model: str | None = None,
        shape: str | None = None,
        replicas: int | None = None,
        env: Mapping[str, str] | None = None,
        autoscaling: AutoscalingConfig | None = None,
        drain_timeout_s: float | None = None,
        cold_start_timeout_s: float | None = None,
        revision: int | None = None,
        max_surge: int | None = None,
        max_unavailable: int | None = None,
    ) -> DeploymentOut:
        """Change the given fields (``PATCH``); the others keep their value.

        A change of ``engine``, ``service``, ``model``, ``shape`` or ``env`` rolls the
        replicas to a new generation; ``replicas`` alone scales. With ``revision`` the
        change applies only to that revision of the deployment. Raises ``NotFound``,
        ``ValidationFailed``, ``Conflict`` (code ``revision_conflict``: ``revision`` is no
        longer current), ``InvalidRequest`` (engine and service do not go together).
        """
        body = build(
            DeploymentUpdate,
            service=service,
            engine=engine,
            model=model,
            shape=shape,
            replicas=replicas,
            env=dict(env) if env is not None else None,
            autoscaling=autoscaling,
            drain_timeout_s=drain_timeout_s,
            cold_start_timeout_s=cold_start_timeout_s,
            revision=revision,
            max_surge=max_surge,
            max_unavailable=max_unavailable,
        )
        return self._api.send_model("PATCH", DeploymentOut, _path(name), body)

    def autoscale(self, name: str, config: AutoscalingConfig | None) -> DeploymentOut:
        """Set the autoscaling settings of a deployment; ``None`` turns autoscaling off (the
        replica count then stays where it is). Raises ``NotFound``."""
        body = DeploymentUpdate.model_validate({"autoscaling": config})
        return self._api.send_model("PATCH", DeploymentOut, _path(name), body)

    def history(self, name: str) -> RevisionList:
        """The revisions of a deployment, oldest first; the last one is ``active``."""
        return self._api.get_list(RevisionOut, _path(name) + "/revisions")

    def scale(self, name: str, replicas: int) -> DeploymentOut:
        """Set the desired replica count (same as ``update(name, replicas=...)``)."""
        return self.update(name, replicas=replicas)

    def delete(self, name: str) -> None:
        """Delete; the reconciler stops the replicas afterwards. Raises ``NotFound``."""
        self._api.request("DELETE", _path(name))

    def events(self, name: str, *, limit: int | None = None) -> EventList:
        """Events of the deployment, oldest first; the newest ``limit`` of them (the
        server's default, 100, when ``None``)."""
        events = self._api.get_list(EventOut, _path(name) + "/events", params={"limit": limit})
        return sorted(events, key=lambda e: e.id)

    def logs(self, name: str, tail: int | None = None, replica: str | None = None) -> str:
        """Log text: the last ``tail`` lines (all when ``None``) of one replica, or of every
        replica each under a ``==> replica ID <==`` header when ``replica`` is ``None``."""
        response = self._api.request(
            "GET", _path(name) + "/logs", params={"tail": tail, "replica": replica}
        )
        return response.text

    def wait_ready(
        self,
        name: str,
        timeout_s: float = 600.0,
        poll_s: float = 1.0,
        on_progress: Callable[[WaitProgress], None] | None = None,
        max_restarts: int | None = 3,
    ) -> DeploymentOut:
        """Poll until every desired replica is ready.

        Args:
            name: the deployment.
            timeout_s: give up after this many seconds.
            poll_s: seconds between polls (one ``GET`` of the deployment and one of its
                events per poll).
            on_progress: called after every poll with a :class:`WaitProgress`.
            max_restarts: give up once a replica of the current generation that is not
                ready has been restarted this many times (a crash loop, such as a service
                that cannot be imported); ``None`` waits for the full ``timeout_s``.

        Returns:
            The ready deployment (status ``ready``, or a deployment of zero replicas).

        Raises:
            Unavailable: the deployment's status became ``failed`` (code
                ``deployment_failed``) or a replica keeps crashing (code
                ``deployment_crashing``), or no registered node could ever hold a replica
                (code ``unschedulable``); the message holds the reason and latest events.
            Conflict: the deployment is being deleted.
            Timeout: not ready within ``timeout_s``; the message holds the status, the
                pending reason and the latest events.
            NotFound: there is no such deployment.
        """
        start = time.monotonic()
        while True:
            deployment = self.get(name)
            events = self.events(name)
            elapsed = time.monotonic() - start
            if on_progress is not None:
                on_progress(WaitProgress(deployment, events, elapsed))
            if _is_ready(deployment):
                return deployment
            if deployment.status == DeploymentStatus.failed:
                raise Unavailable(
                    f"deployment {name!r} failed: {_explain(deployment, events)}",
                    code="deployment_failed",
                )
            crashing = _crash_looping(deployment, max_restarts)
            if crashing is not None:
                raise Unavailable(
                    f"deployment {name!r} keeps crashing (replica {crashing.id[:8]} restarted "
                    f"{crashing.restarts} times): {_explain(deployment, events, last=1)}",
                    code="deployment_crashing",
                )
            if deployment.status == DeploymentStatus.deleting:
                raise Conflict(f"deployment {name!r} is being deleted")
            reason = deployment.pending_reason or ""
            if deployment.pending_code in NEVER_FITS and not deployment.ready_replicas:
                raise Unavailable(
                    f"deployment {name!r} cannot start on any registered node: {reason}. "
                    "It stays queued and starts if a node that fits is added.",
                    code="unschedulable",
                )
            if elapsed >= timeout_s:
                raise Timeout(
                    f"deployment {name!r} is not ready after {timeout_s:g} s: "
                    f"{_explain(deployment, events)}"
                )
            time.sleep(max(0.0, min(poll_s, timeout_s - elapsed)))


#: Pending codes meaning no registered node could ever hold one replica (no GPU of the
#: type, too few GPUs, CPUs or memory on any node, the shape removed): waiting longer
#: cannot help.
NEVER_FITS = frozenset({ReasonCode.NO_MATCHING_GPU_TYPE, ReasonCode.INSUFFICIENT_GPUS_PER_NODE,
                        ReasonCode.SHAPE_MISSING})


def _is_ready(deployment: DeploymentOut) -> bool:
    """Ready means every desired replica is ready *in the current generation*, so that a
    wait right after an update does not return on replicas that are about to be rolled."""
    if deployment.replicas == 0:
        return deployment.status in (DeploymentStatus.ready, DeploymentStatus.scaled_to_zero)
    if deployment.status != DeploymentStatus.ready:
        return False
    if deployment.ready_replicas < deployment.replicas:
        return False
    if not deployment.replica_list:
        return True
    current = [
        r
        for r in deployment.replica_list
        if r.status == ReplicaStatus.ready and r.generation == deployment.generation
    ]
    return len(current) >= deployment.replicas


def _crash_looping(deployment: DeploymentOut, max_restarts: int | None) -> ReplicaOut | None:
    """The first replica of the current generation, not ready, restarted at least
    ``max_restarts`` times."""
    if max_restarts is None:
        return None
    for replica in deployment.replica_list:
        if (
            replica.generation == deployment.generation
            and replica.status != ReplicaStatus.ready
            and replica.restarts >= max_restarts
        ):
            return replica
    return None


def _explain(deployment: DeploymentOut, events: list[EventOut], last: int = 3) -> str:
    """One paragraph: status, ready count, pending reason, and the last few events, each
    shortened by :func:`brief`."""
    parts = [
        f"status {deployment.status.value}, "
        f"{deployment.ready_replicas}/{deployment.replicas} replicas ready"
    ]
    if deployment.pending_reason:
        parts.append(f"pending: {brief(deployment.pending_reason)}")
    failing = [r.message for r in deployment.replica_list if r.message]
    if failing and not deployment.pending_reason:
        parts.append(f"replica: {brief(failing[-1])}")
    if events:
        recent = "; ".join(f"{e.reason}: {brief(e.message)}" for e in events[-last:])
        parts.append(f"last events: {recent}")
    return "; ".join(parts)


def brief(message: str, limit: int = 240) -> str:
    """A message on one line: a multi-line message keeps its first and last non-empty
    lines (``first ... last``), and at most ``limit`` characters."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(name: str) -> str:
    return "/deployments/" + quote(name, safe="")

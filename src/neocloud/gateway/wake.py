"""Holding requests while a scaled-to-zero deployment starts.

A route with no upstreams and ``can_wake=True`` belongs to a deployment scaled to zero.
The first request for it starts one wake-up task per deployment: it calls
``RouteTable.wake(route)`` once, then re-resolves the route every ``wake_poll_s`` until
upstreams appear or ``wake_timeout_s`` passes. Every request that arrives meanwhile awaits
that same task (so the control plane is asked once, and polled once per interval,
however many requests wait), each for at most ``wake_timeout_s`` (the route's own
``wake_timeout_s``, the deployment's cold-start timeout, when it has one). Outcomes: the
fresh route (the request proceeds); 503 ``deployment_starting`` with ``Retry-After`` on
timeout; 503 ``deployment_failed_to_start`` at once when the route carries a
``wake_error`` (its replica crashed while starting); 404 if the deployment was removed
meanwhile; or whatever :class:`NeocloudError` ``wake`` raised (e.g. ``QuotaExceeded``),
returned to every held request. A route ``scaled_to_zero`` (replicas set to 0 without
autoscaling) is refused at once with 503 ``deployment_scaled_to_zero``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from neocloud.errors import NeocloudError, NoReadyReplica, NotFound, Unavailable
from neocloud.gateway.settings import GatewaySettings
from neocloud.gateway.stats import DeploymentCounters
from neocloud.gateway.types import Route, RouteTable

log = logging.getLogger("neocloud.gateway")


def scaled_to_zero_error(name: str) -> Unavailable:
    """503 ``deployment_scaled_to_zero``: the deployment was scaled to 0 replicas and does
    not autoscale from zero, so a request cannot wake it (it says how to bring it back)."""
    return Unavailable(
        f"deployment '{name}' is scaled to zero replicas and does not autoscale from zero,"
        f" so requests cannot wake it; scale it up (`neocloud scale {name} 1`) or let it"
        f" autoscale from zero (`neocloud autoscale {name} --min 0 --max N`)",
        code="deployment_scaled_to_zero",
    )


class Waker:
    """Wakes scaled-to-zero deployments and holds their requests (one per gateway).

    Args:
        routes: the host's route table (``wake`` and uncached ``resolve``).
        settings: ``wake_timeout_s`` and ``wake_poll_s``.
        on_ready: called with the fresh route once it has upstreams (to refresh caches).
    """

    def __init__(
        self, routes: RouteTable, settings: GatewaySettings, on_ready: Callable[[Route], None]
    ) -> None:
        self._routes = routes
        self.settings = settings
        self._on_ready = on_ready
        self._wakers: dict[str, asyncio.Task[Route]] = {}

    def close(self) -> None:
        """Stop wake-ups in progress."""
        for task in list(self._wakers.values()):
            task.cancel()
        self._wakers.clear()

    async def hold(self, route: Route, c: DeploymentCounters) -> Route:
        """Wait until ``route``'s deployment has upstreams and return the fresh route.

        Raises:
            NoReadyReplica: the route cannot wake (503).
            Unavailable: no upstream within ``wake_timeout_s`` (503 ``deployment_starting``).
            NeocloudError: whatever ``RouteTable.wake`` raised; NotFound if it was removed.
        """
        if route.scaled_to_zero:
            raise scaled_to_zero_error(route.name)
        if not route.can_wake:
            raise NoReadyReplica(f"deployment '{route.name}' has no ready replica")
        if route.wake_error is not None:
            raise self._failed(route)
        c.held += 1
        try:
            task = self._wakers.get(route.deployment_id)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._wake_and_wait(route))
                self._wakers[route.deployment_id] = task
                task.add_done_callback(self._waker_done(route.deployment_id))
            try:
                return await asyncio.wait_for(asyncio.shield(task), self._timeout(route))
            except TimeoutError:
                raise self._still_starting(route) from None
        finally:
            c.held -= 1

    def _waker_done(self, deployment_id: str) -> Callable[[asyncio.Task[Route]], None]:
        def done(task: asyncio.Task[Route]) -> None:
            if self._wakers.get(deployment_id) is task:
                del self._wakers[deployment_id]
            if not task.cancelled():
                task.exception()  # retrieved: held requests got it already

        return done

    def _timeout(self, route: Route) -> float:
        return route.wake_timeout_s if route.wake_timeout_s is not None \
            else self.settings.wake_timeout_s

    def _still_starting(self, route: Route) -> Unavailable:
        timeout = self._timeout(route)
        err = Unavailable(
            f"deployment '{route.name}' is starting from zero and had no ready replica after"
            f" {timeout:g} s; retry later",
            code="deployment_starting",
        )
        err.retry_after_s = max(1.0, min(timeout, 30.0))  # type: ignore[attr-defined]
        return err

    @staticmethod
    def _failed(route: Route) -> Unavailable:
        return Unavailable(route.wake_error or f"deployment '{route.name}' failed to start",
                           code="deployment_failed_to_start")

    async def _wake_and_wait(self, route: Route) -> Route:
        s = self.settings
        deadline = time.monotonic() + self._timeout(route)
        try:
            await self._routes.wake(route)
            while True:
                fresh = await self._routes.resolve(route.workspace_id, route.name)
                if fresh is None or fresh.workspace_id != route.workspace_id:
                    raise NotFound(
                        f"deployment '{route.name}' was removed while starting",
                        code="deployment_not_found",
                    )
                if fresh.upstreams:
                    self._on_ready(fresh)
                    return fresh
                if fresh.wake_error is not None:
                    raise self._failed(fresh)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._still_starting(route)
                await asyncio.sleep(min(s.wake_poll_s, left))
        except NeocloudError:
            raise
        except Exception as exc:
            log.exception("waking deployment %s failed", route.deployment_id)
            raise Unavailable(f"deployment '{route.name}' could not be started: {exc}") from None

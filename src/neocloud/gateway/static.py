"""Fixed route table and token list: for the standalone runner, benchmarks and tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from neocloud.gateway.types import Principal, Route, Upstream


class StaticAuthenticator:
    """Accepts exactly the tokens given, each mapped to its principal."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = dict(tokens)

    async def authenticate(self, token: str) -> Principal | None:
        return self._tokens.get(token)


class StaticRouteTable:
    """Routes held in memory (change them with :meth:`set_route`).

    ``wake`` counts its calls in ``wake_calls`` and awaits ``on_wake(route)`` when given.
    """

    def __init__(
        self,
        routes: Iterable[Route] = (),
        on_wake: Callable[[Route], Awaitable[None]] | None = None,
    ) -> None:
        self._routes: dict[tuple[str, str], Route] = {}
        self._on_wake = on_wake
        self.wake_calls = 0
        for r in routes:
            self.set_route(r)

    def set_route(self, route: Route) -> None:
        """Add or replace the route of ``(route.workspace_id, route.name)``."""
        self._routes[(route.workspace_id, route.name)] = route

    def remove_route(self, workspace_id: str, name: str) -> None:
        self._routes.pop((workspace_id, name), None)

    async def resolve(self, workspace_id: str, name: str) -> Route | None:
        return self._routes.get((workspace_id, name))

    async def list_routes(self, workspace_id: str) -> list[Route]:
        return [r for (ws, _), r in self._routes.items() if ws == workspace_id]

    async def wake(self, route: Route) -> None:
        self.wake_calls += 1
        if self._on_wake is not None:
            await self._on_wake(route)


def parse_route_spec(spec: str, workspace_id: str = "default") -> Route:
    """Parse ``NAME=URL[,URL...]`` into a route whose replicas are named ``NAME-0``, ``NAME-1``...

    Raises:
        ValueError: when the spec has no ``=``, an empty name, or no URL.
    """
    name, sep, urls = spec.partition("=")
    name = name.strip()
    parts = [u.strip() for u in urls.split(",") if u.strip()]
    if not sep or not name or not parts:
        raise ValueError(f"route must look like NAME=http://host:port[,http://...], got {spec!r}")
    ups = tuple(Upstream(replica_id=f"{name}-{i}", url=u) for i, u in enumerate(parts))
    return Route(deployment_id=name, workspace_id=workspace_id, name=name, upstreams=ups)

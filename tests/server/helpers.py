"""Helpers for control-plane tests: an in-process cloud with its admin token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from neocloud.server.app import ControlPlane, create_app
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.settings import Settings


@dataclass
class Cloud:
    app: ControlPlane
    client: TestClient
    token: str
    fake: FakeBackend

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def reconcile(self, times: int = 1) -> None:
        rec = self.app.state.reconcilers.deployments
        for _ in range(times):
            rec.run_once()

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        return self.client.request(method, f"/api/v1{path}", headers=self.h(token), **kw)

    def new_workspace(self, name: str, role: str = "admin") -> str:
        r = self.api("POST", "/workspaces", json={"name": name})
        assert r.status_code == 201, r.text
        r = self.api("POST", f"/workspaces/{name}/tokens", json={"name": "t1", "role": role})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def add_fake_node(self, name: str, *, gpus: list[dict[str, Any]] | None = None,
                      cpu_milli: int = 256000, memory_mib: int = 2_097_152) -> dict[str, Any]:
        r = self.api("POST", "/nodes", json={
            "name": name, "cpu_milli": cpu_milli, "memory_mib": memory_mib,
            "gpus": gpus or [], "backend": "fake"})
        assert r.status_code == 201, r.text
        return r.json()


def make_settings(home: Path, db_url: str, **kw: Any) -> Settings:
    return Settings(home=home, database_url=db_url, register_local_node=kw.pop("local", False),
                    reconcile_interval_s=0.2, restart_backoff_base_s=0.0,
                    usage_period_s=kw.pop("usage_period_s", 3600.0), **kw)


def open_cloud(home: Path, db_url: str, *, fake_serves: tuple[str, ...] = ("fake",),
               **kw: Any) -> tuple[Cloud, TestClient]:
    """An in-process cloud without its reconciler thread; ``fake_serves``: the node
    backends whose work the fake backend runs (``("fake", "ray")`` for joined nodes)."""
    fake = FakeBackend()
    settings = make_settings(home, db_url, **kw)
    app = create_app(settings, backends={**dict.fromkeys(fake_serves, fake),
                                         "local": LocalBackend()},
                     run_reconcilers=False)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    boot = bootstrap(app.state.db)
    assert boot.token
    return Cloud(app=app, client=client, token=boot.token, fake=fake), client


def set_past_price(app: ControlPlane, *, created_by: str = "admin-1", **body: Any
                   ) -> dict[str, Any]:
    """Write the price version ``body`` (a ``POST /prices`` body whose ``effective_at`` is
    in the past) as an operator set it at that time: the API refuses an effective time in
    the past (``services.prices.CLOCK_SKEW_S``), and these tests bill usage recorded then.
    Returns the version as the API lists it."""
    from neocloud.models.billing import PriceOut, PriceSet
    from neocloud.server.services import prices

    spec = PriceSet.model_validate(body)
    assert spec.effective_at is not None
    with app.state.db.session() as s:
        row = prices.set_price(s, spec=spec, created_by=created_by, now=spec.effective_at)
        return PriceOut.model_validate(row).model_dump(mode="json")


def race_in_order(db: Any, first: Any, second: Any, *, hold_s: float = 0.5
                  ) -> tuple[BaseException | None, BaseException | None]:
    """Two transactions forced into one interleaving: ``first(session)`` runs its writes
    and flushes, then holds its transaction open ``hold_s`` seconds after ``second`` has
    started, so ``second(session)`` reads before ``first`` commits (and waits on any lock
    ``first`` holds). Returns what each raised (``None``: it committed)."""
    import threading
    import time

    first_done, second_started = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = [None, None]

    def run_first() -> None:
        try:
            with db.session() as s:
                first(s)
                s.flush()
                first_done.set()
                assert second_started.wait(30)
                time.sleep(hold_s)
        except BaseException as e:
            outcome[0] = e
        finally:
            first_done.set()

    def run_second() -> None:
        assert first_done.wait(30)
        second_started.set()
        try:
            with db.session() as s:
                second(s)
        except BaseException as e:
            outcome[1] = e

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcome[0], outcome[1]

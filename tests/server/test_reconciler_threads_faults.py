"""The reconciler thread's step between full passes, against what a look leaves (both
databases).

Found by a fault-hunting pass: a look leaves a changed deployment to the full pass when
a higher-priority one waits (the priorities are kept), and the changed-first path's
invariant says the same wake starts that pass at once; but the thread's step ran a look
alone between full passes, so the change waited for the next pass to fall due (up to
two reconcile intervals): a lower-priority deployment deleted, or scaled, while a
higher-priority one waited for room kept its replicas running meanwhile.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from neocloud.server.db.tables import Replica
from neocloud.server.reconcilers.deployments import changes
from tests.server.helpers import Cloud
from tests.server.test_reconciler_threads import _ids, _ready, _waiting_big


def _live(cloud: Cloud, dep_id: str) -> list[str]:
    with cloud.app.state.db.session() as s:
        return list(s.scalars(select(Replica.status).where(
            Replica.deployment_id == dep_id, Replica.status != "stopped")))


@pytest.mark.parametrize("change", ["delete", "scale"])
def test_a_change_a_look_leaves_to_the_pass_starts_the_pass_at_once(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    _waiting_big(cloud)
    (low,) = _ids(cloud, "low")
    rec = cloud.app.state.reconcilers.deployments
    (_nodes, step, *_rest) = cloud.app.state.reconcilers.thread.steps
    step()  # the first step of the thread: a full pass
    monkeypatch.setattr(rec.settings, "reconcile_interval_s", 3600.0)  # no pass falls due
    if change == "delete":
        assert cloud.api("DELETE", "/deployments/low").status_code in (200, 202, 204)
    else:
        assert cloud.api("PATCH", "/deployments/low", json={"replicas": 2}
                         ).status_code == 200
    step()  # woken by the request
    # before: the look left it to a pass that was not started, and nothing ran
    if change == "delete":
        assert all(st in ("stopping", "stopped") for st in _live(cloud, low)) or \
            _live(cloud, low) == []
    else:
        assert _ready(cloud, "low") == 2

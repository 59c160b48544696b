"""The console's chart data and what its pages print, without a browser: the chart series
are the REST API's (every bucket of the chosen window, the open one left out), the x axis
spans the window, spend splits by workload or kind, and numbers and commands read as a
person expects."""

from __future__ import annotations

import shlex
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import escape
from sqlalchemy import select

from neocloud.gateway.types import RequestRecord
from neocloud.server.db.tables import Shape, Workspace
from neocloud.server.metering.records import record_running
from neocloud.server.services import metrics_history as mh
from tests.server.helpers import Cloud


def _login(cloud: Cloud, token: str | None = None) -> None:
    cloud.client.cookies.clear()
    r = cloud.client.post("/ui/login", data={"token": token or cloud.token},
                          follow_redirects=False)
    assert r.status_code == 303, r.text


def _ui(cloud: Cloud, path: str) -> Any:
    r = cloud.client.get(path)
    assert r.status_code == 200, r.text
    return r.json() if r.headers["content-type"].startswith("application/json") else r.text


def _ws_id(cloud: Cloud) -> str:
    with cloud.app.state.db.session() as s:
        return s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()


def _away_from_a_bucket_end() -> None:
    """The test's 10-second buckets are the server's: not within 2 s of a bucket's end."""
    if time.time() % 10 > 8:
        time.sleep(10.05 - time.time() % 10)


def test_chart_data_is_the_rest_series_over_the_whole_window(cloud: Cloud) -> None:
    dep = cloud.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                   "replicas": 0}).json()["id"]
    _login(cloud)
    # No traffic: every bucket of the window, all zero, flagged empty.
    _away_from_a_bucket_end()
    idle = _ui(cloud, "/ui/data/deployments/emb?window_s=900")
    assert idle["empty"] is True and idle["end"] - idle["start"] == 900
    assert len(idle["t"]) == 90 and set(idle["rps"]) == {0.0} and set(idle["p50"]) == {None}
    ws = _ws_id(cloud)
    t_open = int(time.time()) // 10 * 10
    for i in range(47):  # 4.7 requests/s in the last closed bucket, more in the open one
        cloud.app.state.usage.record(RequestRecord(
            workspace_id=ws, token_id="t", deployment_id=dep, replica_id=None,
            path="/v1/embeddings", status=200, latency_s=0.01, prompt_tokens=3,
            completion_tokens=0, started_at=t_open - 10 + i * 0.2))
    cloud.app.state.usage.flush()
    ui = _ui(cloud, "/ui/data/deployments/emb?window_s=900")
    rest = cloud.api("GET", "/metrics/deployments/emb?window_s=900").json()
    assert ui["empty"] is False
    assert (ui["start"], ui["end"]) == (rest["start"], rest["end"])
    assert ui["t"] == [p["t"] for p in rest["points"]]
    assert ui["rps"] == [p["request_rate_per_s"] for p in rest["points"]]
    assert ui["p99"] == [p["latency_p99_ms"] for p in rest["points"]]
    assert ui["rps"][-1] == 4.7 and ui["t"][-1] == t_open - 10
    # Each window the page offers: its stored resolution, the axis spanning all of it.
    for window_s, res in ((3600, 10), (86400, 10), (30 * 86400, 300)):
        d = _ui(cloud, f"/ui/data/deployments/emb?window_s={window_s}")
        assert d["resolution_s"] == res and d["end"] - d["start"] == window_s
        assert len(d["t"]) == window_s // res


def test_node_chart_has_gaps_where_no_sample_was_taken(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 8, "memory_mib": 81559}])
    _away_from_a_bucket_end()
    t_open = int(time.time()) // 10 * 10
    with cloud.app.state.db.session() as s:
        mh.sample_nodes(s, datetime.fromtimestamp(t_open - 60, UTC))
    _login(cloud)
    d = _ui(cloud, "/ui/data/nodes?window_s=900")
    assert d["end"] - d["start"] == 900 and len(d["t"]) == 90
    by_t = dict(zip(d["t"], d["gpus"], strict=True))
    assert by_t[t_open - 60] == 8.0
    assert by_t[t_open - 50] is None and by_t[t_open - 70] is None  # gaps, not zeros


def test_spend_splits_by_workload_or_kind_and_pads_the_month(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    now = datetime.now(UTC)
    with cloud.app.state.db.session() as s:
        for kind, name, shape, minutes in (("replica", "llm", "gpu.h100", 30),
                                           ("job", "etl", "cpu.small", 10)):
            record_running(s, workspace_id=ws, kind=kind, object_id=name.ljust(32, "0"),
                           name=name, shape=s.get(Shape, shape),
                           start=now - timedelta(minutes=minutes), end=now)
    _login(cloud)
    d = _ui(cloud, "/ui/data/spend?by=workload")
    assert d["series"] == ["replica llm", "job etl"]  # the costliest first
    today = now.day - 1
    llm, etl = (v[today] for v in d["values"])
    assert llm > etl > 0
    assert all(v[-1] is None for v in d["values"]) or now.day == len(d["t"])
    # Half a day of room on each side: the first and last days' bars are drawn whole.
    assert d["start"] == d["t"][0] - 43200 and d["end"] == d["t"][-1] + 43200
    k = _ui(cloud, "/ui/data/spend?by=kind")
    assert k["series"] == ["time", "tokens", "storage"]
    assert abs(k["values"][0][today] - (llm + etl)) < 1e-9
    assert cloud.client.get("/ui/data/spend?by=colour").status_code == 404


def test_pages_print_quantities_commands_and_columns_for_people(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 2, "memory_mib": 81559}])
    op = cloud.token
    assert cloud.api("PUT", "/workspaces/default/quota", op,
                     json={"gpus_total": 1}).status_code == 200
    r = cloud.api("POST", "/jobs", json={
        "name": "train", "shape": "gpu.h100", "max_retries": 1,
        "command": ["python", "-c", "print('hello world')"]})
    assert r.status_code == 201, r.text
    assert cloud.api("POST", "/jobs", json={"name": "waiter", "shape": "gpu.h100",
                                             "command": ["x"]}).status_code == 201
    from tests.server.workload_helpers import reconcile_workloads
    reconcile_workloads(cloud, 3)
    ws = _ws_id(cloud)
    now = datetime.now(UTC)
    with cloud.app.state.db.session() as s:  # 2 CPU-seconds (0.00056 CPU-hours)
        record_running(s, workspace_id=ws, kind="job", object_id="e" * 32, name="tiny",
                       shape=s.get(Shape, "cpu.small"), start=now - timedelta(seconds=4),
                       end=now)
    member = cloud.new_workspace("team")
    _login(cloud)
    quota = _ui(cloud, "/ui/workspace").split('id="quota"')[1].split("</table>")[0]
    assert "<td>GPUs (all types)</td><td>1</td><td>1</td>" in quota, quota
    assert "1.0" not in quota
    job = _ui(cloud, "/ui/jobs/train")
    quoted = shlex.join(["python", "-c", "print('hello world')"])
    assert f'<code id="job-command">{escape(quoted)}</code>' in job
    jobs = _ui(cloud, "/ui/jobs")
    assert "<th>Failed attempts</th><th>Retries allowed</th>" in jobs
    assert "/1</td>" not in jobs
    bill = _ui(cloud, "/ui/billing")
    assert "0.0000 " not in bill
    assert "2 CPU-seconds" in bill, bill.split('id="invoice"')[1][:1500]
    # A member's queue: one workspace, no Workspace column; an operator's: every one.
    _login(cloud, member)
    assert "<th>Workspace</th>" not in _ui(cloud, "/ui/queue")
    _login(cloud, op)
    assert "<th>Workspace</th>" in _ui(cloud, "/ui/queue")

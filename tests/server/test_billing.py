"""Billing: price lists, invoices, budgets and chargeback, on both databases.

Usage enters through the same metering functions the reconcilers and the gateway call
(``record_running``, ``UsageBuffer``, ``meter_storage``), with explicit times so periods
and price changes fall where each test needs them.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from pydantic import TypeAdapter
from sqlalchemy import func, select

from neocloud.gateway.types import RequestRecord
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.tables import (
    Deployment,
    Event,
    Node,
    Shape,
    UsageRecord,
    Volume,
    Workspace,
)
from neocloud.server.metering.loop import MeteringLoop
from neocloud.server.metering.records import record_running
from neocloud.server.metering.storage import meter_storage
from neocloud.server.metering.tokens import write_tokens
from neocloud.server.services import invoices
from tests.server.helpers import Cloud, make_settings, set_past_price

T0 = datetime(2026, 10, 14, 9, 0, tzinfo=UTC)


def _ws_id(cloud: Cloud, name: str = "default") -> str:
    with cloud.app.state.db.session() as s:
        return s.scalars(select(Workspace.id).where(Workspace.name == name)).one()


def _run(cloud: Cloud, ws: str, shape: str, start: datetime, end: datetime,
         name: str = "w", written_at: datetime | None = None, node_id: str | None = None
         ) -> list[UsageRecord]:
    with cloud.app.state.db.session() as s:
        return record_running(s, workspace_id=ws, kind="replica", object_id=name.ljust(32, "0"),
                              name=name, shape=s.get(Shape, shape), start=start, end=end,
                              written_at=written_at or end, node_id=node_id)


def _req(ws: str, dep_id: str, at: datetime, p: int, c: int, status: int = 200,
         latency: float = 0.05) -> RequestRecord:
    return RequestRecord(workspace_id=ws, token_id="t", deployment_id=dep_id, replica_id=None,
                         path="/v1/chat/completions", status=status, latency_s=latency,
                         prompt_tokens=p, completion_tokens=c, started_at=at.timestamp())


def _price(cloud: Cloud, **body: object) -> dict:
    """Set a price version through the API, or, effective in the past (which the API
    refuses), as it was set at that time (:func:`set_past_price`)."""
    at = body.get("effective_at")
    when = TypeAdapter(datetime).validate_python(at) if at is not None else None
    if when is not None and when.replace(tzinfo=when.tzinfo or UTC) < datetime.now(UTC):
        return set_past_price(cloud.app, **body)
    r = cloud.api("POST", "/prices", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _deploy(cloud: Cloud, name: str, token: str | None = None, service: str = "chat") -> str:
    r = cloud.api("POST", "/deployments", token=token, json={
        "name": name, "service": service, "shape": "cpu.small", "replicas": 1})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _invoice(cloud: Cloud, period: str, token: str | None = None) -> dict:
    r = cloud.api("GET", f"/invoices/{period}", token=token)
    assert r.status_code == 200, r.text
    return r.json()


def _records_sum(cloud: Cloud, ws: str, col: object, period: str) -> int:
    with cloud.app.state.db.session() as s:
        return int(s.scalar(select(func.coalesce(func.sum(UsageRecord.amount_micros), 0))
                            .where(UsageRecord.workspace_id == ws, col == period)) or 0)


def test_tokens_are_priced_per_million_input_and_output_apart(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    dep = _deploy(cloud, "chat1")
    other = _deploy(cloud, "chat2")
    # $0.15 per million input tokens, $0.60 per million output tokens, for this model.
    _price(cloud, kind="model", target="chat1", input_per_m_micros=150_000,
           output_per_m_micros=600_000, effective_at="2026-01-01T00:00:00Z")
    usage = cloud.app.state.usage  # the gateway's usage sink, as the gateway feeds it
    at = datetime.now(UTC) - timedelta(seconds=5)
    for rec in (_req(ws, dep, at, 1_000_000, 0), _req(ws, dep, at, 2_000_000, 500_000),
                _req(ws, other, at, 1_000, 1_000)):
        usage.record(rec)
    assert usage.flush() == 3
    with cloud.app.state.db.session() as s:
        day = s.scalars(select(UsageRecord.bill_day).where(UsageRecord.object_id == dep)).first()
    inv = _invoice(cloud, str(day))
    assert inv["status"] == "draft"
    lines = {(ln["name"], ln["meter"]): ln for ln in inv["lines"]}
    inp, out = lines["chat1", "input_tokens"], lines["chat1", "output_tokens"]
    assert inp["quantity"] == 3_000_000 and inp["unit_price_micros"] == 150_000
    assert inp["amount_micros"] == 450_000          # 3 M × $0.15
    assert out["quantity"] == 500_000 and out["unit_price_micros"] == 600_000
    assert out["amount_micros"] == 300_000          # 0.5 M × $0.60
    # A model with no price of its own falls back to the '*' price, here none: free.
    assert lines["chat2", "input_tokens"]["amount_micros"] == 0
    assert inv["total_micros"] == 750_000


def test_price_change_mid_period_bills_each_side_at_its_price(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    change = T0 + timedelta(hours=1)
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=2_000_000,
           effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=3_000_000,
           effective_at=change.isoformat())
    # Two hours of one H100 across the change: 1 h at $2 + 1 h at $3.
    recs = _run(cloud, ws, "gpu.h100", T0, T0 + timedelta(hours=2))
    assert [r.amount_micros for r in recs] == [2_000_000, 3_000_000]
    dep = _deploy(cloud, "m")
    _price(cloud, kind="model", target="m", input_per_m_micros=1_000_000,
           output_per_m_micros=2_000_000, effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="model", target="m", input_per_m_micros=10_000_000,
           output_per_m_micros=20_000_000, effective_at=change.isoformat())
    with cloud.app.state.db.session() as s:  # one flush holding requests from both sides
        write_tokens(s, [_req(ws, dep, change - timedelta(seconds=1), 1_000_000, 1_000_000),
                         _req(ws, dep, change + timedelta(seconds=1), 1_000_000, 1_000_000)],
                     change + timedelta(seconds=2))
    inv = _invoice(cloud, "2026-10")
    got = sorted((ln["meter"], ln["unit_price_micros"], ln["amount_micros"])
                 for ln in inv["lines"])
    assert got == [
        ("gpu_seconds", 2_000_000, 2_000_000), ("gpu_seconds", 3_000_000, 3_000_000),
        ("input_tokens", 1_000_000, 1_000_000), ("input_tokens", 10_000_000, 10_000_000),
        ("output_tokens", 2_000_000, 2_000_000), ("output_tokens", 20_000_000, 20_000_000),
    ]
    assert inv["total_micros"] == 38_000_000


def test_invoice_sums_equal_usage_record_sums_to_the_micro_dollar(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    rng = random.Random(7)
    # Odd prices so rounding matters: per-second billing of $1.234567/h etc.
    _price(cloud, kind="shape", target="cpu.small", per_hour_micros=1_234_567,
           effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="shape", target="gpu.t4.quarter", per_hour_micros=777_777,
           effective_at="2026-10-10T13:13:13Z")
    _price(cloud, kind="storage", target="*", per_gib_hour_micros=137,
           effective_at="2026-01-01T00:00:00Z")
    dep = _deploy(cloud, "m")
    _price(cloud, kind="model", target="*", input_per_m_micros=333_333,
           output_per_m_micros=999_999, effective_at="2026-01-01T00:00:00Z")
    for i in range(60):
        start = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 29 * 86400))
        end = start + timedelta(seconds=rng.uniform(0.001, 3 * 86400))  # may cross midnights
        _run(cloud, ws, rng.choice(["cpu.small", "gpu.t4.quarter", "gpu.h100"]), start, end,
             name=f"w{i % 7}")
    with cloud.app.state.db.session() as s:
        batch = [_req(ws, dep, datetime(2026, 10, 2, tzinfo=UTC) + timedelta(
            seconds=rng.uniform(0, 20 * 86400)), rng.randrange(0, 5000), rng.randrange(0, 900))
            for _ in range(300)]
        write_tokens(s, batch, datetime(2026, 10, 25, tzinfo=UTC))
        s.add(Volume(workspace_id=ws, name="data", size_bytes=3 * 2**30 + 12345,
                     created_at=datetime(2026, 10, 3, 7, tzinfo=UTC)))
    with cloud.app.state.db.session() as s:
        assert meter_storage(s, datetime(2026, 10, 20, 7, 30, tzinfo=UTC), period_s=60) > 0
    month = _invoice(cloud, "2026-10")
    assert month["total_micros"] == sum(ln["amount_micros"] for ln in month["lines"])
    assert month["total_micros"] == _records_sum(cloud, ws, UsageRecord.bill_month, "2026-10")
    assert month["total_micros"] > 0
    meters = {ln["meter"] for ln in month["lines"]}
    assert meters == {"cpu_seconds", "gpu_seconds", "input_tokens", "output_tokens",
                      "storage_byte_hours"}
    assert {ln["gpu_type"] for ln in month["lines"] if ln["meter"] == "gpu_seconds"} == \
        {"T4", "H100"}
    days_total = 0
    for d in range(1, 32):
        day = f"2026-10-{d:02d}"
        inv = _invoice(cloud, day)
        assert inv["total_micros"] == _records_sum(cloud, ws, UsageRecord.bill_day, day)
        days_total += inv["total_micros"]
    # Spans running into November are billed there, so the days of October hold exactly
    # what the month holds.
    assert days_total == month["total_micros"]
    csv_text = cloud.api("GET", "/invoices/2026-10?format=csv").text
    assert csv_text.splitlines()[-1].split(",")[-2] == str(month["total_micros"])
    # Every line states its units, and its priced quantity times its unit price is its
    # amount up to per-record rounding (a unit price per GPU-hour, not per shape-hour).
    units = {"gpu_seconds": ("GPU-second", "GPU-hour"), "cpu_seconds": ("CPU-second", "CPU-hour"),
             "input_tokens": ("token", "million tokens"),
             "output_tokens": ("token", "million tokens"),
             "storage_byte_hours": ("byte-hour", "GiB-hour")}
    for ln in month["lines"]:
        assert (ln["quantity_unit"], ln["price_unit"]) == units[ln["meter"]]
        slack = ln["records"] + ln["priced_quantity"] + 1
        assert abs(ln["priced_quantity"] * ln["unit_price_micros"] - ln["amount_micros"]) \
            <= slack, ln
    header, first = (row.split(",") for row in csv_text.splitlines()[:2])
    row = dict(zip(header, first, strict=True))
    assert row["quantity_unit"] == units[row["meter"]][0]
    assert row["price_unit"] == units[row["meter"]][1]


def test_closed_periods_never_change(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    _run(cloud, ws, "gpu.h100", T0, T0 + timedelta(hours=1))
    with cloud.app.state.db.session() as s:
        now = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)  # within the grace: still a draft
        assert invoices.get_invoice(s, workspace_id=ws, period="2026-10", now=now
                                    ).status == "draft"
        assert invoices.close_due(s, datetime(2026, 11, 2, tzinfo=UTC)) >= 1
    closed = _invoice(cloud, "2026-10")
    assert closed["status"] == "closed" and closed["total_micros"] == 2_500_000
    # A late record for October (time metered after an outage) lands on November.
    late = _run(cloud, ws, "gpu.h100", T0 + timedelta(days=3), T0 + timedelta(days=3, hours=2),
                written_at=datetime(2026, 11, 2, 1, tzinfo=UTC))
    assert {r.bill_month for r in late} == {"2026-11"}
    assert _invoice(cloud, "2026-10") == closed
    # Even a price change with an effective time inside October changes nothing there.
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=99_000_000,
           effective_at="2026-10-01T00:00:00Z")
    assert _invoice(cloud, "2026-10") == closed
    nov = _invoice(cloud, "2026-11")
    assert nov["total_micros"] == sum(r.amount_micros for r in late) == 5_000_000


def test_invoice_bad_period_and_other_workspaces(cloud: Cloud) -> None:
    r = cloud.api("GET", "/invoices/2026-13")
    assert r.status_code == 400 and r.json()["error"]["param"] == "period"
    r = cloud.api("GET", "/invoices/last-week")
    assert r.status_code == 400
    r = cloud.api("GET", "/invoices/2026-11-31")  # the pattern's shape, not a calendar date
    assert r.status_code == 400 and "not a calendar date" in r.json()["error"]["message"]
    tok = cloud.new_workspace("team", role="member")
    r = cloud.api("GET", "/invoices/current?workspace=default", token=tok)
    assert r.status_code == 404
    assert cloud.api("GET", "/invoices/current?workspace=team").status_code == 200  # operator
    r = cloud.api("POST", "/prices", token=tok, json={
        "kind": "shape", "target": "cpu.small", "per_hour_micros": 1})
    assert r.status_code == 403
    r = cloud.api("POST", "/prices", json={"kind": "shape", "target": "cpu.small",
                                           "input_per_m_micros": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_per_m_micros"
    r = cloud.api("POST", "/prices", json={"kind": "shape", "target": "cpu.small",
                                           "per_hour_micros": 1.5})
    assert r.status_code == 422


def test_budget_alerts_once_per_threshold_and_stops_running_work(cloud: Cloud) -> None:
    cloud.add_fake_node("c1")
    tok = cloud.new_workspace("team", role="admin")
    ws = _ws_id(cloud, "team")
    r = cloud.api("PUT", "/budget", token=tok, json={
        "monthly_micros": 1_000_000, "thresholds": [50, 80, 100], "hard_stop": True,
        "stop_running": True})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["refusing"] is False
    _deploy(cloud, "svc", token=tok)
    cloud.reconcile(2)
    now = datetime.now(UTC)
    loop = MeteringLoop(cloud.app.state.db, usage_period_s=60)
    # $0.60 of gpu.h100 time (at $2.50/h: 864 s): 50 % crossed.
    _run(cloud, ws, "gpu.h100", now - timedelta(seconds=864), now)
    loop.run_once()
    loop.run_once()
    b = cloud.api("GET", "/budget", token=tok).json()
    assert b["spent_micros"] == 600_000 and b["crossed"] == [50] and b["status"] == "alerting"
    _run(cloud, ws, "gpu.h100", now - timedelta(seconds=576), now, name="w2")  # +$0.40
    loop.run_once()
    b = cloud.api("GET", "/budget", token=tok).json()
    assert b["spent_micros"] == 1_000_000 and b["status"] == "exceeded" and b["refusing"]
    with cloud.app.state.db.session() as s:
        evs = s.scalars(select(Event).where(Event.workspace_id == ws, Event.kind == "budget")
                        .order_by(Event.id)).all()
        dep = s.scalars(select(Deployment).where(Deployment.workspace_id == ws)).one()
        assert dep.replicas == 0  # stopped by the budget
    reasons = [e.reason for e in evs]
    assert reasons.count("BudgetThreshold") == 3 and reasons.count("BudgetStop") == 1
    loop.run_once()
    with cloud.app.state.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Event).where(
            Event.workspace_id == ws, Event.kind == "budget")) == len(evs)
    r = cloud.api("POST", "/deployments", token=tok, json={
        "name": "more", "service": "chat", "shape": "cpu.small"})
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded"
    r = cloud.api("POST", "/jobs", token=tok, json={
        "name": "j", "shape": "cpu.small", "command": ["true"]})
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded"
    # Scaling up is new work too (was answered 200 and left to wait as unschedulable);
    # the message gives the amounts to the micro-dollar, not rounded to cents.
    r = cloud.api("PATCH", "/deployments/svc", token=tok, json={"replicas": 2})
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded", r.text
    assert "budget of 1.00 USD" in r.json()["error"]["message"]
    with cloud.app.state.db.session() as s:
        assert s.scalars(select(Deployment).where(Deployment.workspace_id == ws)).one(
        ).replicas == 0
    # Raising the budget lets work in again; a budget without hard stop only alerts.
    cloud.api("PUT", "/budget", token=tok, json={"monthly_micros": 500_000})
    r = cloud.api("POST", "/deployments", token=tok, json={
        "name": "more", "service": "chat", "shape": "cpu.small"})
    assert r.status_code == 201, r.text
    # Members may read the budget but not change it.
    member = cloud.api("POST", "/tokens", token=tok, json={"name": "m", "role": "member"})
    mtok = member.json()["token"]
    assert cloud.api("GET", "/budget", token=mtok).status_code == 200
    assert cloud.api("PUT", "/budget", token=mtok,
                     json={"monthly_micros": 1}).status_code == 403


def test_budget_hard_stop_refuses_new_work_and_gateway_requests_under_concurrency(
        tmp_path: Path, db_url: str, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    """A real server with its reconciler thread (usage flush, metering, route refresh)."""
    app = create_app(make_settings(tmp_path / "home", db_url), backends={"fake": FakeBackend()})
    srv = live_server_factory(app)
    admin = {"Authorization": f"Bearer {bootstrap(app.state.db).token}"}
    base = srv.url
    assert httpx.post(f"{base}/api/v1/workspaces", headers=admin,
                      json={"name": "team"}).status_code == 201
    tok = httpx.post(f"{base}/api/v1/workspaces/team/tokens", headers=admin,
                     json={"name": "t", "role": "member"}).json()["token"]
    h = {"Authorization": f"Bearer {tok}"}
    r = httpx.post(f"{base}/api/v1/deployments", headers=h, json={
        "name": "emb", "service": "embeddings", "shape": "cpu.small", "replicas": 0})
    assert r.status_code == 201, r.text
    httpx.put(f"{base}/api/v1/budget?workspace=team", headers=admin, json={
        "monthly_micros": 100_000, "hard_stop": True})
    body = {"model": "emb", "input": "hello"}
    # Under budget: the gateway routes (no ready replica here: 503, never 402).
    assert httpx.post(f"{base}/v1/embeddings", headers=h, json=body).status_code == 503
    with app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "team")).one()
        now = datetime.now(UTC)
        record_running(s, workspace_id=ws, kind="replica", object_id="x" * 32, name="emb",
                       shape=s.get(Shape, "gpu.h100"), start=now - timedelta(seconds=600),
                       end=now)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the reconciler thread refreshes the route table
        if httpx.post(f"{base}/v1/embeddings", headers=h, json=body).status_code == 402:
            break
        time.sleep(0.1)

    def create(i: int) -> httpx.Response:
        kind = ("deployments", "jobs")[i % 2]
        spec = ({"name": f"d{i}", "service": "chat", "shape": "cpu.small"} if i % 2 == 0
                else {"name": f"j{i}", "shape": "cpu.small", "command": ["true"]})
        return httpx.post(f"{base}/api/v1/{kind}", headers=h, json=spec, timeout=60)

    def call(i: int) -> httpx.Response:
        return httpx.post(f"{base}/v1/embeddings", headers=h, json=body, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        created = list(pool.map(create, range(16)))
        called = list(pool.map(call, range(32)))
    for resp in created + called:
        assert resp.status_code == 402, resp.text
        assert resp.json()["error"]["code"] == "budget_exceeded"
    deps = httpx.get(f"{base}/api/v1/deployments", headers=h).json()["data"]
    jobs = httpx.get(f"{base}/api/v1/jobs", headers=h).json()["data"]
    assert [d["name"] for d in deps] == ["emb"] and jobs == []
    # Another workspace is not affected.
    assert httpx.post(f"{base}/api/v1/deployments", headers=admin, json={
        "name": "ok", "service": "chat", "shape": "cpu.small"}).status_code == 201


def test_chargeback_splits_pool_cost_over_workspaces_and_idle(cloud: Cloud) -> None:
    r = cloud.api("POST", "/nodes", json={
        "name": "g1", "cpu_milli": 64000, "memory_mib": 512000, "pool": "h100-pool",
        "gpus": [{"type": "H100", "count": 4, "memory_mib": 81559}], "backend": "fake"})
    assert r.status_code == 201, r.text
    node = r.json()
    _registered_at(cloud, node["id"], datetime(2026, 10, 1, tzinfo=UTC))
    cloud.new_workspace("team")
    a, b = _ws_id(cloud), _ws_id(cloud, "team")
    # The pool costs its owner $8/h (4 GPUs); a day is $192.
    _price(cloud, kind="pool", target="h100-pool", per_hour_micros=8_000_000,
           effective_at="2026-01-01T00:00:00Z")
    day = datetime(2026, 10, 20, tzinfo=UTC)
    _run(cloud, a, "gpu.h100", day, day + timedelta(hours=12), node_id=node["id"])  # 12 GPU-h
    _run(cloud, b, "gpu.h100x8", day, day + timedelta(hours=3), node_id=node["id"])  # 24 GPU-h
    r = cloud.api("GET", "/chargeback?period=2026-10-20")
    assert r.status_code == 200, r.text
    pools = {p["pool"]: p for p in r.json()["pools"]}
    p = pools["h100-pool"]
    assert p["unit"] == "gpu_seconds" and p["capacity_units"] == 4 * 86400
    assert p["cost_micros"] == 192_000_000
    shares = {x["workspace"]: x["amount_micros"] for x in p["shares"]}
    assert shares == {"default": 24_000_000, "team": 48_000_000, "(idle)": 120_000_000}
    assert sum(shares.values()) == p["cost_micros"]
    tok = cloud.new_workspace("viewer-ws", role="admin")
    assert cloud.api("GET", "/chargeback", token=tok).status_code == 403
    # A node that joined at noon adds no idle capacity before it joined: capacity is the
    # 12 hours it was there, so the 36 GPU-hours used leave 12 idle of 48.
    _registered_at(cloud, node["id"], day + timedelta(hours=12))
    p = cloud.api("GET", "/chargeback?period=2026-10-20").json()["pools"][0]
    assert p["capacity_units"] == 4 * 43200
    shares = {x["workspace"]: x["amount_micros"] for x in p["shares"]}
    assert shares == {"default": 48_000_000, "team": 96_000_000, "(idle)": 48_000_000}


def _registered_at(cloud: Cloud, node_id: str, at: datetime) -> None:
    with cloud.app.state.db.session() as s:
        n = s.get(Node, node_id)
        assert n is not None
        n.created_at = at
        s.commit()


def test_an_invoice_line_is_one_workload_and_meter_not_one_per_worker_and_attempt(
        cloud: Cloud) -> None:
    """A job of two workers that fails once and is retried ran four worker processes:
    its invoice shows one line "job flaky cpu_seconds" (the job's id, the sum of the
    four workers' records), in the JSON and the CSV, and the total still equals the
    records it covers to the micro-dollar."""
    from neocloud.server.db.tables import Job
    from tests.server.workload_helpers import get, reconcile_workloads

    ws = _ws_id(cloud)
    cloud.add_fake_node("n1")
    r = cloud.api("POST", "/jobs", json={"name": "flaky", "command": ["train"], "workers": 2,
                                         "max_retries": 1, "shape": "cpu.small"})
    assert r.status_code == 201, r.text
    reconcile_workloads(cloud)
    for _ in range(2):  # each attempt: rank 1 fails, rank 0 is stopped
        time.sleep(0.05)  # some running time to bill
        job = get(cloud, "/jobs/flaky")
        specs = sorted((sp for sp in cloud.fake.started
                        if sp.env.get("NEOCLOUD_JOB") == "flaky"
                        and sp.env.get("NEOCLOUD_JOB_ATTEMPT") == str(job["attempt"])),
                       key=lambda sp: int(sp.env["RANK"]))
        cloud.fake.crash(specs[1].workload_id, exit_code=3)
        reconcile_workloads(cloud, 3)
    assert get(cloud, "/jobs/flaky")["status"] == "failed"
    with cloud.app.state.db.session() as s:
        job_id = s.scalars(select(Job.id).where(Job.name == "flaky")).one()
        workers = set(s.scalars(select(UsageRecord.object_id).where(UsageRecord.name == "flaky")))
    assert len(workers) == 4  # metered per worker process, as before
    inv = cloud.api("GET", "/invoices/current").json()
    lines = [ln for ln in inv["lines"] if ln["name"] == "flaky"]
    assert [(ln["kind"], ln["meter"]) for ln in lines] == [("job", "cpu_seconds")]
    (line,) = lines
    assert line["object_id"] == job_id
    with cloud.app.state.db.session() as s:
        recs = list(s.scalars(select(UsageRecord).where(UsageRecord.name == "flaky")))
    assert line["records"] == len(recs)
    assert line["amount_micros"] == sum(r.amount_micros for r in recs)
    assert abs(line["quantity"] - sum(r.quantity for r in recs)) < 1e-9
    month = inv["period"]
    assert inv["total_micros"] == _records_sum(cloud, ws, UsageRecord.bill_month, month)
    csv_rows = [row for row in cloud.api("GET", "/invoices/current?format=csv").text
                .splitlines() if ",flaky," in row]
    assert len(csv_rows) == 1

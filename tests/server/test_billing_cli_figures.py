"""What each billing figure is, said where it is printed: ``neocloud usage`` (a live
estimate: records plus running time not yet recorded), ``neocloud invoice`` (the records
of the period: what is billed) and the console's bill page; and ``neocloud shape ls``
printing the price that is billed, as ``neocloud price ls`` does (both databases)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from neocloud.server.db.tables import Replica, Shape, Workspace
from neocloud.server.metering.records import record_running
from neocloud.server.services import usage
from tests.server.helpers import Cloud, set_past_price

#: The keys of ``neocloud usage --json`` before the running-time fields: all kept.
BILL_KEYS = {"workspace", "period_start", "period_end", "lines", "replica_seconds",
             "total_micros", "total_usd"}


def _running_replica(cli, hours_ago: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    """One ready replica of deployment ``u`` (gpu.h100 at $36/h), started ``hours_ago``
    and not metered since."""
    assert cli("node", "add", "n1", "--cpu-milli", "64000", "--memory-mib", "512000",
               "--gpu", "H100:8:81559", "--backend", "fake").exit_code == 0
    set_past_price(cli.app, kind="shape", target="gpu.h100", per_hour_micros=36_000_000,
                   effective_at="2026-01-01T00:00:00Z")
    r = cli("deploy", "u", "--service", "chat", "--shape", "gpu.h100", "--no-wait")
    assert r.exit_code == 0, r.output
    for _ in range(2):
        cli.app.state.reconcilers.deployments.run_once()
    with cli.app.state.db.session() as s:
        (rep,) = s.scalars(select(Replica)).all()
        rep.started_at = datetime.now(UTC) - timedelta(hours=hours_ago)
        rep.metered_until = None


def test_usage_and_draft_invoice_say_what_running_time_is_not_recorded(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    _running_replica(cli)
    out = cli("usage").output
    # Nothing is recorded yet: the whole total is the running replica's hour.
    total = next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("TOTAL"))
    assert total.startswith("$36.00"), out
    assert (f"Includes {total} for 1 running workload (replicas, job workers, pods) not yet "
            "recorded; the invoice adds it when it is recorded.") in out, out
    assert "what is billed is each period's invoice" in out
    bill = json.loads(cli("usage", "--json").output)
    assert BILL_KEYS <= set(bill)
    assert bill["running_workloads"] == 1
    assert bill["unrecorded_micros"] == bill["total_micros"] > 36_000_000

    inv = cli("invoice").output
    assert "Draft: the usage recorded in" in inv, inv
    assert re.search(r"Not in it yet: \$36\.\d+ for 1 running workload \(replicas, job "
                     r"workers, pods\) not yet recorded; it is added when it is recorded",
                     inv), inv
    inv_json = json.loads(cli("invoice", "--json").output)
    assert inv_json["total_micros"] == 0 and "running_workloads" not in inv_json

    # Once the replica's time is recorded, the invoice holds it and usage says nothing is
    # left to record (for the time up to the record).
    with cli.app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
        (rep,) = s.scalars(select(Replica)).all()
        now = datetime.now(UTC)
        record_running(s, workspace_id=ws, kind="replica", object_id=rep.id, name="u",
                       shape=s.get(Shape, "gpu.h100"), start=rep.started_at, end=now,
                       written_at=now)
        rep.metered_until = now
        left = usage.unrecorded(s, workspace_id=ws, now=now)
        assert (left.workloads, left.micros) == (1, 0)
        later = usage.unrecorded(s, workspace_id=ws, now=now + timedelta(seconds=100))
        assert abs(later.micros - 1_000_000) <= 1  # 100 s at $36/h (a midnight: 2 pieces)
    bill = json.loads(cli("usage", "--json").output)
    months = {f"{t:%Y-%m}" for t in (now, now - timedelta(hours=1))}
    invoiced = sum(json.loads(cli("invoice", "--period", m, "--json").output)["total_micros"]
                   for m in months)
    assert bill["total_micros"] == invoiced + bill["unrecorded_micros"] > invoiced > 0


def test_usage_with_nothing_running_and_closed_invoice(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    with cli.app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
        start = datetime(2026, 10, 3, 10, tzinfo=UTC)
        record_running(s, workspace_id=ws, kind="replica", object_id="a" * 32, name="a",
                       shape=s.get(Shape, "cpu.small"), start=start,
                       end=start + timedelta(hours=1), written_at=start + timedelta(hours=1))
    out = cli("usage").output
    assert "running workload" not in out and "A live estimate over every period" in out
    bill = json.loads(cli("usage", "--json").output)
    assert (bill["running_workloads"], bill["unrecorded_micros"]) == (0, 0)
    inv = cli("invoice", "--period", "2026-10").output
    assert "Closed: the bill of 2026-10, final" in inv and "Not in it yet" not in inv


def test_shape_ls_prints_the_price_in_force_like_price_ls(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    set_past_price(cli.app, kind="shape", target="gpu.h100", per_hour_micros=30_000_000,
                   effective_at="2026-01-01T00:00:00Z")
    set_past_price(cli.app, kind="shape", target="gpu.h100", per_hour_micros=36_500_000,
                   effective_at="2026-02-01T00:00:00Z")
    # A version not yet in force changes nothing today.
    assert cli("price", "set", "shape", "cpu.small", "--per-hour", "9",
               "--effective", "2099-01-01T00:00:00").exit_code == 0
    out = cli("shape", "ls").output
    prices = {ln.split()[0]: ln.split()[-1] for ln in out.splitlines()[1:]
              if ln.strip() and not ln.startswith("*")}
    assert prices["gpu.h100"] == "$36.50*", out
    assert prices["cpu.small"] == "$0.04" and prices["gpu.a10"] == "$1.10"
    assert ("* billed at the price version in force, not the shape's own list price "
            "(gpu.h100 $2.50)") in out
    listed = cli("price", "ls", "--kind", "shape").output
    assert "$36.50/h" in listed and "$0.04/h" in listed
    # JSON is unchanged: each shape's own fields, its list price included.
    shapes = {s["name"]: s for s in json.loads(cli("shape", "ls", "--json").output)}
    assert shapes["gpu.h100"]["price_per_hour_usd"] == 2.5


def test_console_bill_says_what_the_draft_holds_and_what_it_does_not_yet(cloud: Cloud) -> None:
    set_past_price(cloud.app, kind="shape", target="gpu.h100", per_hour_micros=36_000_000,
                   effective_at="2026-01-01T00:00:00Z")
    cloud.add_fake_node("gpu-1", gpus=[{"type": "H100", "count": 8, "memory_mib": 81559}])
    assert cloud.api("POST", "/deployments", json={
        "name": "u", "service": "chat", "shape": "gpu.h100"}).status_code == 201
    cloud.reconcile(2)
    with cloud.app.state.db.session() as s:
        (rep,) = s.scalars(select(Replica)).all()
        rep.started_at, rep.metered_until = datetime.now(UTC) - timedelta(hours=1), None
    r = cloud.client.post("/ui/login", data={"token": cloud.token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = cloud.client.get("/ui/billing").text
    note = page.split('<p id="invoice-note">')[1].split("</p>")[0]
    assert note.startswith("Draft: the usage recorded in "), note
    assert re.search(r"Not in it yet: \$36\.\d+ for 1 running workload \(replicas, job "
                     r"workers, pods\) not yet recorded; it is added when it is recorded\.$",
                     note), note
    assert 'id="invoice-total">$0.000000<' in page

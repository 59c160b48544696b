"""The billing commands against a real control plane on loopback: ``neocloud price``,
``neocloud invoice``, ``neocloud budget``, ``neocloud chargeback``."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from neocloud.server.db.tables import Shape, Workspace
from neocloud.server.metering.records import record_running
from tests.server.helpers import set_past_price


def test_price_invoice_budget_commands(cli) -> None:  # type: ignore[no-untyped-def]
    # in force over the usage of 2026-10 below (the API refuses a time in the past)
    set_past_price(cli.app, kind="shape", target="gpu.h100", per_hour_micros=3_250_000,
                   effective_at="2026-01-01T00:00:00Z")
    r = cli("price", "set", "shape", "gpu.h100", "--per-hour", "2", "--effective",
            "2026-01-01T00:00:00")
    assert r.exit_code == 1 and "effective_at" in r.output and "in the past" in r.output
    r = cli("price", "set", "model", "chat", "--input-per-m", "0.15", "--output-per-m", "0.6")
    assert r.exit_code == 0, r.output
    r = cli("price", "ls")
    assert "$3.25/h" in r.output and "in $0.15/M, out $0.60/M" in r.output
    r = cli("price", "set", "shape", "gpu.h100", "--per-hour", "1.0000001")
    assert r.exit_code == 2 and "at most 6 decimals" in r.output
    r = cli("price", "set", "shape", "nope", "--per-hour", "1")
    assert r.exit_code == 1 and "shape 'nope' does not exist" in r.output
    assert "Traceback" not in r.output
    app = cli.app
    with app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
        start = datetime(2026, 10, 3, 10, tzinfo=UTC)
        record_running(s, workspace_id=ws, kind="replica", object_id="a" * 32, name="llm",
                       shape=s.get(Shape, "gpu.h100"), start=start,
                       end=start + timedelta(hours=2), written_at=start + timedelta(hours=2))
        # a few seconds: printed as seconds, not as "0.0000" GPU-hours
        record_running(s, workspace_id=ws, kind="replica", object_id="b" * 32, name="tiny",
                       shape=s.get(Shape, "gpu.h100"), start=start,
                       end=start + timedelta(seconds=5), written_at=start + timedelta(hours=2))
    r = cli("invoice", "--period", "2026-10")
    assert r.exit_code == 0, r.output
    assert "gpu_seconds H100" in r.output and "2 GPU-hours" in r.output
    assert "5 GPU-seconds" in r.output and "0.0000" not in r.output
    assert "$6.50" in r.output and "closed" in r.output
    r = cli("invoice", "--period", "2026-10", "--json")
    inv = json.loads(r.output)
    assert inv["total_micros"] == 6_504_514 and inv["status"] == "closed"
    r = cli("invoice", "--period", "2026-10", "--csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert rows[-1]["kind"] == "TOTAL" and rows[-1]["amount_micros"] == "6504514"
    r = cli("invoice", "--period", "october")
    assert r.exit_code == 1 and "neither YYYY-MM nor YYYY-MM-DD" in r.output
    r = cli("budget", "set", "250", "--hard-stop", "--alert", "50", "--alert", "90")
    assert r.exit_code == 0, r.output
    r = cli("budget", "show", "--json")
    b = json.loads(r.output)
    assert b["monthly_micros"] == 250_000_000 and b["thresholds"] == [50, 90] and b["hard_stop"]
    r = cli("budget", "set", "10", "--stop-running")
    assert r.exit_code == 2 and "needs --hard-stop" in r.output
    r = cli("chargeback", "--period", "2026-10")
    assert r.exit_code == 0, r.output
    r = cli("budget", "rm")
    assert r.exit_code == 0
    r = cli("budget")
    assert r.exit_code == 1 and "no budget" in r.output

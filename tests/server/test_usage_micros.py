"""The bill (``GET /usage``, ``neocloud usage``) in integer micro-dollars: records and the
open running stretch summed as integers, and the bill's total equal to the invoices of the
same span to the micro-dollar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from neocloud.server.db.tables import Replica, Shape, UsageRecord, Volume, Workspace
from neocloud.server.metering.records import record_running
from neocloud.server.metering.storage import meter_storage
from neocloud.server.metering.tokens import write_tokens
from neocloud.server.services import usage
from tests.server.helpers import Cloud, set_past_price
from tests.server.test_billing import _deploy, _price, _req, _run, _ws_id

H100 = [{"type": "H100", "count": 8, "memory_mib": 81559}]


def _bill(cloud: Cloud) -> dict:
    r = cloud.api("GET", "/usage")
    assert r.status_code == 200, r.text
    return r.json()


def test_bill_sums_integer_micros_not_floats(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    _price(cloud, kind="shape", target="cpu.small", per_hour_micros=100_000,
           effective_at="2026-01-01T00:00:00Z")
    t0 = datetime(2026, 10, 5, 8, tzinfo=UTC)
    # $0.10 then $0.20: as floats 0.1 + 0.2 is 0.30000000000000004, not 0.3.
    _run(cloud, ws, "cpu.small", t0, t0 + timedelta(hours=1))
    _run(cloud, ws, "cpu.small", t0 + timedelta(hours=3), t0 + timedelta(hours=5))
    bill = _bill(cloud)
    (line,) = bill["lines"]
    assert line["amount_micros"] == 300_000 and line["cost_usd"] == 0.3
    assert bill["total_micros"] == 300_000 and bill["total_usd"] == 0.3


def test_bill_total_equals_the_invoices_of_its_span(cloud: Cloud) -> None:
    ws = _ws_id(cloud)
    _price(cloud, kind="shape", target="cpu.small", per_hour_micros=1_234_567,
           effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=3_333_333,
           effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=2_777_777,
           effective_at="2026-10-20T13:13:13Z")
    _price(cloud, kind="storage", target="*", per_gib_hour_micros=137,
           effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="model", target="*", input_per_m_micros=333_333,
           output_per_m_micros=999_999, effective_at="2026-01-01T00:00:00Z")
    dep = _deploy(cloud, "m")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    for i in range(40):
        a = start + timedelta(seconds=70_003.7 * i)
        # Spans cross midnights, the price change and (the last ones) the month's end.
        _run(cloud, ws, "gpu.h100" if i % 3 else "cpu.small", a,
             a + timedelta(seconds=50_000.123 + 911 * i), name=f"w{i % 5}")
    with cloud.app.state.db.session() as s:
        write_tokens(s, [_req(ws, dep, start + timedelta(hours=7 * i), 1_000 + 17 * i,
                              333 + i) for i in range(50)], datetime(2026, 10, 30, tzinfo=UTC))
        s.add(Volume(workspace_id=ws, name="data", size_bytes=5 * 2**30 + 777,
                     created_at=datetime(2026, 10, 3, 7, tzinfo=UTC)))
    with cloud.app.state.db.session() as s:
        assert meter_storage(s, datetime(2026, 11, 2, 7, 30, tzinfo=UTC), period_s=60) > 0
        months = sorted({m for m in s.scalars(select(UsageRecord.bill_month)) if m})
        days = sorted({d for d in s.scalars(select(UsageRecord.bill_day)) if d})
    assert months == ["2026-10", "2026-11"]
    bill = _bill(cloud)
    invoices = [cloud.api("GET", f"/invoices/{m}").json()["total_micros"] for m in months]
    assert bill["total_micros"] == sum(invoices) > 0
    assert bill["total_micros"] == sum(
        cloud.api("GET", f"/invoices/{d}").json()["total_micros"] for d in days)
    assert bill["total_micros"] == sum(ln["amount_micros"] for ln in bill["lines"])
    assert bill["total_usd"] == bill["total_micros"] / 1_000_000
    for ln in bill["lines"]:
        assert ln["cost_usd"] == ln["amount_micros"] / 1_000_000


def test_open_stretch_is_priced_like_its_records(cloud: Cloud) -> None:
    """The estimate of unrecorded running time is what the records of the same span
    will say: cut at midnight and price changes, each piece rounded half up."""
    ws = _ws_id(cloud)
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=1_000_001,
           effective_at="2026-01-01T00:00:00Z")
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=7_654_321,
           effective_at="2026-10-14T01:02:03.5Z")
    a = datetime(2026, 10, 13, 22, 59, 59, 999_999, tzinfo=UTC)
    b = a + timedelta(hours=5, microseconds=1)
    recs = _run(cloud, ws, "gpu.h100", a, b)
    assert len(recs) == 3  # before midnight, midnight to the change, after the change
    with cloud.app.state.db.session() as s:
        assert usage.open_micros(s, s.get(Shape, "gpu.h100"), a, b) == \
            sum(r.amount_micros for r in recs)
        assert usage.open_micros(s, s.get(Shape, "gpu.h100"), b, a) == 0
        assert usage.open_micros(s, None, a, b) == 0


def test_running_replica_is_billed_at_its_price_list_price(cloud: Cloud) -> None:
    # The list price of gpu.h100 is $2.50/h; the price list says $36/h (1 µ$ per
    # 100 µs): the open stretch must use the price in force, as its records will.
    _price(cloud, kind="shape", target="gpu.h100", per_hour_micros=36_000_000,
           effective_at="2026-01-01T00:00:00Z")
    cloud.add_fake_node("gpu-1", gpus=H100)
    cloud.api("POST", "/deployments", json={"name": "u", "service": "chat",
                                             "shape": "gpu.h100"})
    cloud.reconcile(2)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with cloud.app.state.db.session() as s:
        (rep,) = s.scalars(select(Replica)).all()
        rep.started_at, rep.metered_until = hour_ago, None
    bill = _bill(cloud)
    line = next(ln for ln in bill["lines"] if ln["name"] == "u")
    elapsed = line["seconds"]
    assert 3600 <= elapsed < 3660
    # Per-second billing at $36/h is 10,000 µ$ a second, up to half a µ$ of rounding.
    assert abs(line["amount_micros"] - elapsed * 10_000) <= 1
    assert bill["total_micros"] == line["amount_micros"]


def test_record_without_a_meter_counts_its_usd_amount(cloud: Cloud) -> None:
    """A record written before amounts were stored (no meter, ``amount_micros`` 0) still
    counts: its ``cost_usd`` rounded to a micro-dollar."""
    ws = _ws_id(cloud)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    with cloud.app.state.db.session() as s:
        s.add(UsageRecord(workspace_id=ws, kind="replica", object_id="o" * 32, name="old",
                          shape="cpu.small", period_start=t0,
                          period_end=t0 + timedelta(hours=1), seconds=3600.0,
                          cost_usd=0.0123456789))
    bill = _bill(cloud)
    assert bill["lines"][0]["amount_micros"] == 12_346
    assert bill["total_micros"] == 12_346


def test_cli_usage_prints_the_micro_dollars_the_invoice_prints(cli) -> None:  # type: ignore[no-untyped-def]
    set_past_price(cli.app, kind="shape", target="gpu.h100", per_hour_micros=1_234_567,
                   effective_at="2026-01-01T00:00:00Z")
    with cli.app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
        start = datetime(2026, 10, 3, 10, tzinfo=UTC)
        for name, hours in (("a", 1), ("b", 2)):
            record_running(s, workspace_id=ws, kind="replica", object_id=name * 32, name=name,
                           shape=s.get(Shape, "gpu.h100"), start=start,
                           end=start + timedelta(hours=hours),
                           written_at=start + timedelta(hours=hours))
    r = cli("usage")
    assert r.exit_code == 0, r.output
    rows = {ln.split()[1] if ln.startswith("replica") else ln.split()[0]: ln.split()
            for ln in r.output.splitlines()[2:] if ln.strip()}
    assert rows["a"][-1] == "$1.234567" and rows["b"][-1] == "$2.469134"
    assert rows["TOTAL"] == ["TOTAL", "$3.703701"]
    assert "$3.703701" in cli("invoice", "--period", "2026-10").output

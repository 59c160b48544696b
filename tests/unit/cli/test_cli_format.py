"""Table formatting of ``neocloud shape ls`` and ``neocloud usage``."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from neocloud.cli.inventory import billed_prices, override_note, shape_table
from neocloud.cli.usage import COLUMNS, bill_row
from neocloud.models import ShapeOut
from neocloud.models.billing import PriceKind, PriceOut
from neocloud.models.usage import BillLine


def _shape(name: str, price: float) -> ShapeOut:
    return ShapeOut(name=name, cpu_milli=2000, memory_mib=4096, gpu_count=0, gpu_milli=0,
                    gpu_type=None, price_per_hour_usd=price)


def test_shape_prices_have_at_least_two_decimals() -> None:
    console = Console(width=200, record=True)
    console.print(shape_table([_shape("a", 1.1), _shape("b", 20.0), _shape("c", 0.0125),
                               _shape("d", 1234.5)]))
    prices = {line.split()[0]: line.split()[-1]
              for line in console.export_text().splitlines()[1:] if line.strip()}
    assert prices == {"a": "$1.10", "b": "$20.00", "c": "$0.0125", "d": "$1234.50"}


def _line(kind: str, seconds: float, gpu_seconds: float, **kw: int) -> BillLine:
    return BillLine(kind=kind, name="x", shape=None, seconds=seconds, gpu_seconds=gpu_seconds,
                    amount_micros=1500, **kw)


def test_usage_row_prints_dash_where_column_does_not_apply() -> None:
    time, gpu_hours = COLUMNS.index("TIME"), COLUMNS.index("GPU-HOURS")
    tokens = bill_row(_line("tokens", 11.3, 0.0, requests=3, prompt_tokens=10,
                            completion_tokens=5))
    assert (tokens[time], tokens[gpu_hours]) == ("-", "-")
    assert tokens[COLUMNS.index("TOKENS")] == 15
    cpu = bill_row(_line("replica", 120.0, 0.0))
    assert (cpu[time], cpu[gpu_hours]) == ("2m00s", "-")
    gpu = bill_row(_line("job", 3600.0, 1800.0))
    assert (gpu[time], gpu[gpu_hours], gpu[-1]) == ("1h00m", "0.5000", "$0.0015")


def test_usage_row_shows_failed_requests_apart_from_served_ones() -> None:
    row = bill_row(_line("tokens", 1.0, 0.0, requests=5, failed_requests=2,
                         prompt_tokens=10))
    assert (row[COLUMNS.index("REQUESTS")], row[COLUMNS.index("FAILED")]) == (5, 2)
    assert len(row) == len(COLUMNS)
    none_failed = bill_row(_line("tokens", 1.0, 0.0, requests=5))
    assert none_failed[COLUMNS.index("FAILED")] == "-"


def _version(target: str, micros: int, at: datetime, kind: PriceKind = PriceKind.shape
             ) -> PriceOut:
    return PriceOut(id=1, kind=kind, target=target, per_hour_micros=micros,
                    input_per_m_micros=0, output_per_m_micros=0, per_gib_hour_micros=0,
                    effective_at=at, created_at=at)


def test_shape_price_is_the_version_in_force_marked() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    shapes = [_shape("a", 1.1), _shape("b", 20.0), _shape("c", 0.5)]
    versions = [
        _version("a", 3_000_000, datetime(2026, 1, 1, tzinfo=UTC)),
        _version("a", 3_250_000, datetime(2026, 5, 1)),  # naive: UTC; the latest in force
        _version("a", 9_000_000, datetime(2026, 7, 1, tzinfo=UTC)),  # not yet in force
        _version("b", 1_000_000, datetime(2026, 6, 2, tzinfo=UTC)),  # not yet in force
        _version("c", 7_000_000, datetime(2026, 1, 1, tzinfo=UTC), PriceKind.pool),
        _version("gone", 1, datetime(2026, 1, 1, tzinfo=UTC)),  # no such shape listed
    ]
    in_force = billed_prices(shapes, versions, now)
    assert {k: v.per_hour_micros for k, v in in_force.items()} == {"a": 3_250_000}
    console = Console(width=200, record=True)
    console.print(shape_table(shapes, in_force))
    prices = {line.split()[0]: line.split()[-1]
              for line in console.export_text().splitlines()[1:] if line.strip()}
    assert prices == {"a": "$3.25*", "b": "$20.00", "c": "$0.50"}
    assert override_note(shapes, in_force) == (
        "* billed at the price version in force, not the shape's own list price (a $1.10); "
        "`neocloud price ls` lists every version.")
    assert override_note(shapes, {}) is None


def test_job_status_counts_retries_used_of_those_allowed(monkeypatch) -> None:
    """A job retried once of one allowed, failed twice: the line read "failures 2/1
    retries" (more failures than retries); now "retries 1/1 (2 failed)"."""
    from neocloud.cli import jobs, output
    from neocloud.models.jobs import JobOut

    at = datetime(2026, 12, 1, tzinfo=UTC)
    job = JobOut.model_validate({
        "id": "j" * 32, "name": "failer", "command": ["false"], "shape": "cpu.small",
        "workers": 1, "env": {}, "secrets": {}, "volumes": [], "max_retries": 1,
        "attempt": 2, "failures": 2, "time_limit_s": None, "priority": 0,
        "preemptible": False, "status": "failed", "reason": None, "exit_code": 1,
        "message": None, "created_at": at, "updated_at": at, "started_at": at,
        "finished_at": at})
    console = Console(width=200, record=True)
    monkeypatch.setattr(output, "out", console)
    jobs._print_job(job)
    text = console.export_text()
    assert "retries 1/1 (2 failed)" in text and "failures 2/1" not in text, text

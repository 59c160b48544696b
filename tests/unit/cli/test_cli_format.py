"""Table formatting of ``neocloud shape ls`` and ``neocloud usage``."""

from __future__ import annotations

from rich.console import Console

from neocloud.cli.inventory import shape_table
from neocloud.cli.usage import COLUMNS, bill_row
from neocloud.models import ShapeOut
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

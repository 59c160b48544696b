"""Pure parts of billing: micro-dollar arithmetic, periods, the budget check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neocloud.errors import InvalidRequest
from neocloud.server.metering import money, periods
from neocloud.server.services.budgets import check_budget


def test_money_is_integer_and_rounds_half_up() -> None:
    assert money.running_micros(2_500_000, 3600) == 2_500_000
    assert money.running_micros(2_500_000, 1) == 694          # 694.44 -> 694
    assert money.running_micros(3_600_000, 0.0005) == 1       # 0.5 µ$ rounds up
    assert money.tokens_micros(150_000, 1_000_000) == 150_000
    assert money.tokens_micros(150_000, 3) == 0               # 0.45 µ$
    assert money.storage_micros(100, money.GIB, 3600) == 100
    assert money.micros_of_usd(0.04) == 40_000
    assert isinstance(money.running_micros(1, 1.5), int)


@pytest.mark.parametrize("weights", [[1, 1, 1], [0.3, 0.3, 0.4], [5, 0, 0], [0, 0, 0], [1e-9, 1]])
def test_split_even_parts_sum_to_the_total(weights: list[float]) -> None:
    for total in (0, 1, 2, 100, 999_999_999):
        parts = money.split_even(total, weights)
        assert sum(parts) == total and all(p >= 0 for p in parts)


def test_periods() -> None:
    kind, start, end = periods.parse_period("2026-12")
    assert (kind.value, start.month, end.year, end.month) == ("month", 12, 2027, 1)
    kind, start, end = periods.parse_period("2026-02-28")
    assert kind.value == "day" and end == datetime(2026, 3, 1, tzinfo=UTC)
    for bad in ("2026-02-30", "2026-13", "26-01", "now"):
        with pytest.raises(InvalidRequest):
            periods.parse_period(bad)
    a = datetime(2026, 10, 31, 22, tzinfo=UTC)
    assert len(periods.split_days(a, a + timedelta(hours=30))) == 3
    # Written 10 minutes after the month ended: still October; 2 hours after: November.
    rec = datetime(2026, 10, 31, 23, 50, tzinfo=UTC)
    assert periods.billed_periods(rec, datetime(2026, 11, 1, 0, 10, tzinfo=UTC)) == \
        ("2026-10-31", "2026-10")
    assert periods.billed_periods(rec, datetime(2026, 11, 1, 2, tzinfo=UTC)) == \
        ("2026-11-01", "2026-11")


def test_check_budget() -> None:
    c = check_budget(monthly_micros=1_000, thresholds=[50, 80, 100], hard_stop=True,
                     spent_micros=799)
    assert c.crossed == (50,) and not c.exceeded and not c.refuse
    c = check_budget(monthly_micros=1_000, thresholds=[50, 80, 100], hard_stop=True,
                     spent_micros=1_000, announced=frozenset({50}))
    assert c.crossed == (50, 80, 100) and c.new_alerts == (80, 100) and c.refuse
    c = check_budget(monthly_micros=1_000, thresholds=[100], hard_stop=False,
                     spent_micros=5_000)
    assert c.exceeded and not c.refuse and c.percent == 500.0
    c = check_budget(monthly_micros=0, thresholds=[], hard_stop=True, spent_micros=0)
    assert c.refuse  # a zero budget refuses at once


def test_refusal_amounts_keep_their_micro_dollars() -> None:
    """A budget of 0.0001 USD read "0.00 USD" in the 402 message, beside a budget status
    of 682 %."""
    from neocloud.server.services.budgets import usd

    assert usd(100) == "0.0001" and usd(682) == "0.000682"
    assert usd(10_000_000) == "10.00" and usd(6_667_610) == "6.66761" and usd(0) == "0.00"
    assert usd(-1_500) == "-0.0015"

"""A price version cannot take effect in the past.

Found: ``neocloud price set model chat ... --effective 2026-12-01T00:00:00`` on Dec 2 said
"in force from 2026-12-01", yet the usage recorded since then kept the price it had been
billed at (usage is priced when recorded, never again): the price list and the bill no
longer agreed. An effective time more than ``CLOCK_SKEW_S`` before now is a 400 naming
``effective_at``; now, a moment ago (clock skew) and the future are taken.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neocloud.errors import InvalidRequest
from neocloud.models.billing import PriceKind, PriceSet
from neocloud.server.services import prices
from tests.server.helpers import Cloud
from tests.server.workload_helpers import error_of


def _set(cloud: Cloud, at: datetime | None, per_hour_micros: int = 1_000_000) -> object:
    body: dict[str, object] = {"kind": "shape", "target": "cpu.small",
                               "per_hour_micros": per_hour_micros}
    if at is not None:
        body["effective_at"] = at.isoformat()
    return cloud.api("POST", "/prices", json=body)


def test_an_effective_time_in_the_past_is_a_400_naming_it(cloud: Cloud) -> None:
    r = _set(cloud, datetime.now(UTC) - timedelta(days=1))
    assert r.status_code == 400, r.text  # type: ignore[attr-defined]
    err = error_of(r)
    assert err["param"] == "effective_at" and "in the past" in err["message"], err
    assert cloud.api("GET", "/prices").json()["data"] == []


def test_now_a_moment_ago_and_the_future_are_taken(cloud: Cloud) -> None:
    now = datetime.now(UTC)
    for n, at in enumerate((None, now - timedelta(seconds=30), now + timedelta(days=30))):
        r = _set(cloud, at, per_hour_micros=1_000_000 + n)
        assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    assert len(cloud.api("GET", "/prices").json()["data"]) == 3


def test_the_allowance_is_clock_skew_s(cloud: Cloud) -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    edge = now - timedelta(seconds=prices.CLOCK_SKEW_S)
    with cloud.app.state.db.session() as s:
        spec = PriceSet(kind=PriceKind.shape, target="cpu.small", per_hour_micros=5,
                        effective_at=edge)
        assert prices.set_price(s, spec=spec, created_by="t", now=now).effective_at == edge
        late = spec.model_copy(update={"effective_at": edge - timedelta(seconds=1)})
        with pytest.raises(InvalidRequest) as e:
            prices.set_price(s, spec=late, created_by="t", now=now)
        assert e.value.param == "effective_at"
        naive = spec.model_copy(update={"effective_at": datetime(2026, 12, 1)})  # UTC
        with pytest.raises(InvalidRequest):
            prices.set_price(s, spec=naive, created_by="t", now=now)


def test_the_cli_says_why(cli) -> None:  # type: ignore[no-untyped-def]
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    r = cli("price", "set", "model", "chat", "--input-per-m", "0.15", "--output-per-m", "0.6",
            "--effective", yesterday)
    assert r.exit_code == 1 and "in the past" in r.output and "Traceback" not in r.output

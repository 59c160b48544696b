"""``client.usage.bill()`` reads the bill of a server older than the micro-dollar fields
(only ``cost_usd`` and ``total_usd``), and still refuses an answer that is no bill."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from neocloud import Client
from neocloud.errors import UpstreamError

LINE = {"kind": "replica", "name": "minilm", "shape": "cpu.small", "seconds": 90.0,
        "gpu_seconds": 0.0, "prompt_tokens": 12, "completion_tokens": 0, "requests": 3}
BILL = {"workspace": "default", "period_start": None,
        "period_end": "2026-12-01T10:00:00Z", "replica_seconds": 90.0}


def _client(body: dict[str, Any]) -> Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/usage"
        return httpx.Response(200, json=body)

    return Client("http://cloud.test", "nc_test", transport=httpx.MockTransport(answer))


def test_a_bill_in_usd_only_is_read_with_micros_derived() -> None:
    old = {**BILL, "total_usd": 0.001001,
           "lines": [{**LINE, "cost_usd": 0.000001}, {**LINE, "name": "b", "cost_usd": 0.001}]}
    bill = _client(old).usage.bill()
    assert [ln.amount_micros for ln in bill.lines] == [1, 1000]
    assert bill.total_micros == 1001 and bill.total_usd == pytest.approx(0.001001)
    assert bill.lines[1].cost_usd == pytest.approx(0.001)


def test_a_current_bill_is_taken_as_sent() -> None:
    new = {**BILL, "total_micros": 7, "lines": [{**LINE, "amount_micros": 7}]}
    bill = _client(new).usage.bill()
    assert bill.total_micros == 7 and bill.lines[0].amount_micros == 7


def test_a_line_without_any_amount_is_an_unexpected_answer() -> None:
    with pytest.raises(UpstreamError, match="unexpected answer to GET /api/v1/usage"):
        _client({**BILL, "lines": [LINE]}).usage.bill()

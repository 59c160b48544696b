"""The console's chart y axes in Chromium: tick labels that fit and read in their unit.

The page is served by Playwright's routing (the static files of the console and chart
data given here), so no cloud is started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS

pytestmark = pytest.mark.slow

STATIC = Path(__file__).resolve().parents[2] / "src" / "neocloud" / "web" / "static"
ORIGIN = "http://console.test"
PAGE = """<!doctype html><html><head>
<link rel="stylesheet" href="/static/vendor/uPlot.min.css">
<link rel="stylesheet" href="/static/console.css"></head><body>
<div class="charts">
<div class="chart" data-chart="/data/latency" data-series="p50,p99"
     data-label="latency p50, p99 (ms)" id="chart-latency"></div>
<div class="chart wide" data-chart="/data/spend" data-label="spend per day this month (USD)"
     data-bars="1" data-stacked="1" id="chart-spend"></div></div>
<script src="/static/vendor/uPlot.iife.min.js"></script>
<script src="/static/console.js"></script></body></html>"""
DAY = 86_400


def _serve(route: Any, data: dict[str, Any]) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?")[0]
    if path == "/":
        route.fulfill(body=PAGE, content_type="text/html")
    elif path.startswith("/static/"):
        route.fulfill(path=str(STATIC / path.removeprefix("/static/")))
    elif path in data:
        route.fulfill(body=json.dumps(data[path]), content_type="application/json")
    else:
        route.fulfill(status=404, body="")


def _ticks(page: Any, sel: str) -> dict[str, Any]:
    """The y tick labels uPlot drew for ``sel``, the axis width and the widest label (px)."""
    return page.evaluate("""(sel) => {
        const u = document.querySelector(sel).plot, ax = u.axes[1];
        const c = document.createElement('canvas').getContext('2d');
        c.font = ax.font[0];
        return {labels: ax._values, size: ax._size,
                widest: Math.max(...ax._values.map((t) => c.measureText(t).width))};
    }""", sel)


def test_y_ticks_fit_and_are_round_in_the_axis_unit(browser: Any) -> None:
    t = [1_700_000_000 + 60 * i for i in range(10)]
    days = [1_700_000_000 + DAY * i for i in range(4)]
    data = {
        "/data/latency": {"t": t, "start": t[0], "end": t[-1], "empty": False,
                          "p50": [400 + 10 * i for i in range(10)],
                          "p99": [9000 + 400 * i for i in range(10)]},
        "/data/spend": {"t": days, "start": days[0] - DAY / 2, "end": days[-1] + DAY / 2,
                        "empty": False, "series": ["web"],
                        "values": [[0.001, 0.004, 0.0085, 0.002]]},
    }
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    try:
        page.route(f"{ORIGIN}/**", lambda route: _serve(route, data))
        page.goto(f"{ORIGIN}/")
        for sel in ("#chart-latency", "#chart-spend"):
            page.wait_for_function(f"document.querySelector('{sel}').plot"
                                   f" && document.querySelector('{sel}').plot.axes[1]._values")
        page.screenshot(path=str(ARTIFACTS / "chart-axes.png"), full_page=True)
        latency = _ticks(page, "#chart-latency")
        # p99 up to 12.6 s: ticks in seconds from 1 s, and the axis wider than its labels.
        assert latency["labels"][0] == "0 ms"
        assert latency["labels"][-1].endswith(" s") and "," not in latency["labels"][-1]
        assert latency["size"] >= latency["widest"] + 8
        spend = _ticks(page, "#chart-spend")
        # Steps of 1, 2 or 5 units of the last decimal shown: every tick exact.
        values = [float(v) for v in spend["labels"]]
        steps = {round(b - a, 9) for a, b in zip(values, values[1:], strict=False)}
        assert len(steps) == 1, spend["labels"]
        step = steps.pop()
        assert f"{step:.0e}"[0] in "125", spend["labels"]
        assert spend["size"] >= spend["widest"] + 8
    finally:
        page.close()

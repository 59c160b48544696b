"""The console in real headless Chromium against a running local cloud: login, every page
with its data, a chart that moves under load, the playground, viewers without controls,
and no other workspace's resources. Screenshots go to ``test-artifacts/browser/``."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from openai import OpenAI

from tests.browser.conftest import ARTIFACTS, ConsoleCloud

pytestmark = pytest.mark.slow

PAGES = ["deployments", "deployments/emb", "jobs", "jobs/flaky", "pods", "pods/dev", "queue",
         "nodes", "billing", "workspace", "audit"]


def _login(browser: Any, cloud: ConsoleCloud, token: str) -> Any:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.goto(f"{cloud.url}/ui/deployments")
    assert "/ui/login" in page.url  # not logged in: the login form
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/deployments")
    return page


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_login_cookie_and_logout(browser: Any, console_cloud: ConsoleCloud) -> None:
    page = _login(browser, console_cloud, console_cloud.team_admin)
    cookie = next(c for c in page.context.cookies() if c["name"] == "neocloud_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the token
    page.click("#logout")
    page.wait_for_url("**/ui/login")
    page.goto(f"{console_cloud.url}/ui/billing")
    assert "/ui/login" in page.url
    page.fill("input[name=token]", "nc_wrong_token")
    page.click("button[type=submit]")
    assert page.locator("#login-error").inner_text() == "invalid API token"
    page.context.close()


def test_every_page_renders_with_data_and_the_chart_moves_under_load(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    cloud = console_cloud
    page = _login(browser, cloud, cloud.team_admin)
    stop = threading.Event()

    def load() -> None:
        client = OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.team_admin, max_retries=0)
        while not stop.is_set():
            client.embeddings.create(model="emb", input=["the console draws this", "and this"])
            time.sleep(0.05)

    page.goto(f"{cloud.url}/ui/deployments/emb")
    page.wait_for_selector("#chart-rps .u-wrap")
    before = page.get_attribute("#chart-rps", "data-last")
    gen = threading.Thread(target=load, daemon=True)
    gen.start()
    try:
        deadline = time.monotonic() + 60
        moved = False
        while time.monotonic() < deadline and not moved:
            page.wait_for_timeout(1000)
            last = page.get_attribute("#chart-rps", "data-last")
            moved = bool(last) and last != before and float(last.split(",")[0]) > 0
        assert moved, "the request-rate chart did not update under load"
        # A few closed buckets of load, so the README's picture shows a rate, not a spike.
        page.wait_for_function("document.querySelector('#chart-rps').plot.data[1]"
                               ".filter((v) => v > 0).length >= 3", timeout=60000)
        page.wait_for_timeout(5500)  # one more refresh of every chart
        _shot(page, "deployment-under-load")
        # The README's picture: everything above the logs (which print this machine's paths).
        top = page.locator("h2", has_text="Logs").bounding_box()
        assert top is not None
        page.screenshot(path=str(ARTIFACTS / "readme-deployment.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1400, "height": top["y"] - 8})
    finally:
        stop.set()
        gen.join(10)
    assert int(page.get_attribute("#chart-latency", "data-points") or 0) >= 1
    assert page.locator("#replicas").inner_text().count("ready") >= 1
    assert "Created" in page.locator("#events").inner_text()
    page.wait_for_function("document.querySelector('#logs').textContent.length > 20")
    # The deployments list shows each deployment's request rate (the last minute's, from
    # the same history, so the load just ended still counts).
    page.goto(f"{cloud.url}/ui/deployments")
    rate = page.locator("td.rate[data-deployment='team/emb']")
    page.wait_for_function(
        "Number(document.querySelector(\"td.rate[data-deployment='team/emb']\")"
        ".textContent) > 0", timeout=30000)
    assert float(rate.inner_text()) > 0
    idle = page.locator("td.rate[data-deployment='team/trainer-llm']").inner_text()
    assert float(idle) == 0
    _shot(page, "deployments-under-load")
    expect_text = {
        "deployments": ["emb", "trainer-llm", "chatbot", "ready", "Requests/s"],
        "deployments/emb": ["Replicas", "Playground", "Logs"],
        "jobs": ["etl", "1 × cpu.small", "Attempt", "flaky", "Failed attempts",
                 "Retries allowed"],
        "jobs/flaky": ["Workers and attempts", "Worker 1", "failed", "python -c 'import os"],
        "pods": ["dev", "cpu.small", "ssh -p", "of 1 h 0 min"],
        "pods/dev": ["running", "ssh -p", "of 1 h 0 min", "Created"],
        "queue": ["Queue"],
        "nodes": ["Pool h100", "gpu-1", "H100 #7", "in use"],
        "billing": ["Invoice", "gpu_seconds H100", "trainer-llm", "Budget"],
        "workspace": ["team-admin", "team-viewer", "Quota"],
        "audit": ["Audit log"],
    }
    for path in PAGES:
        page.goto(f"{cloud.url}/ui/{path}")
        page.wait_for_load_state("networkidle")
        text = page.locator("body").inner_text()
        for want in expect_text[path]:
            assert want in text, (path, want)
        # Another workspace's resources never appear.
        assert "rival-secret-model" not in text and "rival" not in text, path
        _shot(page, "page-" + path.replace("/", "-"))
    # The budget banner: 20 min of gpu.h100x8 ($20/h) = $6.67 of $10, past 50 %.
    assert "Budget: 67 %" in page.locator("#budget-banner").inner_text()
    # A fragment refresh keeps the live region current.
    page.goto(f"{cloud.url}/ui/deployments")
    page.wait_for_function("document.querySelector('#live').dataset.updated", timeout=15000)
    page.context.close()


def test_playground_answers_through_the_gateway(browser: Any, console_cloud: ConsoleCloud) -> None:
    page = _login(browser, console_cloud, console_cloud.team_admin)
    page.goto(f"{console_cloud.url}/ui/deployments/emb")
    page.fill("#playground textarea", "GPU clouds rent accelerators by the hour")
    page.click("#playground button")
    page.wait_for_selector("#playground-answer[data-done='1']", timeout=60000)
    assert page.locator("#playground-answer").inner_text().startswith("384 dimensions: [")
    _shot(page, "playground")
    page.context.close()


def test_viewer_sees_no_mutating_control(browser: Any, console_cloud: ConsoleCloud) -> None:
    page = _login(browser, console_cloud, console_cloud.team_viewer)
    page.goto(f"{console_cloud.url}/ui/deployments/emb")
    assert page.locator("#controls").count() == 0
    assert page.locator("form[data-action]").count() == 0
    assert page.locator("button.danger").count() == 0
    status = page.evaluate("""async () => (await fetch('/ui/actions/deployments/emb/scale',
        {method: 'POST', headers: {'X-Neocloud-Console': '1',
         'Content-Type': 'application/json'}, body: '{"replicas": 0}'})).status""")
    assert status == 403
    _shot(page, "viewer-deployment")
    page.context.close()


def test_operator_sees_every_workspace_and_members_never_another(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    page = _login(browser, console_cloud, console_cloud.operator)
    text = page.locator("#deployments").inner_text()
    assert "rival-secret-model" in text and "emb" in text
    page.goto(f"{console_cloud.url}/ui/nodes")
    assert "rival/rival-secret-model" in page.locator("body").inner_text()
    _shot(page, "operator-nodes")
    page.goto(f"{console_cloud.url}/ui/deployments?ws=rival")
    assert "emb" not in page.locator("#deployments").inner_text()
    page.context.close()
    member = _login(browser, console_cloud, console_cloud.team_admin)
    for url in ("/ui/deployments/rival-secret-model?ws=rival", "/ui/billing?ws=rival",
                "/ui/data/deployments/rival-secret-model?ws=rival"):
        resp = member.goto(f"{console_cloud.url}{url}")
        assert resp.status == 404, url
    member.goto(f"{console_cloud.url}/ui/deployments?ws=rival")  # ignored for members
    assert "rival-secret-model" not in member.locator("body").inner_text()
    member.context.close()


def test_job_detail_shows_workers_attempts_exit_codes_and_logs(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    page = _login(browser, console_cloud, console_cloud.team_admin)
    page.goto(f"{console_cloud.url}/ui/jobs")
    page.click("#jobs a:text-is('flaky')")
    page.wait_for_url("**/ui/jobs/flaky?ws=team")
    assert page.locator("#job-status").inner_text() == "failed"
    assert page.locator("#job-exit").inner_text() == "3"
    assert page.locator("#job-reason").inner_text()  # why it failed
    # Both attempts (retried once), two ranks each, every worker exited with 3.
    rows = page.locator("#workers tr[data-attempt]")
    seen = {(rows.nth(i).get_attribute("data-attempt"), rows.nth(i).get_attribute("data-rank"))
            for i in range(rows.count())}
    assert seen == {("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")}
    for i in range(rows.count()):  # rank 0 exits with 3; its gang's rank 1 is stopped
        code = int(rows.nth(i).locator("td.exit").inner_text())
        status = rows.nth(i).locator(".st").inner_text()
        if rows.nth(i).get_attribute("data-rank") == "0":
            assert (code, status) == (3, "failed")
        else:
            assert code < 0 and status in ("stopped", "failed"), (code, status)
    # One log per worker (the current attempt), each with that worker's own output.
    for rank in (0, 1):
        page.wait_for_function(f"document.querySelector('#logs-{rank}').textContent"
                               ".includes('says hello')", timeout=15000)
        text = page.locator(f"#logs-{rank}").inner_text()
        assert f"worker {rank} of 2 says hello" in text
        assert f"worker {1 - rank} of 2" not in text
    _shot(page, "job-detail")
    page.goto(f"{console_cloud.url}/ui/jobs/etl")
    assert page.locator("#job-status").inner_text() == "succeeded"
    page.wait_for_function("document.querySelector('#logs-0').textContent.includes('rows done')")
    page.context.close()


def test_pod_detail_controls_for_members_and_none_for_viewers(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    cloud = console_cloud
    viewer = _login(browser, cloud, cloud.team_viewer)
    viewer.goto(f"{cloud.url}/ui/pods/dev")
    assert viewer.locator("#pod-ssh").inner_text().startswith("ssh -p ")
    assert viewer.locator("#controls").count() == 0
    assert viewer.locator("form[data-action]").count() == 0
    status = viewer.evaluate("""async () => (await fetch('/ui/actions/pods/dev/stop',
        {method: 'POST', headers: {'X-Neocloud-Console': '1',
         'Content-Type': 'application/json'}, body: '{}'})).status""")
    assert status == 403
    _shot(viewer, "viewer-pod")
    viewer.context.close()
    # The REST API refuses viewers too, and nothing was stopped.
    for verb in ("stop", "start"):
        r = cloud.api("POST", f"/pods/dev/{verb}", cloud.team_viewer)
        assert r.status_code == 403, r.text
    assert cloud.api("GET", "/pods/dev", cloud.team_admin).json()["status"] == "running"

    page = _login(browser, cloud, cloud.team_admin)
    page.goto(f"{cloud.url}/ui/pods")
    page.click("#pods a:text-is('dev')")
    page.wait_for_url("**/ui/pods/dev?ws=team")
    ssh = page.locator("#pod-ssh-command").inner_text()
    assert ssh == cloud.api("GET", "/pods/dev", cloud.team_admin).json()["ssh"]["command"]
    assert "of 1 h 0 min" in page.locator("#pod-idle").inner_text()
    # A running pod offers Stop only (and the API refuses a start, naming the state).
    assert page.locator("#stop-form").is_visible() and not page.locator("#start-form").is_visible()
    r = cloud.api("POST", "/pods/dev/start", cloud.team_admin)
    assert r.status_code == 409 and "running" in r.json()["error"]["message"], r.text
    _shot(page, "pod-detail")
    page.click("#stop-form button")
    page.wait_for_selector("#pod-result:text('done')")
    page.wait_for_function("document.querySelector('#pod-status').textContent === 'stopped'",
                           timeout=60000)
    assert cloud.api("GET", "/pods/dev", cloud.team_admin).json()["status"] == "stopped"
    assert page.locator("#pod-ssh-command").count() == 0
    # Stopped: Start only, and the stop was recorded once.
    page.wait_for_selector("#start-form", state="visible")
    assert not page.locator("#stop-form").is_visible()
    events = page.locator("#events").inner_text()
    assert events.count("Stopping") == 1, events
    _shot(page, "pod-stopped")
    page.click("#start-form button")
    page.wait_for_function("document.querySelector('#pod-status').textContent === 'running'",
                           timeout=60000)
    assert page.locator("#pod-ssh-command").inner_text().startswith("ssh -p ")
    page.context.close()


def test_chat_playground_answers_through_the_gateway(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    page = _login(browser, console_cloud, console_cloud.team_admin)
    page.goto(f"{console_cloud.url}/ui/deployments/chatbot")
    # A service of its own answers chat by default; the route can be switched.
    assert page.locator("#playground").get_attribute("data-kind") == "chat"
    assert page.locator("#playground select[name=kind]").input_value() == "chat"
    page.fill("#playground textarea", "GPU clouds rent accelerators")
    page.click("#playground button")
    page.wait_for_selector("#playground-answer[data-done='1']", timeout=60000)
    # The scripted model's reply (the words reversed), as the gateway passed it on.
    assert (page.locator("#playground-answer").inner_text()
            == "scripted reply: accelerators rent clouds GPU")
    _shot(page, "playground-chat")
    page.context.close()


def _chart(page: Any, sel: str) -> dict[str, Any]:
    """What the chart ``sel`` drew: its x axis, points, and whether it says "no data"."""
    got: dict[str, Any] = page.evaluate("""(sel) => {
        const el = document.querySelector(sel);
        const note = el.querySelector('.nodata');
        const legend = el.querySelector('.u-legend');
        return {min: el.plot.scales.x.min, max: el.plot.scales.x.max,
                points: Number(el.dataset.points), empty: el.dataset.empty,
                note: note && getComputedStyle(note).display !== 'none' ? note.textContent : '',
                legend: legend ? legend.innerText : ''};
    }""", sel)
    return got


def test_charts_span_the_window_share_one_fetch_and_say_when_there_is_no_data(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    cloud = console_cloud
    page = _login(browser, cloud, cloud.team_admin)
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/ui/data/deployments/" in r.url
            else None)
    # trainer-llm has had no traffic: four charts over the whole 15 minutes, each saying so.
    page.goto(f"{cloud.url}/ui/deployments/trainer-llm")
    page.wait_for_selector("#chart-errors .u-wrap")
    page.wait_for_timeout(10_500)  # two refreshes
    # One fetch per refresh for the four charts (not four): the first and two more.
    assert 2 <= len(fetched) <= 3, fetched
    for sel in ("#chart-rps", "#chart-latency", "#chart-tokens", "#chart-errors"):
        c = _chart(page, sel)
        assert c["empty"] == "1" and c["note"] == "no data in this window", (sel, c)
        assert c["max"] - c["min"] == 900 and c["points"] == 90, (sel, c)
        assert "--" not in c["legend"], (sel, c)
    _shot(page, "deployment-no-data")
    # Another window: the stored resolution for it, and the axis spans all of it.
    fetched.clear()
    page.select_option("#chart-window", "86400")
    page.wait_for_function("document.querySelector('#chart-rps').dataset.points === '8640'")
    assert all("window_s=86400" in u for u in fetched) and len(fetched) == 1, fetched
    c = _chart(page, "#chart-rps")
    assert c["max"] - c["min"] == 86400
    page.select_option("#chart-window", str(30 * 86400))
    page.wait_for_function("document.querySelector('#chart-rps').dataset.points === '8640'"
                           " && document.querySelector('#chart-rps').plot.scales.x.max"
                           " - document.querySelector('#chart-rps').plot.scales.x.min"
                           f" === {30 * 86400}")
    _shot(page, "deployment-30-days")
    # emb had traffic: its charts are not empty, over the same whole window.
    page.goto(f"{cloud.url}/ui/deployments/emb")
    page.wait_for_selector("#chart-rps .u-wrap")
    c = _chart(page, "#chart-rps")
    assert c["max"] - c["min"] == 900
    page.context.close()


def test_bill_spend_by_workload_and_by_kind_and_quantities_that_read(
        browser: Any, console_cloud: ConsoleCloud) -> None:
    cloud = console_cloud
    page = _login(browser, cloud, cloud.team_admin)
    page.goto(f"{cloud.url}/ui/billing")
    page.wait_for_selector("#chart-spend .u-wrap")
    c = _chart(page, "#chart-spend")
    assert "replica trainer-llm" in c["legend"], c
    assert c["empty"] == "0" and c["note"] == ""
    # The first day's bar is drawn whole: half a day of axis before it.
    first_day = page.evaluate("document.querySelector('#chart-spend').plot.data[0][0]")
    assert c["min"] == first_day - 43200
    invoice = page.locator("#invoice").inner_text()
    assert "0.0000 " not in invoice
    # One line per workload and meter: the flaky job's four worker runs are one line.
    flaky = [ln for ln in invoice.splitlines() if "\tflaky\t" in ln]
    assert len(flaky) == 1, invoice
    _shot(page, "billing-by-workload")
    page.select_option("#spend-by", "kind")
    page.wait_for_function("document.querySelector('#chart-spend .u-legend').innerText"
                           ".includes('storage')")
    page.wait_for_timeout(5500)  # a refresh later, still by kind
    labels = page.evaluate("document.querySelector('#chart-spend').plot.series.slice(1)"
                           ".map((s) => s.label)")
    assert labels == ["time", "tokens", "storage"], labels
    _shot(page, "billing-by-kind")
    page.context.close()

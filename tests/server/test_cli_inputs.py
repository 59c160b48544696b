"""The CLI on inputs that used to fail badly, against a real control plane in-process:

- ``neocloud job logs -f`` on a job that waits says so (status and reason, once per
  change) and follows the logs once the job starts, to its end (before: silent);
- negative numbers: an option's value may be negative as is (``--priority -1``); a
  negative argument goes after ``--``, and without it the error says so (before: "No such
  option: -1").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from tests.server.helpers import Cloud, open_cloud
from tests.server.workload_helpers import drive_until, get, reconcile_workloads

H100 = [{"type": "H100", "count": 1, "memory_mib": 81559}]


@pytest.fixture
def cloud(tmp_path: Path, sqlite_url: str) -> Iterator[Cloud]:
    c, client = open_cloud(tmp_path / "home", sqlite_url)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)


class CountingTransport(httpx.BaseTransport):
    """The CLI's requests, sent to the in-process app; counts the ``GET`` of one path."""

    def __init__(self, cloud: Cloud, path: str) -> None:
        self.cloud, self.path = cloud, path
        self.gets = 0
        self.changed = threading.Condition()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        got = self.cloud.client.request(request.method, str(request.url),
                                        headers=request.headers, content=request.read())
        if request.method == "GET" and request.url.path == self.path:
            with self.changed:
                self.gets += 1
                self.changed.notify_all()
        return httpx.Response(got.status_code, headers=got.headers, content=got.content)

    def wait_gets(self, more: int) -> None:
        """Until the CLI has read the job ``more`` more times (bounded: 30 s)."""
        with self.changed:
            want = self.gets + more
            assert self.changed.wait_for(lambda: self.gets >= want, timeout=30)


def _flat(text: str) -> str:
    """``text`` without the boxes and line breaks of a usage error panel."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def _cli(cloud: Cloud, *args: str) -> Any:
    state: Any = CliState(transport=CountingTransport(cloud, ""))
    state.url, state.token = "http://testserver", cloud.token
    return CliRunner().invoke(cli_app, list(args), obj=state, catch_exceptions=False)


def test_negative_option_values_are_values(cloud: Cloud) -> None:
    res = _cli(cloud, "deploy", "d1", "--service", "embeddings", "--priority", "-1",
               "--no-wait", "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["priority"] == -1
    res = _cli(cloud, "deploy", "d2", "--service", "embeddings", "--priority=-7",
               "--no-wait", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["priority"] == -7, res.stderr
    res = _cli(cloud, "job", "create", "j", "--priority", "-5", "--", "python", "-c",
               "print(-1)", "-1", "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    job = get(cloud, "/jobs/j")
    assert job["priority"] == -5
    assert job["command"] == ["python", "-c", "print(-1)", "-1", "--json"]


@pytest.mark.parametrize("args", [("job", "create", "j", "train", "-1"),
                                  ("scale", "d1", "-1"), ("scale", "d1", "-2.5")])
def test_a_negative_argument_before_dashdash_says_how_to_pass_it(
        cloud: Cloud, args: tuple[str, ...]) -> None:
    res = _cli(cloud, *args)
    assert res.exit_code == 2
    text = _flat(res.stdout + res.stderr)
    number = args[-1]
    command = "neocloud " + " ".join(args[:2] if args[0] == "job" else args[:1])
    assert (f"{number} is not an option: a negative number given as an argument must come "
            f"after `--` (which ends the options), e.g. `{command} ... -- {number}`") in text
    assert "Traceback" not in text and "No such option" not in text


def test_scale_to_a_negative_count_after_dashdash_is_refused_by_range(cloud: Cloud) -> None:
    res = _cli(cloud, "scale", "d1", "--", "-1")
    assert res.exit_code == 2
    assert "Invalid value for 'replicas': Input should be greater than or equal to 0" in _flat(
        res.stdout + res.stderr)


def test_follow_a_queued_job_says_why_then_follows_it(cloud: Cloud) -> None:
    r = cloud.api("POST", "/jobs", json={"name": "j", "command": ["train"],
                                         "shape": "gpu.h100"})
    assert r.status_code == 201, r.text
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/j")
    assert job["status"] == "queued" and job["reason"], job
    transport = CountingTransport(cloud, "/api/v1/jobs/j")
    errors: list[BaseException] = []

    def the_job_starts_prints_and_ends() -> None:
        try:
            transport.wait_gets(3)  # the CLI has looked at the queued job three times
            cloud.add_fake_node("gpu-a", gpus=H100)
            drive_until(cloud, lambda: get(cloud, "/jobs/j")["status"] == "running",
                        what="the job running")
            (spec,) = [s for s in cloud.fake.started if s.env.get("NEOCLOUD_JOB") == "j"]
            cloud.fake.write(spec.workload_id, "step 1\n")
            transport.wait_gets(2)
            cloud.fake.write(spec.workload_id, "step 2\n")
            cloud.fake.crash(spec.workload_id, exit_code=0)
            drive_until(cloud, lambda: get(cloud, "/jobs/j")["status"] == "succeeded",
                        what="the job succeeded")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    worker = threading.Thread(target=the_job_starts_prints_and_ends, daemon=True)
    worker.start()
    state: Any = CliState(transport=transport)
    state.url, state.token = "http://testserver", cloud.token
    res = CliRunner().invoke(cli_app, ["job", "logs", "j", "-f", "--interval", "0.05"],
                             obj=state, catch_exceptions=False)
    worker.join(60)
    assert not errors, errors
    assert res.exit_code == 0, res.stdout + res.stderr
    waiting = [ln for ln in res.stderr.splitlines() if "waiting for it to start" in ln]
    assert waiting == [f"job j is queued: {job['reason']}; waiting for it to start "
                       "(Ctrl-C to stop following)"], res.stderr
    started = [ln for ln in res.stderr.splitlines() if ln.endswith("; following its logs")]
    assert started in (["job j is starting; following its logs"],
                       ["job j is running; following its logs"]), res.stderr
    assert res.stdout.splitlines() == ["step 1", "step 2"], res.stdout
    assert res.stderr.rstrip().endswith("job j succeeded"), res.stderr

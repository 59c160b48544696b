from __future__ import annotations

import json
from collections.abc import Callable

from fakecloud import FakeCloud
from typer.testing import Result

Run = Callable[..., Result]


def test_deploy_waits_and_reports_endpoint(run: Run, cloud: FakeCloud) -> None:
    result = run("deploy", "web", "--service", "embeddings", "--env", "A=1", "-e", "B=x=y",
                 "--replicas", "2", "--poll-interval", "0")
    assert result.exit_code == 0, result.stderr
    assert "web is ready: 2/2 replicas ready" in result.stdout
    assert "http://cloud.test/endpoints/web/" in result.stdout
    assert "model=web" in result.stdout
    assert "Created deployment web" in result.stderr
    assert "Ready: deployment is ready" in result.stderr  # events are echoed while waiting
    body = json.loads(cloud.requests[0].content)
    assert body["env"] == {"A": "1", "B": "x=y"} and body["replicas"] == 2


def test_deploy_json_prints_only_json(run: Run) -> None:
    result = run("deploy", "web", "-s", "embeddings", "--json", "--poll-interval", "0")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "web" and data["status"] == "ready"
    assert data["replica_list"][0]["status"] == "ready"


def test_deploy_no_wait(run: Run) -> None:
    result = run("deploy", "web", "-s", "embeddings", "--no-wait")
    assert result.exit_code == 0
    assert "web: pending, 0/1 replicas ready" in result.stdout


def test_deploy_existing_needs_update(run: Run, cloud: FakeCloud) -> None:
    assert run("deploy", "web", "-s", "embeddings", "--no-wait").exit_code == 0
    again = run("deploy", "web", "-s", "embeddings", "--no-wait")
    assert again.exit_code == 1
    assert "Error: deployment 'web' already exists" in again.stderr
    assert "--update" in again.stderr and "Traceback" not in again.stderr
    updated = run("deploy", "web", "--update", "--replicas", "3", "--no-wait", "--json")
    assert updated.exit_code == 0, updated.stderr
    assert json.loads(updated.stdout)["replicas"] == 3
    assert json.loads(cloud.requests[-1].content) == {"replicas": 3}
    created = run("deploy", "api", "--update", "-s", "chat", "--no-wait", "--json")
    assert json.loads(created.stdout)["service"] == "chat"


def test_deploy_bad_input_is_a_usage_error(run: Run, cloud: FakeCloud) -> None:
    cases = {
        ("--env", "FOO"): "'--env'",
        ("--env", "1X=2"): "'--env'",
        ("--replicas", "-1"): "'--replicas'",
        ("--replicas", "many"): "'--replicas'",
    }
    for extra, option in cases.items():
        result = run("deploy", "web", "-s", "embeddings", *extra)
        assert result.exit_code == 2, (extra, result.stderr)
        assert option in result.stderr
        assert "Traceback" not in result.stderr
    assert "KEY=VALUE" in run("deploy", "web", "-s", "e", "--env", "FOO").stderr
    bad_name = run("deploy", "Bad_Name", "-s", "embeddings")
    assert bad_name.exit_code == 2 and "NAME" in bad_name.stderr
    no_service = run("deploy", "web")
    assert no_service.exit_code == 2 and "'--service'" in no_service.stderr
    assert cloud.requests == []  # nothing reached the server


def test_dry_run_bad_name_is_a_usage_error(run: Run, cloud: FakeCloud) -> None:
    """``--dry-run`` checks the name as a plain deploy does: a usage error naming NAME
    (exit 2), not the SDK's ``body.name`` error (exit 1)."""
    for name in ("Bad_Name", "web-"):
        result = run("deploy", name, "-s", "embeddings", "--dry-run")
        assert result.exit_code == 2, (name, result.stderr)
        assert "NAME" in result.stderr and "body.name" not in result.stderr
    assert cloud.requests == []  # nothing reached the server


def test_deploy_failure_and_timeout_exit_1(run: Run) -> None:
    failed = run("deploy", "bad", "-s", "crash:now", "--poll-interval", "0")
    assert failed.exit_code == 1
    assert "Error: deployment 'bad' failed" in failed.stderr
    assert "process exited with code 1" in failed.stderr
    slow = run("deploy", "big", "-s", "embeddings", "--shape", "gpu.h100x8", "--timeout", "0")
    assert slow.exit_code == 1
    assert "not ready after 0 s" in slow.stderr
    assert "no node has 8 free GPUs of type H100" in slow.stderr


def test_unknown_shape_shows_server_message(run: Run) -> None:
    result = run("deploy", "web", "-s", "embeddings", "--shape", "gpu.zz", "--no-wait")
    assert result.exit_code == 1
    assert "Error: shape 'gpu.zz' not found (param: body.shape)" in result.stderr


def test_ls_table_and_json(run: Run) -> None:
    empty = run("ls")
    assert empty.exit_code == 0 and "No deployments" in empty.stderr and empty.stdout == ""
    assert json.loads(run("ls", "--json").stdout) == []
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    run("deploy", "api", "-s", "chat", "--replicas", "0", "--no-wait")
    table = run("ls").stdout
    header = table.splitlines()[0].split()
    assert header[:7] == ["NAME", "ENGINE", "SERVICE", "MODEL", "SHAPE", "READY", "STATUS"]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["web"][1:7] == ["builtin", "embeddings", "default", "cpu.small", "0/1",
                                "pending"]
    assert rows["api"][5] == "0/0"
    listed = json.loads(run("ls", "--json").stdout)
    assert [d["name"] for d in listed] == ["web", "api"]


def test_scale(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    result = run("scale", "web", "4")
    assert result.exit_code == 0 and "Scaled web to 4 replicas" in result.stdout
    assert json.loads(cloud.requests[-1].content) == {"replicas": 4}
    waited = run("scale", "web", "2", "--wait", "--poll-interval", "0", "--json")
    assert json.loads(waited.stdout)["ready_replicas"] == 2
    assert run("scale", "web", "-3").exit_code == 2
    missing = run("scale", "nope", "1")
    assert missing.exit_code == 1 and "Error: deployment 'nope' not found" in missing.stderr


def test_status_detail_and_summary(run: Run) -> None:
    run("deploy", "web", "-s", "embeddings", "-e", "MODE=fast", "--poll-interval", "0")
    detail = run("status", "web")
    assert detail.exit_code == 0, detail.stderr
    text = detail.stdout
    assert "web  ready" in text
    assert "MODE=fast" in text and "http://cloud.test/endpoints/web/" in text
    assert "Replicas" in text and "web-1-0" in text and "9000" in text
    assert "Recent events" in text and "Ready" in text
    data = json.loads(run("status", "web", "--json").stdout)
    assert data["deployment"]["name"] == "web"
    assert [e["reason"] for e in data["events"]][0] == "Created"

    pending = run("status", "big")
    assert pending.exit_code == 1 and "not found" in pending.stderr
    run("deploy", "big", "-s", "embeddings", "--shape", "gpu.h100x8", "--no-wait")
    run("status", "big")  # one poll advances the fake reconciler
    assert "pending" in run("status", "big").stdout
    assert "no node has 8 free GPUs" in run("status", "big").stdout

    summary = run("status")
    assert "Deployments: 2 (1 ready)" in summary.stdout
    assert "Nodes: 1" in summary.stdout and "local" in summary.stdout
    both = json.loads(run("status", "--json").stdout)
    assert {d["name"] for d in both["deployments"]} == {"web", "big"}
    assert [n["name"] for n in both["nodes"]] == ["local"]


def test_logs(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--replicas", "2", "--poll-interval", "0")
    result = run("logs", "web")
    assert result.exit_code == 0
    assert result.stdout.count("==> replica ") == 2
    one = run("logs", "web", "--replica", "web-1-1", "--tail", "1")
    assert one.stdout == "loading model\n"
    assert run("logs", "web", "--tail", "-1").exit_code == 2


def test_logs_follow_prints_each_line_once(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--replicas", "2", "--poll-interval", "0")
    cloud.log_growth = 1
    cloud.delete_after_log_requests = 8  # four polls of two replicas, then it is gone
    result = run("logs", "web", "-f", "--interval", "0")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(set(lines))
    for rid in ("web-1-0", "web-1-1"):
        mine = [line for line in lines if line.startswith(f"[{rid}] ")]
        assert mine[:2] == [f"[{rid}] starting replica {rid}", f"[{rid}] loading model"]
        assert mine[2:] == [f"[{rid}] {rid} line {n}" for n in range(2, 6)]


def test_logs_follow_one_replica_with_tail(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--poll-interval", "0")
    cloud.log_growth = 2
    result = run("logs", "web", "-f", "--replica", "web-1-0", "--tail", "1", "--interval", "0",
                 "--max-polls", "3")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"web-1-0 line {n}" for n in (3, 4, 5, 6, 7)]


def test_rm(run: Run) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    result = run("rm", "web")
    assert result.exit_code == 0 and "Deleting web" in result.stdout
    assert json.loads(run("ls", "--json").stdout) == []
    assert run("rm", "web").exit_code == 1
    run("deploy", "api", "-s", "embeddings", "--no-wait")
    waited = run("rm", "api", "--wait", "--poll-interval", "0")
    assert waited.exit_code == 0 and "Deleted api." in waited.stdout


def test_scale_to_zero_without_autoscaling_says_requests_cannot_wake_it(
        run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    result = run("scale", "web", "0")
    assert result.exit_code == 0, result.stderr
    assert "Scaled web to 0 replicas" in result.stdout
    assert "deployment_scaled_to_zero" in result.stderr and "cannot wake" in result.stderr
    assert "neocloud autoscale web --min 0" in result.stderr
    assert "cannot wake" not in run("scale", "web", "1").stderr


def test_autoscale_help_states_the_idle_to_zero_default(run: Run) -> None:
    from neocloud.models.autoscaling import AutoscalingConfig

    default = AutoscalingConfig().scale_to_zero_delay_s
    result = run("autoscale", "--help", login=False)
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("\u2502", " ").split())  # without the box edges
    assert "--idle-to-zero" in text and f"default {default:g} s" in text


def test_autoscale_idle_to_zero_is_sent(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    result = run("autoscale", "web", "--min", "0", "--max", "2", "--idle-to-zero", "900")
    assert result.exit_code == 0, result.stderr
    sent = json.loads(cloud.requests[-1].content)["autoscaling"]
    assert sent["min_replicas"] == 0 and sent["scale_to_zero_delay_s"] == 900
    assert "to zero after 900 s idle" in result.stdout


def _flat(text: str) -> str:
    return " ".join(text.replace("\u2502", " ").split())  # without the box edges


def test_idle_to_zero_below_the_scale_down_delay_names_both_options(
        run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    sent = len(cloud.requests)
    for command in (("autoscale", "web"), ("deploy", "api", "-s", "embeddings", "--no-wait")):
        result = run(*command, "--min", "0", "--max", "2", "--idle-to-zero", "10")
        assert result.exit_code == 2, result.stdout
        err = _flat(result.stderr)
        assert "Invalid value for '--idle-to-zero'" in err
        assert "--scale-down-delay (120.0)" in err
        assert "scale_to_zero_delay_s" not in err and "scale_down_delay_s" not in err
        assert "'--min' / '--max'" not in err
    assert all(r.method == "GET" for r in cloud.requests[sent:])  # nothing was changed


def test_scale_delays_are_options_of_autoscale_and_deploy(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    result = run("autoscale", "web", "--min", "0", "--max", "2", "--scale-down-delay", "5",
                 "--scale-up-delay", "3", "--idle-to-zero", "10")
    assert result.exit_code == 0, result.stderr
    sent = json.loads(cloud.requests[-1].content)["autoscaling"]
    assert (sent["scale_down_delay_s"], sent["scale_up_delay_s"],
            sent["scale_to_zero_delay_s"]) == (5, 3, 10)
    assert "scale-down delay 5 s" in result.stdout and "to zero after 10 s idle" in result.stdout
    created = run("deploy", "api", "-s", "embeddings", "--no-wait", "--min", "0", "--max", "3",
                  "--scale-down-delay", "30", "--idle-to-zero", "45")
    assert created.exit_code == 0, created.stderr
    body = json.loads(cloud.requests[-1].content)["autoscaling"]
    assert (body["min_replicas"], body["scale_down_delay_s"],
            body["scale_to_zero_delay_s"]) == (0, 30, 45)


def test_autoscale_checks_the_given_options_against_the_stored_settings(
        run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    assert run("autoscale", "web", "--min", "1", "--max", "10",
               "--scale-down-delay", "30", "--idle-to-zero", "60").exit_code == 0
    # --min 5 alone is fine with the stored --max 10 (not the default 4), --idle-to-zero 40
    # with the stored --scale-down-delay 30 (not the default 120)
    raised = run("autoscale", "web", "--min", "5", "--idle-to-zero", "40")
    assert raised.exit_code == 0, raised.stderr
    sent = json.loads(cloud.requests[-1].content)["autoscaling"]
    assert (sent["min_replicas"], sent["max_replicas"], sent["scale_down_delay_s"],
            sent["scale_to_zero_delay_s"]) == (5, 10, 30, 40)
    below = run("autoscale", "web", "--max", "2")
    assert below.exit_code == 2
    err = _flat(below.stderr)
    assert "Invalid value for '--max'" in err and "--max (2) must be at least --min (5)" in err
    longer = run("autoscale", "web", "--scale-down-delay", "300")
    assert longer.exit_code == 2
    assert "--idle-to-zero (40.0) must be at least --scale-down-delay (300.0)" in _flat(
        longer.stderr)


def test_autoscale_and_deploy_help_state_the_delay_defaults(run: Run) -> None:
    from neocloud.models.autoscaling import AutoscalingConfig

    defaults = AutoscalingConfig()
    for command in ("autoscale", "deploy"):
        text = _flat(run(command, "--help", login=False).stdout)
        for option, default in (("--scale-down-delay", defaults.scale_down_delay_s),
                                ("--scale-up-delay", defaults.scale_up_delay_s),
                                ("--idle-to-zero", defaults.scale_to_zero_delay_s)):
            start = text.index(option)
            assert f"default {default:g} s" in text[start:start + 400], (command, option)
        assert "counted from the last one" in text

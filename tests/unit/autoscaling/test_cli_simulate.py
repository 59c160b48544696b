"""``neocloud simulate autoscaling`` end to end on a small trace file, and the group that
keeps ``neocloud simulate --nodes ... --pods ...`` (the scheduler replay) working."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from neocloud.cli import output
from neocloud.cli.main import app


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def wide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEOCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(output.out, "width", 200)
    monkeypatch.setattr(output.err, "width", 200)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """Ten minutes of arrivals at 2/s that double for the middle two minutes."""
    rng = random.Random(3)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = 0.0
    while t < 600:
        rate = 4.0 if 240 <= t < 360 else 2.0
        t += rng.expovariate(rate)
        m, s = divmod(t, 60)
        lines.append(f"2023-11-16 18:{int(m):02d}:{s:010.7f},{rng.randint(50, 2000)},"
                     f"{rng.randint(5, 400)}")
    f = tmp_path / "trace.csv"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_all_policies_as_json(trace: Path) -> None:
    result = run("simulate", "autoscaling", "--trace", str(trace), "--json",
                 "--warmup", "60", "--cold-start", "20")
    assert result.exit_code == 0, result.output
    rows = {r["policy"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"target", "ray-serve-default", "fixed", "oracle"}
    oracle = rows["oracle"]
    assert oracle["within_goal_pct"] == 100.0
    for r in rows.values():
        assert r["requests"] == oracle["requests"] > 1000
        assert r["replica_seconds"] >= oracle["replica_seconds"] * 0.999
    assert rows["fixed"]["scaling_changes"] == 0


def test_one_policy_as_a_table(trace: Path) -> None:
    result = run("simulate", "autoscaling", "--trace", str(trace), "--policy", "target,oracle",
                 "--target", "5", "--scale-down-delay", "60")
    assert result.exit_code == 0, result.output
    assert "Autoscaling simulation:" in result.stdout
    assert "VS ORACLE" in result.stdout and "1.00x" in result.stdout
    assert "target" in result.stdout and "ray-serve-default" not in result.stdout


@pytest.mark.parametrize(("args", "code", "text"), [
    (("--policy", "knative"), 2, "unknown policy 'knative'"),
    (("--signal", "gpu"), 2, "unknown signal 'gpu'"),
    (("--min", "5", "--max", "2"), 1, "max_replicas (2) must be at least min_replicas (5)"),
    (("--start", "9000"), 1, "no request arrives after the warm-up"),
])
def test_bad_input_is_a_message(trace: Path, args: tuple[str, ...], code: int,
                                text: str) -> None:
    result = run("simulate", "autoscaling", "--trace", str(trace), *args)
    assert result.exit_code == code
    assert text in result.stderr and "Traceback" not in result.stderr


def test_a_file_that_is_not_a_trace(tmp_path: Path) -> None:
    f = tmp_path / "nodes.csv"
    f.write_text("sn,cpu_milli\n1,2\n")
    result = run("simulate", "autoscaling", "--trace", str(f))
    assert result.exit_code == 1 and "expected columns" in result.stderr


def test_the_scheduler_replay_is_still_reached_without_a_sub_command(tmp_path: Path) -> None:
    help_text = run("simulate", "--help").stdout
    assert "autoscaling" in help_text and "scheduler" in help_text
    missing = tmp_path / "none.csv"
    for prefix in (("simulate",), ("simulate", "scheduler")):
        result = run(*prefix, "--nodes", str(missing), "--pods", str(missing),
                     "--policy", "fgd")
        assert result.exit_code == 2 and "'--nodes'" in result.stderr  # its own checks


def test_cli_defaults_are_the_measured_costs() -> None:
    from neocloud.cli import simulate_autoscaling as cli
    from neocloud.simulate import autoscaling as sim

    assert cli.DEFAULT_DECODE_MS_PER_TOKEN == pytest.approx(1000 * sim.MEASURED_DECODE_S_PER_TOKEN)
    assert cli.DEFAULT_PREFILL_MS_PER_TOKEN == pytest.approx(
        1000 * sim.MEASURED_PREFILL_S_PER_TOKEN)

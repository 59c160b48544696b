"""What every backend does the same way (``local`` and ``ray``; the Ray leg on a real
three-node Ray cluster on loopback): start, inspect, stop with grace then kill, adoption
after a control-plane restart, logs kept after exit, environment and secrets, GPU
visibility and the count variable, exit codes, and no process left behind."""

from __future__ import annotations

import json
import time

import pytest

from neocloud.server.backends.base import GPU_COUNT_ENV, WORKLOAD_ENV, start_or_adopt
from tests.backends.conftest import Leg, processes_of, wait_for

SLEEPER = "import time; print('started', flush=True); time.sleep(600)"
ENV_DUMP = "import json, os; print(json.dumps(dict(os.environ)), flush=True)"


def _ended(leg: Leg, handle: dict) -> bool:
    return not leg.backend.inspect(handle).running


def _env_of(leg: Leg, handle: dict) -> dict[str, str]:
    wait_for(lambda: _ended(leg, handle), what="the env dump to exit")
    text = leg.backend.logs(handle)
    return json.loads(text.strip().splitlines()[-1])


def test_start_inspect_stop(leg: Leg) -> None:
    spec = leg.spec(SLEEPER)
    handle = leg.backend.start(spec)
    try:
        assert leg.backend.inspect(handle).running
        wait_for(lambda: "started" in leg.backend.logs(handle), what="output")
        assert [p.pid for p in processes_of(spec.workload_id)] == [handle["pid"]]
        assert leg.backend.find(spec.workload_id)["pid"] == handle["pid"]
    finally:
        state = leg.backend.stop(handle, grace_s=5)
    assert not state.running
    assert state.exit_code == -15  # killed by SIGTERM
    assert not leg.backend.inspect(handle).running
    assert leg.backend.find(spec.workload_id) is None
    assert processes_of(spec.workload_id) == []
    again = leg.backend.stop(handle, grace_s=1)  # idempotent
    assert not again.running


def test_adopt_after_restart_never_starts_twice(leg: Leg) -> None:
    spec = leg.spec(SLEEPER)
    handle = leg.backend.start(spec)
    try:
        # A new control plane that never recorded the handle finds the process instead.
        restarted = leg.new_backend()
        adopted = start_or_adopt(restarted, spec)
        assert adopted["pid"] == handle["pid"]
        assert restarted.inspect(adopted).running
        assert restarted.inspect(handle).running  # the recorded handle is still valid
        # (a process just forked may still show its parent's environment: poll)
        wait_for(lambda: len(processes_of(spec.workload_id)) == 1, what="one process")
        assert "started" in wait_for(lambda: restarted.logs(adopted), what="adopted logs")
        state = restarted.stop(adopted, grace_s=5)
        assert not state.running
    finally:
        leg.backend.stop(handle, grace_s=1)
    assert processes_of(spec.workload_id) == []


def test_exit_code_and_logs_kept_after_exit(leg: Leg) -> None:
    spec = leg.spec("import sys\nfor i in range(3): print('line', i)\n"
                    "print('oops', file=sys.stderr); sys.exit(7)")
    handle = leg.backend.start(spec)
    wait_for(lambda: _ended(leg, handle), what="exit")
    assert leg.backend.inspect(handle).exit_code == 7
    text = leg.backend.logs(handle)
    assert "line 0\nline 1\nline 2\n" in text and "oops" in text
    assert leg.backend.logs(handle, tail=1).strip() == "oops"
    state = leg.backend.stop(handle, grace_s=1)
    assert state.exit_code == 7
    # Kept after the process (and, on Ray, its supervisor on the node) is gone.
    assert "line 2" in leg.backend.logs(handle)
    assert "line 2" in leg.new_backend().logs(handle)


def test_logs_this_run_only(leg: Leg) -> None:
    first = leg.spec("print('first run')")
    h1 = leg.backend.start(first)
    wait_for(lambda: _ended(leg, h1), what="first run")
    leg.backend.stop(h1, grace_s=1)
    second = leg.spec("print('second run')", workload_id=first.workload_id,
                      log_path=first.log_path)
    h2 = leg.backend.start(second)
    wait_for(lambda: _ended(leg, h2), what="second run")
    assert "second run" in leg.backend.logs(h2, this_run=True)
    assert "first run" not in leg.backend.logs(h2, this_run=True)
    assert "first run" in leg.backend.logs(h2)
    leg.backend.stop(h2, grace_s=1)


def test_env_and_secrets(leg: Leg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEOCLOUD_DATABASE_URL", "sqlite:////never/seen.db")
    code = ENV_DUMP + "\nimport os; print('key is', os.environ['HF_TOKEN'])"
    spec = leg.spec(code, env={"GREETING": "hello", "HF_TOKEN": "hf_s3cr3t_value_42"},
                    secret_env=frozenset({"HF_TOKEN"}))
    handle = leg.backend.start(spec)
    wait_for(lambda: _ended(leg, handle), what="exit")
    text = leg.backend.logs(handle)
    leg.backend.stop(handle, grace_s=1)
    assert "hf_s3cr3t_value_42" not in text  # secret values never reach a log
    assert "key is" in text
    env = json.loads(text.strip().splitlines()[0].replace("\n", ""))
    assert env["GREETING"] == "hello"
    assert env[WORKLOAD_ENV] == spec.workload_id
    own = {k for k in env if k.startswith("NEOCLOUD_")}
    assert own == {WORKLOAD_ENV, GPU_COUNT_ENV}, own  # never the control plane's settings


@pytest.mark.parametrize(("indices", "milli", "visible", "count"), [
    ((), 1000, "", "0"),
    ((1,), 1000, "1", "1"),
    ((0, 1), 1000, "0,1", "2"),
    ((1,), 500, "1", "1"),  # a fractional share is one device
])
def test_gpu_visibility_and_count(leg: Leg, indices: tuple[int, ...], milli: int,
                                  visible: str, count: str) -> None:
    spec = leg.spec(ENV_DUMP, gpu_indices=indices, gpu_milli=milli)
    handle = leg.backend.start(spec)
    try:
        env = _env_of(leg, handle)
    finally:
        leg.backend.stop(handle, grace_s=1)
    assert env["CUDA_VISIBLE_DEVICES"] == visible
    assert env[GPU_COUNT_ENV] == count


def test_stop_grace_lets_the_process_finish(leg: Leg) -> None:
    code = ("import signal, sys, time\n"
            "def bye(*_):\n    print('bye', flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye); print('ready', flush=True); time.sleep(600)")
    spec = leg.spec(code)
    handle = leg.backend.start(spec)
    wait_for(lambda: "ready" in leg.backend.logs(handle), what="ready")
    state = leg.backend.stop(handle, grace_s=10)
    assert state.exit_code == 0
    assert "bye" in leg.backend.logs(handle)


def test_stop_kills_after_grace_with_children(leg: Leg) -> None:
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
            "print('ready', flush=True); time.sleep(600)")
    spec = leg.spec(code)
    handle = leg.backend.start(spec)
    wait_for(lambda: "ready" in leg.backend.logs(handle), what="ready")
    wait_for(lambda: len(processes_of(spec.workload_id)) == 2, what="the child process")
    t0 = time.monotonic()
    state = leg.backend.stop(handle, grace_s=1.0)
    took = time.monotonic() - t0
    assert state.exit_code == -9  # SIGKILL after the grace period
    assert took >= 1.0
    assert processes_of(spec.workload_id) == []  # the grandchild too


def test_missing_program_fails(leg: Leg) -> None:
    """Either ``start`` raises ``OSError`` or the process ends at once with a failure code
    (a wrapper such as the log writer may start first)."""
    spec = leg.spec("")
    bad = type(spec)(**{**spec.__dict__, "command": ["/no/such/program-xyz"]})
    try:
        handle = leg.backend.start(bad)
    except OSError:
        assert processes_of(spec.workload_id) == []
        return
    wait_for(lambda: _ended(leg, handle), what="exit")
    code = leg.backend.inspect(handle).exit_code
    leg.backend.stop(handle, grace_s=1)
    assert code not in (None, 0)
    assert processes_of(spec.workload_id) == []

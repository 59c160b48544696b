"""Jobs under faults: what a deleted job leaves on disk, and a command the API accepted
that no worker can ever run.

Found:

- ``DELETE /jobs/{name}`` removed the job's logs but kept ``<home>/jobs/<job id>/``,
  every worker's working directory with whatever it wrote there (checkpoints, data):
  the disk filled with the files of jobs that no longer exist;
- ``{"command": [""]}`` was accepted (201), then every attempt failed with exit code
  126 ("cannot run ''"), retries included; now 422 naming ``command.0``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from neocloud.server.services import jobs as job_svc
from tests.server.helpers import Cloud
from tests.server.test_faults_volumes import _failing_commit_after
from tests.server.workload_helpers import error_of, open_local_cloud, wait_job


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from open_local_cloud(tmp_path)


def test_deleted_job_leaves_no_working_directory_and_keeps_volume_files(
        local_cloud: Cloud) -> None:
    cloud = local_cloud
    assert cloud.api("POST", "/volumes", json={"name": "out"}).status_code == 201
    script = ("import pathlib; pathlib.Path('checkpoint.bin').write_bytes(b'x' * 4096); "
              "pathlib.Path('out/result.txt').write_text('kept')")
    r = cloud.api("POST", "/jobs", json={
        "name": "train", "command": [sys.executable, "-c", script], "workers": 2,
        "volumes": [{"volume": "out", "path": "out"}]})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_job(cloud, "train", "succeeded", "failed")
    assert cloud.api("GET", "/jobs/train").json()["status"] == "succeeded"
    work = cloud.app.state.settings.home / "jobs" / job_id
    assert list(work.rglob("checkpoint.bin")), "the workers wrote to their directory"
    assert cloud.api("DELETE", "/jobs/train").status_code == 204
    assert not work.exists(), sorted(p.name for p in work.rglob("*"))
    # the volume mounted there was a link: its files stay
    r = cloud.api("GET", "/volumes/out/files/result.txt")
    assert r.status_code == 200 and r.content == b"kept"


@pytest.mark.parametrize("command,param", [
    ([""], "command.0"),
    (["   "], "command.0"),
])
def test_command_without_a_program_is_refused(cloud: Cloud, command: list[str],
                                              param: str) -> None:
    r = cloud.api("POST", "/jobs", json={"name": "j", "command": command})
    assert r.status_code in (400, 422), r.text
    assert error_of(r)["param"] == param


def test_jobrun_outlives_a_stop_signal_from_its_first_instant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop handlers were installed after the command started: a SIGTERM to the
    process group in between killed ``jobrun`` before it could record the exit code."""
    import signal
    import subprocess as sp

    from neocloud import jobrun

    seen: dict[str, object] = {}
    real_popen = sp.Popen

    def popen(cmd: list[str], *a: object, **kw: object) -> sp.Popen[bytes]:
        seen["handler"] = signal.getsignal(signal.SIGTERM)
        return real_popen(cmd, *a, **kw)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(jobrun.subprocess, "Popen", popen)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = jobrun.main(["--exit-file", str(tmp_path / "w.exit"), "--",
                            sys.executable, "-c", "raise SystemExit(7)"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert code == 7 and jobrun.read_exit(tmp_path / "w.exit") == 7
    assert seen["handler"] not in (signal.SIG_DFL, None), seen


def test_jobrun_on_a_full_disk_still_exits_with_the_commands_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Writing the exit file raised ``OSError`` (ENOSPC): ``jobrun`` died with a traceback
    and exit code 1, so the worker's real code was lost twice."""
    import errno
    import signal

    from neocloud import jobrun

    def full(_path: Path, _code: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobrun, "write_exit", full)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = jobrun.main(["--exit-file", str(tmp_path / "w.exit"), "--",
                            sys.executable, "-c", "raise SystemExit(5)"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert code == 5
    assert "cannot record exit code 5" in capsys.readouterr().err


def test_failed_delete_commit_keeps_the_jobs_logs(cloud: Cloud,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """As for volumes: the logs were removed before the deletion was committed."""
    assert cloud.api("POST", "/jobs", json={"name": "j", "command": ["x"]}).status_code == 201
    assert cloud.api("POST", "/jobs/j/stop").status_code == 200
    job_id = cloud.api("GET", "/jobs/j").json()["id"]
    logs = cloud.app.state.settings.logs_dir / "jobs" / job_id / "attempt-1"
    logs.mkdir(parents=True)
    (logs / "worker-0.log").write_text("epoch 1 loss 0.5\n")

    with monkeypatch.context() as m:
        _failing_commit_after(m, job_svc, "delete_job")
        r = cloud.api("DELETE", "/jobs/j")
    assert r.status_code == 507, r.text
    assert cloud.api("GET", "/jobs/j").status_code == 200
    assert (logs / "worker-0.log").read_text() == "epoch 1 loss 0.5\n"
    assert cloud.api("DELETE", "/jobs/j").status_code == 204
    assert not logs.exists()

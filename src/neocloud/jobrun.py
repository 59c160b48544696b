"""The process that runs one job worker: ``python -m neocloud.jobrun --exit-file F -- CMD...``.

It starts ``CMD`` (no shell; output goes where its own goes: the worker's log, written by
the backend with secret values masked, see :mod:`neocloud.logrun`), waits,
and writes the exit code to ``F`` as JSON
``{"exit_code": N}`` (negative N: killed by signal -N) through a temporary file and a
rename, so the control plane reads a complete code even after its own restart, when the
worker is no longer its child. It exits with the command's code (128 + signal for a
signal, as shells do).

Stop signals reach the command directly: the backend signals the worker's whole process
group, which the command shares. This process lets SIGTERM, SIGINT and SIGHUP pass it by
(it must outlive the command to record its code) and forwards nothing, so the command
sees each signal exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType


def write_exit(path: Path, code: int) -> None:
    """Write ``{"exit_code": code}`` to ``path`` atomically, mode ``0600`` (it lies in the
    private data folder)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"exit_code": code}))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_exit(path: Path) -> int | None:
    """The exit code recorded in ``path``, or ``None`` when there is none (yet)."""
    try:
        return int(json.loads(path.read_text())["exit_code"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neocloud.jobrun")
    parser.add_argument("--exit-file", required=True, type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command given")

    def outlive(_signum: int, _frame: FrameType | None) -> None:
        pass  # the command got the same signal through the process group

    # Before the command starts: a stop signal that reached the group between its start
    # and these handlers killed this process, so no code was recorded. The command starts
    # with the default actions (exec resets caught signals).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, outlive)
    try:
        proc = subprocess.Popen(cmd)
    except OSError as e:
        print(f"neocloud: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        code = 127 if isinstance(e, FileNotFoundError) else 126
        _record(args.exit_file, code)
        return code
    code = proc.wait()
    _record(args.exit_file, code)
    return code if code >= 0 else 128 - code


def _record(path: Path, code: int) -> None:
    """:func:`write_exit`, or a line on stderr when it cannot be written (a full disk):
    this process still exits with the command's code, which the backend then reports."""
    try:
        write_exit(path, code)
    except OSError as e:
        print(f"neocloud: cannot record exit code {code}: {e.strerror}", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    sys.exit(main())

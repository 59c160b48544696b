"""The process that writes a workload's output to its log with secret values masked:
``python -m neocloud.logrun -- CMD...``.

A backend starts it in place of ``CMD`` with its standard output (the log file) as the
log; the names of the environment variables whose values must never reach the log are in
:data:`MASK_ENV` (comma-separated). It removes :data:`MASK_ENV` from the environment,
starts ``CMD`` with standard output and error on a pipe, and copies what arrives to the
log through a :class:`neocloud.masking.Masker`, so the file never holds a secret value in
clear (plain, base64 or URL-encoded). With nothing to mask it becomes ``CMD`` (``exec``):
no extra process, no copy.

Process contract, so that backends need not know it is there: it has the pid the backend
recorded; stop signals (SIGTERM, SIGINT, SIGHUP) reach ``CMD`` through the process group
the backend signals, and this process outlives them to copy the last lines; it exits with
``CMD``'s exit code, and when ``CMD`` died of a signal it dies of the same signal. If
processes that ``CMD`` left behind keep the pipe open, it stops copying
:data:`DRAIN_S` seconds after ``CMD`` exited.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from types import FrameType

from neocloud.masking import Masker

#: Environment variable naming (comma-separated) the variables whose values are masked.
MASK_ENV = "NEOCLOUD_MASK_ENV"

#: Seconds an unfinished line waits for its end before its safe part is written.
FLUSH_S = 0.2

#: Seconds output is still copied after the command exited (left-behind writers).
DRAIN_S = 2.0

_CHUNK = 64 * 1024


def masked_values(environ: dict[str, str]) -> list[str]:
    """Remove :data:`MASK_ENV` from ``environ``; return the values of the variables it
    names (those present)."""
    names = [n for n in environ.pop(MASK_ENV, "").split(",") if n]
    return [environ[n] for n in names if n in environ]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return  # the log cannot take it (disk full, closed): keep draining the pipe
        view = view[n:]


def pump(read_fd: int, write_fd: int, masker: Masker, proc: subprocess.Popen[bytes]) -> None:
    """Copy from ``read_fd`` to ``write_fd`` through ``masker`` until end of input, or
    :data:`DRAIN_S` seconds after ``proc`` exited."""
    exited_at: float | None = None
    while True:
        try:
            ready, _, _ = select.select([read_fd], [], [], FLUSH_S)
        except InterruptedError:
            continue
        if ready:
            try:
                data = os.read(read_fd, _CHUNK)
            except InterruptedError:
                continue
            if not data:
                break
            _write_all(write_fd, masker.feed(data))
            continue
        _write_all(write_fd, masker.flush())
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at > DRAIN_S:
            break
    _write_all(write_fd, masker.close())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neocloud.logrun")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command given")
    env = dict(os.environ)
    masker = Masker(masked_values(env))
    if not masker:
        try:
            os.execvpe(cmd[0], cmd, env)
        except OSError as e:
            print(f"neocloud: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
            return 127 if isinstance(e, FileNotFoundError) else 126
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(cmd, stdout=write_fd, stderr=write_fd, env=env)
    except OSError as e:
        os.close(read_fd)
        os.close(write_fd)
        print(f"neocloud: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        return 127 if isinstance(e, FileNotFoundError) else 126
    os.close(write_fd)

    def outlive(_signum: int, _frame: FrameType | None) -> None:
        pass  # the command got the same signal through the process group

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, outlive)
    sys.stdout.flush()
    pump(read_fd, sys.stdout.fileno(), masker, proc)
    os.close(read_fd)
    code = proc.wait()
    if code < 0:  # die of the same signal, so the backend sees what the command did
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP keep their default action anyway
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main())

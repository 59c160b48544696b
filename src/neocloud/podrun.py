"""The process of a dev pod: ``python -m neocloud.podrun --dir D --workdir W --ssh-port P``.

It runs a real OpenSSH server (``sshd -D -e``, from the system's ``openssh-server``) on
the pod's own port with its own host key and configuration in the pod folder ``D``, and
optionally JupyterLab; every login starts in the working directory ``W`` (the pod's
volume) with the pod's environment. It exits when ``sshd`` exits, and stops its children
on SIGTERM.

Inputs from the environment (set by the control plane):

* ``NEOCLOUD_POD_AUTHORIZED_KEYS``: public keys that may log in, one per line;
* ``NEOCLOUD_POD_ENV_KEYS``: comma-separated names of variables that logins get;
* ``NEOCLOUD_JUPYTER_TOKEN``: the JupyterLab token (with ``--jupyter-port``).

Activity: while an SSH session is open (``sshd`` has a child per connection) or JupyterLab
reports open connections or kernels, the file ``D/activity`` is touched every
:data:`CHECK_S` seconds; the control plane stops the pod after its idle timeout.
Files in ``D`` are mode 0600 (those that hold the environment are removed at exit). Its
output (and that of ``sshd`` and JupyterLab) is the pod's log, which the backend writes
with secret values masked (see :mod:`neocloud.logrun`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

import psutil

#: Seconds between activity checks.
CHECK_S = 1.0
HOST_KEY = "ssh_host_ed25519_key"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/libexec/sftp-server")


def find_sshd() -> str | None:
    """Path of the OpenSSH server binary, or ``None`` when it is not installed."""
    found = shutil.which("sshd")
    if found:
        return found
    for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"):
        if os.access(p, os.X_OK):
            return p
    return None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def ensure_host_key(pod_dir: Path) -> Path:
    """The pod's SSH host key (ed25519), made once and kept across restarts."""
    key = pod_dir / HOST_KEY
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "neocloud-pod",
                        "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
        for made in (key, key.with_name(key.name + ".pub")):
            os.chmod(made, 0o600)
    return key


def write_config(pod_dir: Path, *, workdir: Path, listen: str, port: int, user: str) -> Path:
    """Write ``sshd_config``, ``login.sh`` and ``env.sh`` into the pod folder."""
    names = [n for n in os.environ.get("NEOCLOUD_POD_ENV_KEYS", "").split(",") if n]
    keep = dict.fromkeys([*names, "PATH", "NEOCLOUD_POD", "VIRTUAL_ENV", "LANG"])
    env_lines = [f"export {k}={shlex.quote(os.environ[k])}" for k in keep if k in os.environ]
    _write_private(pod_dir / "env.sh", "\n".join(env_lines) + "\n")
    _write_private(pod_dir / "authorized_keys",
                   os.environ.get("NEOCLOUD_POD_AUTHORIZED_KEYS", "").strip() + "\n")
    sftp = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), "")
    login = f"""#!/bin/sh
# Every login of this pod: its environment, its working directory, then the command.
. {shlex.quote(str(pod_dir / "env.sh"))}
cd {shlex.quote(str(workdir))} || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
  case "$SSH_ORIGINAL_COMMAND" in
    sftp|internal-sftp|*/sftp-server) exec {shlex.quote(sftp) if sftp else "false"} ;;
  esac
  exec "${{SHELL:-/bin/sh}}" -c "$SSH_ORIGINAL_COMMAND"
fi
exec "${{SHELL:-/bin/sh}}"
"""
    _write_private(pod_dir / "login.sh", login)
    q = lambda p: '"' + str(p) + '"'  # noqa: E731 - sshd_config quoting
    config = "\n".join([
        f"Port {port}",
        f"ListenAddress {listen}",
        f"HostKey {q(pod_dir / HOST_KEY)}",
        "PidFile none",
        f"AuthorizedKeysFile {q(pod_dir / 'authorized_keys')}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        f"AllowUsers {user}",
        f"ForceCommand /bin/sh {q(pod_dir / 'login.sh')}",
        "X11Forwarding no",
        "PrintMotd no",
        "LogLevel INFO",
        "",
    ])
    path = pod_dir / "sshd_config"
    _write_private(path, config)
    return path


def _jupyter_busy(port: int, listen: str, token: str) -> bool:
    """Whether JupyterLab reports open connections or running kernels."""
    try:
        url = f"http://{listen}:{port}/api/status"
        req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=1) as r:
            status = json.loads(r.read())
        return bool(status.get("connections") or status.get("kernels"))
    except (OSError, ValueError):
        return False


class _Stop(Exception):
    """Raised by the signal handler to leave the watch loop at once."""


def _end_all(procs: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL after 3 s, to each process still running (same start time)."""
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, left = psutil.wait_procs(alive, timeout=3)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neocloud.podrun")
    parser.add_argument("--dir", required=True, type=Path, help="pod folder (config, keys)")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--ssh-port", required=True, type=int)
    parser.add_argument("--jupyter-port", type=int)
    args = parser.parse_args(argv)

    sshd = find_sshd()
    if sshd is None:
        print("neocloud pod: sshd (OpenSSH server) is not installed", file=sys.stderr)
        return 127
    pod_dir: Path = args.dir
    pod_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ensure_host_key(pod_dir)
    config = write_config(pod_dir, workdir=args.workdir, listen=args.listen,
                          port=args.ssh_port, user=getpass.getuser())
    if os.geteuid() == 0:  # sshd as root wants its privilege-separation folder
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise _Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    code = 0
    known: dict[int, psutil.Process] = {}
    """Every process seen under sshd (SSH sessions), ended with the pod."""
    token = os.environ.get("NEOCLOUD_JUPYTER_TOKEN", "")
    try:
        # sshd gets its own session so that a signal to the pod's process group reaches
        # this process first, which then ends every session too (sessions leave the group).
        server = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        children.append(server)
        if args.jupyter_port:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={args.listen}",
                 f"--port={args.jupyter_port}", f"--ServerApp.root_dir={args.workdir}",
                 "--ServerApp.token=" + token, "--allow-root"],
                stdin=subprocess.DEVNULL, cwd=args.workdir,
            ))
        print(f"neocloud pod: sshd on {args.listen}:{args.ssh_port}, working directory "
              f"{args.workdir}", flush=True)
        activity = pod_dir / "activity"
        activity.touch(mode=0o600)
        while True:
            if server.poll() is not None:
                code = server.returncode or 1
                print(f"neocloud pod: sshd exited with code {server.returncode}", flush=True)
                break
            busy = False
            try:
                sessions = psutil.Process(server.pid).children(recursive=True)
                busy = bool(sessions)
                for proc in sessions:
                    known.setdefault(proc.pid, proc)
            except psutil.Error:
                pass
            if not busy and args.jupyter_port:
                busy = _jupyter_busy(args.jupyter_port, args.listen, token)
            if busy:
                activity.touch()
            time.sleep(CHECK_S)
    except _Stop:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for child in children[:1]:
            try:
                for proc in psutil.Process(child.pid).children(recursive=True):
                    known.setdefault(proc.pid, proc)
            except psutil.Error:
                pass
        for child in children:
            if child.poll() is None:
                child.terminate()
        _end_all(list(known.values()))
        deadline = time.monotonic() + 5
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        (pod_dir / "env.sh").unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

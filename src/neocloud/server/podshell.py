"""Interactive shells into pods through the control plane.

A shell is a real ``ssh -tt`` client on a local pseudo-terminal, logged in to the pod's
own ``sshd`` with the control plane's key (``<home>/pod_client_key``, made once with
``ssh-keygen``; its public half is authorised in every pod). The WebSocket route relays
the terminal's bytes both ways and passes window-size changes on (``TIOCSWINSZ`` on the
terminal, then ``SIGWINCH`` to ``ssh``, which forwards them to the pod).
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
from pathlib import Path

KEY_FILE = "pod_client_key"
_key_lock = threading.Lock()


def client_key(home: Path) -> Path:
    """The control plane's SSH key for pods (ed25519, mode 0600), made when missing."""
    path = home / KEY_FILE
    with _key_lock:
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            "neocloud-control-plane", "-f", str(path)],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return path


def client_public_key(home: Path) -> str:
    """The public line of :func:`client_key`."""
    return client_key(home).with_suffix(".pub").read_text().strip()


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ShellSession:
    """One ``ssh -tt`` into a pod on a local pseudo-terminal.

    Args:
        home: control-plane data folder (for the client key).
        host, port, user: the pod's ``sshd``.
        cols, rows: initial terminal size (characters).
        command: run this instead of an interactive shell (``None``: a shell).

    Raises:
        OSError: ``ssh`` cannot be started.
    """

    def __init__(self, *, home: Path, host: str, port: int, user: str, cols: int = 80,
                 rows: int = 24, command: str | None = None):
        master, slave = os.openpty()
        try:
            self._spawn(slave, home=home, host=host, port=port, user=user,
                        cols=cols, rows=rows, command=command)
        except BaseException:
            os.close(master)  # a failed start leaks no descriptor
            raise
        self.fd = master

    def _spawn(self, slave: int, *, home: Path, host: str, port: int,
               user: str, cols: int, rows: int, command: str | None) -> None:
        """Start ``ssh`` on the terminal ``slave`` (closed here in every case)."""
        try:
            set_winsize(slave, cols, rows)
            cmd = ["ssh", "-tt", "-i", str(client_key(home)), "-p", str(port),
                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                   f"{user}@{host}"]
            if command:
                cmd.append(command)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_")}
            env.setdefault("TERM", "xterm-256color")
            self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                         start_new_session=True, env=env, close_fds=True)
        finally:
            os.close(slave)

    def resize(self, cols: int, rows: int) -> None:
        """Change the terminal size to ``cols`` × ``rows`` characters."""
        set_winsize(self.fd, max(1, cols), max(1, rows))
        try:
            os.kill(self.proc.pid, signal.SIGWINCH)
        except ProcessLookupError:
            pass

    def write(self, data: bytes) -> None:
        """Send keyboard input to the shell."""
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def read(self) -> bytes:
        """Output available now (call when the terminal is readable); ``b""`` at the end."""
        try:
            return os.read(self.fd, 65536)
        except OSError:  # EIO once the other side has closed
            return b""

    def close(self, timeout_s: float = 3.0) -> int | None:
        """End ``ssh`` (if still running) and close the terminal; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        try:
            os.close(self.fd)
        except OSError:
            pass
        return self.proc.returncode

"""``neocloud pod``: create, ls, status, start, stop, rm, shell, ssh."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.jobs import parse_mounts, status_text
from neocloud.cli.output import age, note, print_json, table
from neocloud.cli.params import check_fields, parse_pairs
from neocloud.models.pods import DEFAULT_IDLE_TIMEOUT_S, PodCreate, PodOut, PodStatus
from neocloud.sdk.pods import ShellConnection

app = typer.Typer(help="Dev pods: machines rented by the hour with SSH and a shell.",
                  no_args_is_help=True)
JSON_HELP = "Print JSON to stdout instead of text."
_OPTIONS = {"name": "NAME", "shape": "--shape", "volume": "--volume",
            "ssh_public_key": "--ssh-key", "env": "--env", "secrets": "--secret",
            "volumes": "--mount", "idle_timeout_s": "--idle-timeout"}
DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def default_ssh_key() -> Path | None:
    """The user's first public key in ``~/.ssh`` (ed25519, ecdsa, rsa), if any."""
    for name in DEFAULT_KEYS:
        p = Path.home() / ".ssh" / name
        if p.is_file():
            return p
    return None


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pod name."),
    shape: str = typer.Option("cpu.small", "--shape", help="Resources of the pod."),
    volume: str | None = typer.Option(None, "--volume",
                                      help="Working-directory volume (default NAME-home)."),
    ssh_key: Path | None = typer.Option(
        None, "--ssh-key", help="Public key file allowed to log in (default: "
                                "~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub)."),
    no_ssh_key: bool = typer.Option(False, "--no-ssh-key", help="Only the shell through "
                                                                "the control plane."),
    jupyter: bool = typer.Option(False, "--jupyter", help="Also run JupyterLab."),
    env: list[str] | None = typer.Option(None, "--env", "-e", help="KEY=VALUE (repeatable)."),
    secret: list[str] | None = typer.Option(None, "--secret", help="ENV=SECRET (repeatable)."),
    mount: list[str] | None = typer.Option(None, "--mount", help="VOLUME:PATH (repeatable)."),
    idle_timeout: float = typer.Option(DEFAULT_IDLE_TIMEOUT_S, "--idle-timeout", min=0,
                                       help="Stop after this many idle seconds (0: never)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until it runs."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create and start a pod."""
    key_text = None
    if not no_ssh_key:
        key_path = ssh_key or default_ssh_key()
        if key_path is not None:
            try:
                key_text = key_path.read_text().strip()
            except OSError as e:
                raise typer.BadParameter(f"cannot read {key_path}: {e.strerror}",
                                         param_hint="'--ssh-key'") from None
    env_map = parse_pairs(env, option="--env")
    secret_map = parse_pairs(secret, option="--secret")
    mounts = parse_mounts(mount, option="--mount")
    idle = idle_timeout or None
    check_fields(PodCreate, dict(name=name, shape=shape, volume=volume,
                                 ssh_public_key=key_text, env=env_map, secrets=secret_map,
                                 volumes=mounts, idle_timeout_s=idle), _OPTIONS)
    api = client(ctx)
    pod = api.pods.create(name, shape=shape, volume=volume, ssh_public_key=key_text,
                          jupyter=jupyter, env=env_map, secrets=secret_map,
                          volumes=[f"{m['volume']}:{m['path']}" for m in mounts],
                          idle_timeout_s=idle)
    output.print_warnings(pod.warnings)
    if not json_out:
        note(f"Created pod {name} ({shape}); working directory on volume {pod.volume}.")
    if wait:
        with output.err.status(f"Starting pod {name} ..."):
            pod = api.pods.wait(name)
    if json_out:
        print_json(pod)
    else:
        _print_pod(pod)


def _print_pod(pod: PodOut) -> None:
    head = Text(f"{pod.name}  ", style="bold")
    head.append_text(status_text(pod.status.value))
    output.out.print(head)
    where = f" on {pod.node}" if pod.node else ""
    idle = f"{pod.idle_timeout_s:g} s" if pod.idle_timeout_s else "none"
    output.out.print(Text(f"shape: {pod.shape}{where}   volume: {pod.volume}   "
                          f"idle timeout: {idle}"))
    if pod.reason:
        output.out.print(Text(f"reason: {pod.reason}"))
    if pod.ssh is not None:
        if pod.has_ssh_key:
            output.out.print(Text(f"ssh:    {pod.ssh.command}"))
        output.out.print(Text(f"shell:  neocloud pod shell {pod.name}"))
    if pod.jupyter_url:
        output.out.print(Text(f"jupyter: {pod.jupyter_url}"))


@app.command("ls")
def ls(ctx: typer.Context, json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
       ) -> None:
    """Pods of the workspace."""
    pods = client(ctx).pods.list()
    if json_out:
        print_json(pods)
        return
    rows = [(p.name, status_text(p.status.value), p.shape, p.volume,
             p.ssh.port if p.ssh else None, f"{age(p.created_at)} ago", p.reason)
            for p in pods]
    output.out.print(table(("NAME", "STATUS", "SHAPE", "VOLUME", "SSH PORT", "CREATED",
                            "REASON"), rows))


@app.command("status")
def status(ctx: typer.Context, name: str = typer.Argument(..., help="Pod name."),
           json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """A pod's state, how to reach it and why it is where it is."""
    pod = client(ctx).pods.get(name)
    if json_out:
        print_json(pod)
    else:
        _print_pod(pod)


@app.command("start")
def start(ctx: typer.Context, name: str = typer.Argument(..., help="Pod name."),
          wait: bool = typer.Option(True, "--wait/--no-wait")) -> None:
    """Start a stopped pod (its files are where it left them)."""
    api = client(ctx)
    pod = api.pods.start(name)
    if wait:
        with output.err.status(f"Starting pod {name} ..."):
            pod = api.pods.wait(name)
    _print_pod(pod)


@app.command("stop")
def stop(ctx: typer.Context, name: str = typer.Argument(..., help="Pod name."),
         wait: bool = typer.Option(True, "--wait/--no-wait")) -> None:
    """Stop a pod; billing stops, files stay on its volume."""
    api = client(ctx)
    pod = api.pods.stop(name)
    if wait:
        with output.err.status(f"Stopping pod {name} ..."):
            pod = api.pods.wait(name, PodStatus.stopped, PodStatus.failed)
    note(f"Pod {name}: {pod.status.value}.")


@app.command("rm")
def rm(ctx: typer.Context, name: str = typer.Argument(..., help="Pod name.")) -> None:
    """Stop and delete a pod (its volume is kept)."""
    client(ctx).pods.delete(name)
    note(f"Deleting pod {name}; its volume is kept.")


@app.command("ssh")
def ssh(ctx: typer.Context, name: str = typer.Argument(..., help="Pod name."),
        args: list[str] | None = typer.Argument(None, help="More ssh arguments / a command.")
        ) -> None:
    """Run ssh into the pod with your key (replaces this process)."""
    pod = client(ctx).pods.get(name)
    if pod.ssh is None:
        raise typer.BadParameter(f"pod {name} is {pod.status.value}, not running",
                                 param_hint="NAME")
    cmd = ["ssh", "-p", str(pod.ssh.port), f"{pod.ssh.user}@{pod.ssh.host}", *(args or [])]
    os.execvp("ssh", cmd)


@app.command("shell")
def shell(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pod name."),
    command: str | None = typer.Option(None, "--command", "-c",
                                       help="Run this instead of an interactive shell."),
) -> None:
    """An interactive shell in the pod, through the control plane (no SSH key needed)."""
    cols, rows = _size()
    conn = client(ctx).pods.shell(name, cols=cols, rows=rows, command=command)
    code = relay(conn, sys.stdin.fileno(), sys.stdout.fileno())
    raise typer.Exit(code)


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


def relay(conn: ShellConnection, stdin_fd: int, stdout_fd: int) -> int:
    """Copy stdin to the shell and the shell to stdout until the shell exits; puts a
    terminal into raw mode meanwhile and passes window-size changes on. Returns the
    shell's exit code (1 when unknown)."""
    code: dict[str, Any] = {"code": None}
    done = threading.Event()

    def pump_out() -> None:
        try:
            while True:
                frame = conn.recv()
                if isinstance(frame, bytes):
                    os.write(stdout_fd, frame)
                    continue
                msg = json.loads(frame)
                if msg.get("type") == "exit":
                    code["code"] = msg.get("code")
                    return
        except Exception:  # connection closed
            return
        finally:
            done.set()

    reader = threading.Thread(target=pump_out, daemon=True)
    reader.start()
    tty_state = None
    old_winch = None
    if os.isatty(stdin_fd):
        import termios
        import tty

        tty_state = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)

        def on_winch(_sig: int, _frame: FrameType | None) -> None:
            cols, rows = _size()
            conn.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

        old_winch = signal.signal(signal.SIGWINCH, on_winch)
    try:
        eof = False
        while not done.is_set():
            if eof:
                done.wait(0.2)
                continue
            ready, _, _ = select.select([stdin_fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(stdin_fd, 65536)
            if not data:
                eof = True  # piped input ended: wait for the shell to finish
                continue
            try:
                conn.send(data)
            except Exception:  # the shell exited and closed the connection first
                done.wait(2.0)
                break
    finally:
        if tty_state is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, tty_state)
            signal.signal(signal.SIGWINCH, old_winch)
        conn.close()
    rc = code["code"]
    return int(rc) if isinstance(rc, int) else 1


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="pod")

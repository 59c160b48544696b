"""Start the control plane: ``neocloud up`` (local cloud, logged in) and ``neocloud server``."""

from __future__ import annotations

import errno
import logging
import shlex
import socket
from pathlib import Path
from types import FrameType

import uvicorn

from neocloud.errors import Unavailable
from neocloud.server.app import create_app, prepare_database
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.engine import Database
from neocloud.server.homelock import hold_home
from neocloud.server.settings import Settings


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise Unavailable(
                    f"port {port} on {host} is already in use (is neocloud already up?); "
                    "pick another with --port"
                ) from e
            raise Unavailable(f"cannot listen on {host}:{port}: {e.strerror}") from e


class _Server(uvicorn.Server):
    """uvicorn's server, but a Ctrl-C or SIGTERM that led to a clean shutdown ends the
    process with exit code 0 instead of being raised again after shutdown."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def _run(settings: Settings, *, stop_replicas_on_exit: bool) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe
    app = create_app(settings, stop_replicas_on_exit=stop_replicas_on_exit)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", lifespan="on",
        access_log=False,  # formatted for every request even at level warning
        timeout_graceful_shutdown=int(settings.replica_stop_grace_s) + 5,
    )
    _Server(config).run()


def up(
    host: str | None = None,
    port: int | None = None,
    home: Path | None = None,
    backend: str | None = None,
    *,
    ray_address: str | None = None,
) -> None:
    """Start the whole cloud on this machine in the foreground.

    With ``backend="ray"`` work runs on the nodes that join the Ray cluster at
    ``ray_address`` (GCS ``host:port``; default: the ``ray_address`` setting), not here.

    Creates the data folder and database, the ``default`` workspace and (unless the CLI
    config already holds a valid one) an admin token, printed once; saves the CLI config
    so later commands of the same user are logged in; then serves until Ctrl-C or SIGTERM,
    which stops every replica it started.

    Raises:
        Unavailable: the port is taken.
        HomeInUse: another control plane runs on this data folder.
    """
    from rich.console import Console

    from neocloud import config as cli_config

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    if home:
        overrides["home"] = home
    if backend:
        overrides["backend"] = backend
    if ray_address:
        overrides["ray_address"] = ray_address
    settings = Settings(**overrides)  # type: ignore[arg-type]
    url = f"http://{settings.host}:{settings.port}"
    # One control plane per data folder (see neocloud.server.homelock); held until exit.
    home_lock = hold_home(settings.home, url=url)
    _check_port(settings.host, settings.port)
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    prepare_database(settings, db)
    try:
        saved = cli_config.load_config() if cli_config.home_dir() == settings.home else None
    except Exception:
        saved = None
    boot = bootstrap(db, known_token=saved.token if saved else None)
    db.dispose()
    console = Console(stderr=True, soft_wrap=True)
    token = boot.token or (saved.token if saved else None)
    if token:
        import os

        old_home = os.environ.get("NEOCLOUD_HOME")
        os.environ["NEOCLOUD_HOME"] = str(settings.home)
        try:
            path = cli_config.save_config(url, token)
        finally:
            if old_home is None:
                os.environ.pop("NEOCLOUD_HOME", None)
            else:
                os.environ["NEOCLOUD_HOME"] = old_home
    else:
        path = None
    console.print(f"[bold green]neocloud is up[/] at {url}  (data: {settings.home})")
    console.print(f"workspace: [bold]{boot.workspace}[/]")
    if boot.token:
        console.print(f"admin token (shown once): [bold]{boot.token}[/]")
    if path:
        console.print(login_message(path, settings.home, cli_config.home_dir()),
                      markup=False, highlight=False)
    try:
        _run(settings, stop_replicas_on_exit=True)
    finally:
        home_lock.close()


def login_message(config: Path, home: Path, shell_home: Path) -> str:
    """What ``up`` says once it saved the CLI config ``config`` for the data folder
    ``home``. When ``home`` is not the folder a plain CLI in this shell reads
    (``shell_home``: ``$NEOCLOUD_HOME`` or ``~/.neocloud``), the CLI finds that login only
    with ``NEOCLOUD_HOME`` set, and the message says how."""
    msg = f"the CLI is logged in (config: {config})."
    if home.expanduser().resolve() != shell_home.expanduser().resolve():
        msg += (" This is not the default data folder: other commands use it only with "
                f"NEOCLOUD_HOME set; run `export NEOCLOUD_HOME={shlex.quote(str(home))}` in "
                "the shells that use this cloud.")
    return msg + " Stop with Ctrl-C."


def serve(host: str | None = None, port: int | None = None) -> None:
    """Run the control plane alone (settings from the environment); replicas keep running
    across its restarts and are adopted again.

    Raises:
        Unavailable: the port is taken.
        HomeInUse: on SQLite, another control plane runs on this data folder.
    """
    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    home_lock = None
    if settings.resolved_database_url().startswith("sqlite"):
        # SQLite: one control plane per database (PostgreSQL ones share theirs).
        home_lock = hold_home(settings.home, url=f"http://{settings.host}:{settings.port}")
    _check_port(settings.host, settings.port)
    try:
        _run(settings, stop_replicas_on_exit=False)
    finally:
        if home_lock is not None:
            home_lock.close()

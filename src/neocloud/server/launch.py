"""Start the control plane: ``neocloud up`` (local cloud, logged in) and ``neocloud server``."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvicorn

from neocloud.errors import Unavailable
from neocloud.server.app import create_app, prepare_database
from neocloud.server.bootstrap import Bootstrap, TokenChoice, bootstrap
from neocloud.server.db.engine import Database
from neocloud.server.homelock import hold_database, hold_home
from neocloud.server.settings import Settings, load_settings


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
        DatabaseInUse: another control plane runs on this SQLite database.
    """
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
    settings = load_settings(**overrides)
    url = f"http://{settings.host}:{settings.port}"
    with _held(settings, url=url):
        _up(settings, url)


def _up(settings: Settings, url: str) -> None:
    """:func:`up` once the locks are held."""
    from rich.console import Console

    from neocloud import config as cli_config

    _check_port(settings.host, settings.port)
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    prepare_database(settings, db)
    with _cli_home(settings.home):  # the data folder's own config, not the shell's
        try:
            saved = cli_config.load_config()
        except Exception:
            saved = None
    boot = bootstrap(db, known_token=saved.token if saved else None)
    db.dispose()
    console = Console(stderr=True, soft_wrap=True)
    token = boot.token or (saved.token if saved else None)
    path = None
    if token:
        with _cli_home(settings.home):
            path = cli_config.save_config(url, token)
    console.print(f"[bold green]neocloud is up[/] at {url}  (data: {settings.home})")
    console.print(f"workspace: [bold]{boot.workspace}[/]")
    console.print(token_message(boot), markup=False, highlight=False)
    if path:
        console.print(login_message(path, settings.home, cli_config.home_dir()),
                      markup=False, highlight=False)
    _run(settings, stop_replicas_on_exit=True)


@contextmanager
def _held(settings: Settings, *, url: str) -> Iterator[None]:
    """Hold the data folder's lock and, on SQLite, the database's (see
    :mod:`neocloud.server.homelock`) while the control plane runs: one control plane per
    data folder and per SQLite database.

    Raises:
        HomeInUse: another control plane runs on this data folder.
        DatabaseInUse: another control plane runs on this SQLite database.
    """
    home_lock = hold_home(settings.home, url=url)
    try:
        db_lock = hold_database(settings.resolved_database_url(), url=url)
    except BaseException:
        home_lock.close()
        raise
    try:
        yield
    finally:
        if db_lock is not None:
            db_lock.close()
        home_lock.close()


@contextmanager
def _cli_home(home: Path) -> Iterator[None]:
    """``NEOCLOUD_HOME`` set to ``home`` for the block: the CLI config read and written is
    that data folder's."""
    old_home = os.environ.get("NEOCLOUD_HOME")
    os.environ["NEOCLOUD_HOME"] = str(home)
    try:
        yield
    finally:
        if old_home is None:
            os.environ.pop("NEOCLOUD_HOME", None)
        else:
            os.environ["NEOCLOUD_HOME"] = old_home


def token_message(boot: Bootstrap) -> str:
    """What ``up`` says of the admin token: the new one (its secret, shown once) or the
    one it reused from the data folder's CLI config."""
    if boot.choice is TokenChoice.reused:
        return (f"admin token: {boot.token_name}, reused from this data folder's config "
                "(no new token)")
    why = ("; the saved one no longer works: revoked?"
           if boot.choice is TokenChoice.replaced else "")
    return f"admin token {boot.token_name} (shown once{why}): {boot.token}"


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
        DatabaseInUse: another control plane runs on this SQLite database.
    """
    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = load_settings(**overrides)
    if not settings.resolved_database_url().startswith("sqlite"):
        # PostgreSQL: several control planes share one database and data folder
        _check_port(settings.host, settings.port)
        _run(settings, stop_replicas_on_exit=False)
        return
    with _held(settings, url=f"http://{settings.host}:{settings.port}"):
        _check_port(settings.host, settings.port)
        _run(settings, stop_replicas_on_exit=False)

"""A control plane for fuzzing: a fresh data folder, SQLite (or ``--database-url``), every
backend kind simulated (nothing real is started), on a free loopback port.

Writes ``<url> <admin token> <its name>`` to ``--ready-file`` once it serves, then runs
until killed.

    python tests/fuzz/serve.py --home /tmp/x --ready-file /tmp/x/ready
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.services.workspaces import authenticate
from neocloud.server.settings import Settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    url = args.database_url or f"sqlite:///{args.home / 'neocloud.db'}"
    fake = FakeBackend()
    app = create_app(Settings(home=args.home, database_url=url, register_local_node=False,
                              reconcile_interval_s=0.5),
                     backends={"fake": fake, "local": fake, "ray": fake})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the control plane did not start")
        time.sleep(0.05)
    token = bootstrap(app.state.db).token
    assert token
    with app.state.db.session() as s:
        caller = authenticate(s, secret=token)
    assert caller is not None
    tmp = args.ready_file.with_suffix(".tmp")
    tmp.write_text(f"http://127.0.0.1:{port} {token} {caller.token_name}\n")
    tmp.rename(args.ready_file)
    thread.join()


if __name__ == "__main__":
    main()

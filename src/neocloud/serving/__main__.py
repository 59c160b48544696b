"""``python -m neocloud.serving SERVICE --host H --port P [--name N] [--model M]
[--workers N] [--reload]``: run one replica (see :func:`neocloud.serving.runner.run`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType


def _stop_before_start(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until SIGTERM; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m neocloud.serving", description=__doc__)
    ap.add_argument("service", help="embeddings | chat | package.module:Class | file.py:Class")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--name", default=None, help="served model name (default: service name)")
    ap.add_argument("--model", default=None, help="model reference: hf:org/name or a folder")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reload", action="store_true", help="restart on file changes")
    ap.add_argument("--grace-period", type=float, default=None,
                    help="seconds in-flight requests get after SIGTERM (default 30)")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # Until the runner installs its own handlers (after imports that take a good part of a
    # second), SIGTERM/SIGINT stop a process that has started nothing yet: exit 0, the
    # asked-for stop, rather than death by the signal.
    signal.signal(signal.SIGTERM, _stop_before_start)
    signal.signal(signal.SIGINT, _stop_before_start)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from neocloud.serving.runner import run

    try:
        run(args.service, host=args.host, port=args.port, name=args.name, model=args.model,
            workers=args.workers, reload=args.reload, grace_period_s=args.grace_period,
            log_level=args.log_level, reuse_port=args.reuse_port)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

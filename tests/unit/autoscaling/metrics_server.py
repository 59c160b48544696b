"""A stand-in for a replica's ``/metrics``: a real HTTP server on loopback (stdlib)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from neocloud.serving.engine_metrics import EngineMetrics


def engine_text(*, running: int = 0, waiting: int = 0, kv_usage: float = 0.0,
                tokens_in_flight: int | None = None) -> str:
    """The exposition text a built-in engine replica serves, by the engine's own renderer."""
    return EngineMetrics().render(running=running, waiting=waiting, kv_usage=kv_usage,
                                  prompt_tokens=100, generation_tokens=50,
                                  preemptions=0, tokens_in_flight=tokens_in_flight).decode()


class MetricsServer:
    """Answers ``GET /metrics`` with ``body`` and ``status``; with ``hold`` set, each
    request waits until :meth:`release` (a replica that does not answer)."""

    def __init__(self, body: str = "", status: int = 200, *, hold: bool = False) -> None:
        self.body = body
        self.status = status
        self.requests = 0
        self._gate = threading.Event()
        if not hold:
            self._gate.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                owner.requests += 1
                owner._gate.wait(30)
                data = owner.body.encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

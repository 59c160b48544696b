"""Noticing that a client went away while its request is being proxied.

An ASGI server reports a closed client connection as an ``http.disconnect`` message from
``receive()``; someone must be awaiting ``receive()`` to see it. Starting a watcher task for
every request would cost more than many whole requests, so a gateway-wide sweeper does it
lazily: every ``delay_s`` (only while requests are in flight) it starts a watcher task for
each request older than ``delay_s``. Requests that finish sooner cost one set insertion and
removal; a client that leaves a longer request is noticed within ``2 * delay_s`` at worst.

On disconnect the watcher marks the flight ``gone`` and aborts its replica connection, so
the replica sees its peer go away and can stop work.
"""

from __future__ import annotations

import asyncio
import time

from neocloud.asgi import Receive, watch_disconnect
from neocloud.gateway.client import Connection


class Flight:
    """One proxied request as the watcher sees it.

    Attributes:
        conn: the replica connection in use, if any (aborted on disconnect).
        gone: the client disconnected.
        done: the response is complete; a later ``http.disconnect`` means nothing.
        delivered: the client has the whole answer although the response is not complete
            (an event stream relayed its ``data: [DONE]`` event): a client that leaves now
            did not cut it short, and the request keeps its status.
    """

    __slots__ = ("conn", "gone", "done", "delivered", "receive", "since", "task")

    def __init__(self, receive: Receive) -> None:
        self.conn: Connection | None = None
        self.gone = False
        self.done = False
        self.delivered = False
        self.receive = receive
        self.since = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def on_disconnect(self) -> None:
        """The client went away: mark the flight ``gone`` and abort its replica connection
        (nothing, once the response is complete)."""
        if not self.done:
            self.gone = True
            if self.conn is not None:
                self.conn.abort()


class DisconnectWatcher:
    """Starts watcher tasks for requests that last longer than ``delay_s`` seconds."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self._unwatched: set[Flight] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, receive: Receive) -> Flight:
        """Track a request whose body has been fully received."""
        flight = Flight(receive)
        self._unwatched.add(flight)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._sweep)
        return flight

    def end(self, flight: Flight) -> None:
        """Stop tracking ``flight`` (its response is complete or abandoned)."""
        flight.done = True
        self._unwatched.discard(flight)
        if flight.task is not None:
            flight.task.cancel()
            flight.task = None

    def _sweep(self) -> None:
        self._timer = None
        if not self._unwatched:
            return
        loop = asyncio.get_running_loop()
        limit = time.monotonic() - self.delay_s
        old = [f for f in self._unwatched if f.since <= limit]
        for f in old:
            self._unwatched.discard(f)
            f.task = loop.create_task(watch_disconnect(f.receive, f))
        if self._unwatched:
            self._timer = loop.call_later(self.delay_s, self._sweep)

    def close(self) -> None:
        """Cancel the sweeper (watcher tasks end with their requests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unwatched.clear()

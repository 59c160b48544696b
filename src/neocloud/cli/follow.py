"""Following replica logs by polling the tail of each log (``neocloud logs -f``).

The REST API serves the last N lines of a log, not byte offsets, so each poll fetches a
window of the last :data:`WINDOW` lines and prints the lines that the previous window did
not end with. While a log is shorter than the window this is exact; once it is longer, a
window made only of one repeated line cannot tell how many copies are new, and the
smallest count consistent with both windows is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from neocloud.errors import NotFound
from neocloud.models import ReplicaStatus
from neocloud.sdk import Client

#: Lines fetched per replica and poll once following has begun.
WINDOW = 1000


def new_lines(previous: Sequence[str], current: Sequence[str]) -> list[str]:
    """The lines at the end of ``current`` that follow the end of ``previous``.

    Both are windows (the last lines) of one append-only log, ``previous`` taken before
    ``current``. The overlap is the longest suffix of ``previous`` that ``current`` starts
    with (fewest new lines); with no overlap (the log was replaced, or grew past the
    window) every line of ``current`` is new.
    """
    prev, cur = list(previous), list(current)
    for dropped in range(len(prev)):
        kept = len(prev) - dropped
        if kept <= len(cur) and prev[dropped] == cur[0] and prev[dropped:] == cur[:kept]:
            return cur[kept:]
    return cur


def follow(
    client: Client,
    name: str,
    *,
    replica: str | None,
    tail: int | None,
    interval_s: float,
    write: Callable[[str], None],
    on_gone: Callable[[], None] = lambda: None,
    max_polls: int | None = None,
) -> None:
    """Print new log lines of one replica (or of every live replica, each line prefixed
    with ``[ID]``) every ``interval_s`` seconds until the deployment or replica is gone
    (then ``on_gone`` is called) or ``max_polls`` polls were made (``None``: no limit;
    stop with Ctrl-C).

    The first poll of a replica prints its last ``tail`` lines (all when ``None``).

    Raises:
        NotFound: the deployment or replica does not exist at the first poll.
    """
    windows: dict[str, list[str]] = {}
    polls = 0
    while max_polls is None or polls < max_polls:
        polls += 1
        try:
            ids = [replica] if replica else _live_replicas(client, name)
            for rid in ids:
                first = rid not in windows
                if first:
                    # Fetch a whole window even when fewer lines are shown, so that the
                    # next window overlaps it.
                    size = None if tail is None else max(tail, WINDOW)
                    lines = client.deployments.logs(name, tail=size, replica=rid).splitlines()
                    fresh = lines if tail is None else lines[len(lines) - min(tail, len(lines)) :]
                else:
                    text = client.deployments.logs(name, tail=WINDOW, replica=rid)
                    lines = text.splitlines()
                    fresh = new_lines(windows[rid], lines)
                windows[rid] = lines[-WINDOW:]
                prefix = "" if replica else f"[{rid[:12]}] "
                for line in fresh:
                    write(prefix + line)
        except NotFound:
            if polls == 1:
                raise  # a wrong name or replica id, not a deployment that went away
            on_gone()
            return
        if max_polls is None or polls < max_polls:
            time.sleep(interval_s)


def _live_replicas(client: Client, name: str) -> list[str]:
    deployment = client.deployments.get(name)
    done = (ReplicaStatus.stopped,)
    return [r.id for r in deployment.replica_list if r.status not in done]

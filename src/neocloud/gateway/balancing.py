"""Choosing a replica for each request.

Power of two choices over outstanding requests (the default, ``"p2c"``)
-----------------------------------------------------------------------
The gateway counts, per replica, the requests it has sent there that have not finished
("outstanding"). For each request it samples two distinct replicas uniformly at random
from the candidates and sends the request to the one with fewer outstanding requests
(the first sampled on a tie, which is itself random). With one candidate that one is used.

Why: always picking the global minimum ("least") makes every gateway copy herd onto the
same replica when its view is stale, and needs a full scan; random choice ignores load.
Sampling two and taking the less loaded keeps most of the benefit of "least" (the maximum
load falls from about log n / log log n to log log n in the balls-into-bins model of
Azar, Broder, Karlin and Upfal, "Balanced Allocations", 1994) at O(1) cost per request,
and several gateway copies with independent views do not herd.

Candidates: the route's upstreams minus replicas already tried for this request and
minus replicas in cooldown after a refused connection. When cooldown would leave no
candidate, cooling replicas are used anyway (a replica may have recovered, and failing
outright helps nobody).

Policies are pluggable: anything with ``choose(candidates, load) -> Upstream`` works.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Protocol

from neocloud.gateway.types import Upstream


class ReplicaLoad:
    """Outstanding requests and connect-failure cooldowns per replica id (one per gateway)."""

    __slots__ = ("outstanding", "_cool_until", "cooldown_s")

    def __init__(self, cooldown_s: float = 2.0) -> None:
        self.outstanding: dict[str, int] = {}
        self._cool_until: dict[str, float] = {}
        self.cooldown_s = cooldown_s

    def begin(self, replica_id: str) -> None:
        """Count one more outstanding request on ``replica_id``."""
        self.outstanding[replica_id] = self.outstanding.get(replica_id, 0) + 1

    def end(self, replica_id: str) -> None:
        """Count one request on ``replica_id`` as finished."""
        n = self.outstanding.get(replica_id, 0) - 1
        if n > 0:
            self.outstanding[replica_id] = n
        else:
            self.outstanding.pop(replica_id, None)

    def mark_failed(self, replica_id: str, now: float | None = None) -> None:
        """Avoid ``replica_id`` for ``cooldown_s`` seconds (monotonic clock)."""
        t = time.monotonic() if now is None else now
        self._cool_until[replica_id] = t + self.cooldown_s

    def mark_ok(self, replica_id: str) -> None:
        """Forget a cooldown once the replica answered."""
        if self._cool_until:
            self._cool_until.pop(replica_id, None)

    def cooling(self, replica_id: str, now: float) -> bool:
        """Whether ``replica_id`` is in its cooldown at monotonic time ``now``."""
        until = self._cool_until.get(replica_id)
        if until is None:
            return False
        if until <= now:
            del self._cool_until[replica_id]
            return False
        return True

    def candidates(
        self, upstreams: Sequence[Upstream], tried: set[str] | None
    ) -> Sequence[Upstream]:
        """``upstreams`` minus ``tried``, minus cooling replicas unless that leaves none."""
        if tried:
            upstreams = [u for u in upstreams if u.replica_id not in tried]
        if not self._cool_until or not upstreams:
            return upstreams
        now = time.monotonic()
        healthy = [u for u in upstreams if not self.cooling(u.replica_id, now)]
        return healthy or upstreams


class BalancingPolicy(Protocol):
    """Picks one of ``candidates`` (never empty) given the current ``load``."""

    def choose(self, candidates: Sequence[Upstream], load: ReplicaLoad) -> Upstream: ...


class PowerOfTwoChoices:
    """Two random candidates; the one with fewer outstanding requests wins (see module doc)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Upstream], load: ReplicaLoad) -> Upstream:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = int(self._rng.random() * n)
        j = int(self._rng.random() * (n - 1))
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        out = load.outstanding
        return b if out.get(b.replica_id, 0) < out.get(a.replica_id, 0) else a


class LeastOutstanding:
    """The candidate with the fewest outstanding requests; ties go to a random one."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Upstream], load: ReplicaLoad) -> Upstream:
        out = load.outstanding
        best = min(out.get(u.replica_id, 0) for u in candidates)
        ties = [u for u in candidates if out.get(u.replica_id, 0) == best]
        return ties[0] if len(ties) == 1 else self._rng.choice(ties)


class RoundRobin:
    """Candidates in turn (one counter shared by all routes of the gateway)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[Upstream], load: ReplicaLoad) -> Upstream:
        return candidates[next(self._counter) % len(candidates)]


class RandomChoice:
    """A uniformly random candidate."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Upstream], load: ReplicaLoad) -> Upstream:
        return self._rng.choice(candidates)


def make_policy(name: str) -> BalancingPolicy:
    """The policy called ``name``; raises ``ValueError`` for an unknown name."""
    policies: dict[str, type] = {
        "p2c": PowerOfTwoChoices,
        "least": LeastOutstanding,
        "round_robin": RoundRobin,
        "random": RandomChoice,
    }
    try:
        return policies[name]()  # type: ignore[no-any-return]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose one of {sorted(policies)}") from None

"""Choosing the engine thread's torch intra-op threads from its own step times.

On an idle CPU one OpenMP thread per core is fastest. On a CPU shared with other busy
processes it is the other way round: every operator of a forward is a parallel region that
ends at a barrier, and a thread the kernel has descheduled holds up the others at each of
the few hundred barriers of a step. Measured on a 2-core machine at a load average of 8, a
bfloat16 decode step of SmolLM2-135M at 32 rows took 0.8-1.7 s with 2 threads and
about 0.1 s with 1; on the same machine idle, 2 threads gave 1.7 times the tokens/s of 1.
Neither setting is right for a replica that cannot know what else runs on its node, so
by default the engine measures.

:class:`ThreadChooser` is the policy, a pure function of the step times it is given (no
clock, no torch): decode steps are grouped by batch size (rows rounded up to a power of
two, since a step's time grows with its rows); in each group every candidate thread count
is tried first, then the one with the lowest recent mean step time (an exponentially
weighted mean, :data:`EWMA_WEIGHT` for the newest step) is used, and every
``explore_every`` steps of a group the other candidates get ``trials`` steps each, their
old means dropped, so that a change in load is noticed (the cost: those steps run at the
slower setting when nothing changed). Steps that prefill are not measured (their time
depends on the prompts) and run with the choice of their batch group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Weight of the newest step time in a candidate's mean.
EWMA_WEIGHT = 0.3
#: Decode steps of a group between two rounds of trying the other candidates.
DEFAULT_EXPLORE_EVERY = 64
#: Steps each other candidate runs in a round of trials.
DEFAULT_TRIALS = 3

__all__ = ["ThreadChooser", "batch_group", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1:
    the most threads the chooser tries (torch's own count can be lowered process-wide by
    another component's ``torch.set_num_threads``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def batch_group(rows: int) -> int:
    """The group of a step with ``rows`` rows: ``rows`` rounded up to a power of two."""
    return 1 << max(0, rows - 1).bit_length()


@dataclass
class _Group:
    mean: dict[int, float] = field(default_factory=dict)  # threads -> mean step seconds
    steps: int = 0
    queue: list[int] = field(default_factory=list)  # trials still to run


class ThreadChooser:
    """Picks a thread count per step among ``candidates`` (see the module docstring).

    Args:
        candidates: thread counts to choose from (e.g. ``(1, 2)``), at least one, each
            at least 1.
        explore_every: decode steps of a batch group between rounds of trials.
        trials: steps per other candidate in a round.

    Raises:
        ValueError: no candidate, a candidate below 1, or ``explore_every``/``trials``
            below 1.
    """

    def __init__(self, candidates: tuple[int, ...], explore_every: int = DEFAULT_EXPLORE_EVERY,
                 trials: int = DEFAULT_TRIALS) -> None:
        if not candidates or min(candidates) < 1:
            raise ValueError(f"thread candidates must be one or more counts >= 1: {candidates}")
        if explore_every < 1 or trials < 1:
            raise ValueError("explore_every and trials must be >= 1")
        self.candidates = tuple(dict.fromkeys(candidates))
        self.explore_every = explore_every
        self.trials = trials
        self._groups: dict[int, _Group] = {}

    def best(self, rows: int) -> int:
        """The thread count with the lowest mean step time in the group of ``rows`` (the
        largest candidate while none was measured there)."""
        g = self._groups.get(batch_group(rows))
        if g is None or not g.mean:
            return max(self.candidates)
        return min(g.mean, key=lambda n: (g.mean[n], -n))

    def pick(self, rows: int, measured: bool) -> int:
        """Threads for the next step with ``rows`` rows; ``measured``: whether its time
        will be given to :meth:`record` (decode-only steps), else the group's best."""
        if not measured:
            return self.best(rows)
        g = self._groups.setdefault(batch_group(rows), _Group())
        untried = [n for n in self.candidates if n not in g.mean]
        if untried:
            return untried[0]
        if g.queue:
            return g.queue[0]
        return self.best(rows)

    def record(self, rows: int, threads: int, seconds: float) -> None:
        """The time of a decode step with ``rows`` rows that ran on ``threads`` threads."""
        g = self._groups.setdefault(batch_group(rows), _Group())
        old = g.mean.get(threads)
        g.mean[threads] = seconds if old is None else (
            EWMA_WEIGHT * seconds + (1 - EWMA_WEIGHT) * old)
        if g.queue and g.queue[0] == threads:
            g.queue.pop(0)
        g.steps += 1
        if g.steps % self.explore_every == 0 and not g.queue:
            best = self.best(rows)
            g.queue = [n for n in self.candidates if n != best for _ in range(self.trials)]
            for n in g.queue:  # stale: the trials measure them afresh
                g.mean.pop(n, None)

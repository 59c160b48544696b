"""The shape every autoscaling policy has: a window of samples and the time in, a decision
and the next policy state out.

A policy object holds only its settings; what it must remember between ticks (delay
history, burst mode) is an immutable state value it returns and is given back next tick, so
a policy is a pure function that the control plane, the simulator and the tests call alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from neocloud.models.autoscaling import ScalingDecision, ScalingReason
from neocloud.server.autoscaling.signals import Sample

S = TypeVar("S")


class Policy(Protocol[S]):
    """An autoscaling policy.

    Attributes:
        name: short name (``target``, ``ray-serve-default``, ``fixed``).
        history_s: seconds of samples before ``now`` the policy reads; the caller keeps at
            least this much.
    """

    @property
    def name(self) -> str: ...

    @property
    def history_s(self) -> float: ...

    def initial_state(self) -> S:
        """The state of a deployment the policy has not seen yet."""
        ...

    def decide(
        self, samples: Sequence[Sample], now: float, current: int, state: S
    ) -> tuple[ScalingDecision, S]:
        """Decide the replica count at ``now``.

        Args:
            samples: observations of the deployment, oldest first, none after ``now``.
            now: the time of the decision, seconds on the samples' clock.
            current: the replica count the deployment is asked to run now (its target,
                whether or not those replicas are ready yet).
            state: what this policy returned last tick (``initial_state()`` at first).
        """
        ...


def clamp(n: int, low: int, high: int) -> int:
    """``n`` bounded to ``[low, high]``."""
    return max(low, min(high, n))


def event_reason(reason: ScalingReason) -> str:
    """The event reason of a scaling decision, in the CamelCase of every other event
    reason (``BURST_SCALE_UP`` -> ``BurstScaleUp``); the stable code itself is in the
    event's message (:meth:`ScalingDecision.message`)."""
    return "".join(part.capitalize() for part in reason.value.split("_"))

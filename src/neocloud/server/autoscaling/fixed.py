"""A fleet of a fixed size: the baseline that sizes for the peak and never changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neocloud.models.autoscaling import AutoscalingSignal, ScalingDecision, ScalingReason
from neocloud.server.autoscaling.signals import Sample


@dataclass(frozen=True)
class FixedPolicy:
    """Always ``replicas`` replicas, whatever the load."""

    replicas: int
    name: str = "fixed"

    @property
    def history_s(self) -> float:
        return 0.0

    def initial_state(self) -> None:
        return None

    def decide(
        self, samples: Sequence[Sample], now: float, current: int, state: None
    ) -> tuple[ScalingDecision, None]:
        latest = samples[-1] if samples else None
        return ScalingDecision(
            at=now, current=current, ready=latest.ready_replicas if latest else 0,
            desired=self.replicas, reason=ScalingReason.fixed,
            signal=AutoscalingSignal.in_flight, target=0.0,
            in_flight=latest.in_flight if latest else 0,
        ), None

"""Autoscaling policies: pure functions of a window of load samples and the time.

No I/O and no clock: the caller (the deployment reconciler, the simulator, a test) passes
the samples, ``now`` and the replica count, and gets a :class:`ScalingDecision` with the
metric values behind it plus the state to pass back next tick. See ``README.md``.
"""

from __future__ import annotations

from neocloud.models.autoscaling import (
    AutoscalingConfig,
    AutoscalingSignal,
    ScalingDecision,
    ScalingReason,
)
from neocloud.server.autoscaling.base import Policy, clamp, event_reason
from neocloud.server.autoscaling.fixed import FixedPolicy
from neocloud.server.autoscaling.policy import TargetState, TargetTrackingPolicy
from neocloud.server.autoscaling.ray_default import RayServeDefaultPolicy, RayServeSettings
from neocloud.server.autoscaling.signals import (
    ArrivalRate,
    Sample,
    SampleWindow,
    in_window,
    window_mean,
)

__all__ = [
    "ArrivalRate",
    "AutoscalingConfig",
    "AutoscalingSignal",
    "FixedPolicy",
    "Policy",
    "RayServeDefaultPolicy",
    "RayServeSettings",
    "Sample",
    "SampleWindow",
    "ScalingDecision",
    "ScalingReason",
    "TargetState",
    "TargetTrackingPolicy",
    "clamp",
    "event_reason",
    "in_window",
    "window_mean",
]

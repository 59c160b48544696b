"""Autoscaling of deployments: the per-deployment settings and the decision record.

``AutoscalingConfig`` is what a deployment stores (``deploy --min 0 --max 4
--target-inflight 2``); ``ScalingDecision`` is what the policy answers each tick, with the
metric values behind it, so that every change of the replica count can be recorded as an
event that says why. The policies themselves live in ``neocloud.server.autoscaling``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator

from neocloud.models.common import OutModel, WireModel

#: The most replicas a deployment may ask for (the bound of ``DeploymentCreate.replicas``).
MAX_REPLICAS = 64


class AutoscalingSignal(StrEnum):
    """The load signal a deployment scales on; ``target`` is its value per replica.

    Every signal is read as a deployment total (the sum over its replicas) and divided by
    ``target`` to get the replicas it asks for.
    """

    in_flight = "in_flight"
    """Requests in progress or held at the gateway (count)."""
    requests_per_s = "requests_per_s"
    """Arrivals per second at the gateway."""
    queue_depth = "queue_depth"
    """Requests waiting in the replicas' batch queues, not yet being served (count)."""
    tokens_in_flight = "tokens_in_flight"
    """Prompt plus generated tokens of the requests an LLM engine holds (tokens)."""
    kv_cache_use = "kv_cache_use"
    """Fraction of an LLM engine's KV cache in use (0..1 per replica; summed over replicas)."""
    waiting_requests = "waiting_requests"
    """Requests an LLM engine has accepted but not yet scheduled (count)."""


class AutoscalingConfig(WireModel):
    """How one deployment follows its load. Times are seconds.

    The policy (``neocloud.server.autoscaling.TargetTrackingPolicy``) averages ``signal``
    over a stable window of ``window_s`` and a panic window of ``panic_window_s``, asks for
    ``ceil(average / target)`` replicas, and changes the count only when the
    recommendation has held for ``scale_up_delay_s`` (up) or ``scale_down_delay_s`` (down);
    going to zero waits until ``scale_to_zero_delay_s`` have passed since the last request
    (and the stable window holds no load), however many scale-downs came in between.
    When the panic-window average asks for ``panic_threshold`` times the ready replicas or
    more it scales up at once and does not scale down for a stable window.

    Raises:
        pydantic.ValidationError: ``max_replicas < min_replicas``, ``panic_window_s >
            window_s``, ``scale_to_zero_delay_s < scale_down_delay_s``, or
            ``kv_cache_use`` with a ``target`` above 1.
    """

    min_replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(default=4, ge=1, le=MAX_REPLICAS, validate_default=True)
    signal: AutoscalingSignal = AutoscalingSignal.in_flight
    target: float = Field(default=2.0, gt=0, le=1_000_000, validate_default=True)
    """Value of ``signal`` one replica should carry (e.g. 2 requests in flight)."""
    window_s: float = Field(default=60.0, gt=0, le=3600)
    """Stable (look-back) window the signal is averaged over."""
    panic_window_s: float = Field(default=6.0, gt=0, le=3600, validate_default=True)
    """Short window that detects a burst."""
    panic_threshold: float = Field(default=2.0, gt=1, le=100)
    """Burst mode when the panic window asks for this many times the ready replicas."""
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    """Dead band: scale up only above ``(1 + tolerance) * target`` per replica, down only
    when the remaining replicas would stay below ``(1 - tolerance) * target``."""
    scale_up_delay_s: float = Field(default=0.0, ge=0, le=3600)
    scale_down_delay_s: float = Field(default=120.0, ge=0, le=86400)
    scale_to_zero_delay_s: float = Field(default=600.0, ge=0, le=86400,
                                         validate_default=True)

    # each rule checks a field against one defined before it (so in ``info.data``, unless
    # that one failed already), so that an error names the field that breaks it: the API
    # answers ``autoscaling.scale_to_zero_delay_s`` and the CLI names its option. The
    # checked fields validate their defaults too: a field left out is still compared
    # (``scale_down_delay_s`` 71080 with the default delay to zero, 600, was accepted)
    @field_validator("max_replicas")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_replicas")
        if low is not None and value < low:
            raise ValueError(f"max_replicas ({value}) must be at least min_replicas ({low})")
        return value

    @field_validator("target")
    @classmethod
    def _target_fits_signal(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("signal") is AutoscalingSignal.kv_cache_use and value > 1:
            raise ValueError("target of kv_cache_use is a fraction of the cache (0..1]")
        return value

    @field_validator("panic_window_s")
    @classmethod
    def _panic_within_window(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("window_s")
        if window is not None and value > window:
            raise ValueError(
                f"panic_window_s ({value}) must not exceed window_s ({window})")
        return value

    @field_validator("scale_to_zero_delay_s")
    @classmethod
    def _zero_after_down(cls, value: float, info: ValidationInfo) -> float:
        down = info.data.get("scale_down_delay_s")
        if down is not None and value < down:
            raise ValueError(
                f"scale_to_zero_delay_s ({value}) must be at least scale_down_delay_s "
                f"({down})")
        return value


class ScalingReason(StrEnum):
    """Why a decision asks for the replica count it does (stable codes)."""

    steady = "STEADY"
    """The load is within the dead band of the current count."""
    scale_up = "SCALE_UP"
    scale_down = "SCALE_DOWN"
    burst = "BURST_SCALE_UP"
    """Panic mode: scaled up at once on the short window."""
    burst_hold = "BURST_HOLD"
    """Panic mode: no scale-down until the burst has passed a stable window."""
    scale_from_zero = "SCALE_FROM_ZERO"
    scale_to_zero = "SCALE_TO_ZERO"
    waiting_up = "WAITING_SCALE_UP_DELAY"
    """A higher count is recommended but not yet for ``scale_up_delay_s``."""
    waiting_down = "WAITING_SCALE_DOWN_DELAY"
    """A lower count is recommended but not yet for ``scale_down_delay_s``."""
    waiting_zero = "WAITING_SCALE_TO_ZERO_DELAY"
    """Idle, but not yet ``scale_to_zero_delay_s`` since the last request (or one is in
    flight)."""
    bounds = "BOUNDS"
    """Moved into ``[min_replicas, max_replicas]`` (e.g. after the bounds changed)."""
    no_metrics = "NO_METRICS"
    """No sample in the window: the count is kept."""
    fixed = "FIXED"
    """A policy that does not follow the load."""
    planned = "PLANNED"
    """A schedule computed in advance (the simulator's oracle, which knows the future)."""


class ScalingDecision(OutModel):
    """One tick's answer: the replica count to run and the values it was computed from.

    ``changed`` is true when ``desired`` differs from ``current``; the control plane
    records such a decision as a deployment event.
    """

    at: float
    """The ``now`` the decision was made for (seconds, the caller's clock)."""
    current: int
    """Replicas the deployment was asked to run before this decision."""
    ready: int
    """Replicas ready in the latest sample."""
    desired: int
    reason: ScalingReason
    signal: AutoscalingSignal
    target: float
    stable_value: float | None = None
    """Average deployment total of ``signal`` over the stable window (None: no data)."""
    panic_value: float | None = None
    """Average over the panic window."""
    recommended: int | None = None
    """Replicas the stable window asks for before delays are applied."""
    in_flight: int = 0
    """Requests in flight or held at the gateway in the latest sample."""
    samples: int = 0
    """Samples in the stable window."""
    panic: bool = False

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    def message(self) -> str:
        """A one-line human text for the event (``3 -> 5: SCALE_UP, in_flight 9.8/2 ...``)."""
        stable = "n/a" if self.stable_value is None else f"{self.stable_value:.3g}"
        panic = "n/a" if self.panic_value is None else f"{self.panic_value:.3g}"
        return (f"{self.current} -> {self.desired}: {self.reason.value}; {self.signal.value} "
                f"stable {stable}, burst {panic}, target {self.target:g} per replica, "
                f"{self.ready} ready")

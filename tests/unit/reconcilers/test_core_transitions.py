"""The status tables of the reconciler core (pure: no database)."""

from __future__ import annotations

import pytest

from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.models.jobs import JobStatus, WorkerStatus
from neocloud.models.pods import PodStatus
from neocloud.server.services.lifecycle import (
    HOLDS,
    JOB_IDLE,
    MAY_RUN,
    NEEDS_ALLOCATION,
    TRANSITIONS,
    allowed,
)

ENUMS = (DeploymentStatus, ReplicaStatus, JobStatus, WorkerStatus, PodStatus)


@pytest.mark.parametrize("enum", ENUMS)
def test_every_status_has_a_row(enum: type) -> None:
    assert set(TRANSITIONS[enum]) == set(enum)
    for targets in TRANSITIONS[enum].values():
        assert targets <= set(enum)


@pytest.mark.parametrize(("enum", "terminal"), [
    (ReplicaStatus, ReplicaStatus.stopped),
    (JobStatus, JobStatus.succeeded), (JobStatus, JobStatus.failed),
    (JobStatus, JobStatus.stopped),
    (WorkerStatus, WorkerStatus.succeeded), (WorkerStatus, WorkerStatus.failed),
    (WorkerStatus, WorkerStatus.stopped),
    (DeploymentStatus, DeploymentStatus.deleting),
])
def test_nothing_leaves_a_terminal_status(enum: type, terminal: str) -> None:
    assert TRANSITIONS[enum][terminal] == frozenset()
    assert not any(allowed(enum, terminal, s) for s in enum if s != terminal)


def test_a_stopped_job_is_never_scheduled_again() -> None:
    """The lost stop of the issue, as a transition: stopped -> starting is refused."""
    assert not allowed(JobStatus, "stopped", "starting")
    assert not allowed(JobStatus, "stopped", "running")
    assert allowed(JobStatus, "queued", "stopped")
    assert allowed(JobStatus, "queued", "starting")


def test_a_deleting_deployment_is_never_ready_again() -> None:
    assert not allowed(DeploymentStatus, "deleting", "ready")
    assert all(allowed(DeploymentStatus, s, "deleting") for s in DeploymentStatus)


def test_setting_the_same_status_is_always_allowed() -> None:
    for enum in ENUMS:
        for s in enum:
            assert allowed(enum, s, s)


def test_holding_states_are_consistent() -> None:
    """What must hold an allocation holds one, and may run; an idle job's workers never
    run."""
    for kind in ("replica", "job", "pod"):
        assert NEEDS_ALLOCATION[kind] <= HOLDS[kind] <= MAY_RUN[kind] | HOLDS[kind]
        assert NEEDS_ALLOCATION[kind] <= MAY_RUN[kind]
    assert "stopped" not in HOLDS["replica"] and "pending" not in HOLDS["replica"]
    assert JobStatus.queued in JOB_IDLE and JobStatus.running not in JOB_IDLE

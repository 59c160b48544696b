"""``wait_ready`` against scripted answers: what counts as ready."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from neocloud import errors
from neocloud.sdk import Client
from neocloud.sdk.deployments import brief

BASE = "http://cloud.test"
NOW = datetime(2025, 1, 1, tzinfo=UTC).isoformat()


def _replica(generation: int, status: str = "ready", restarts: int = 0,
             message: str | None = None) -> dict[str, Any]:
    return {
        "id": f"r-{generation}-abcdef0123456789", "status": status, "generation": generation,
        "node": "local", "gpu_indices": [], "port": 9000, "pid": 1, "restarts": restarts,
        "message": message, "created_at": NOW, "ready_at": NOW,
    }


def _deployment(status: str, replicas: int, ready: int, generation: int,
                replica_list: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "d-1", "name": "web", "service": "embeddings", "model": None,
        "shape": "cpu.small", "replicas": replicas, "ready_replicas": ready, "status": status,
        "pending_reason": None, "generation": generation, "env": {},
        "endpoint": "/endpoints/web/", "created_at": NOW, "updated_at": NOW,
        "replica_list": replica_list,
    }


def _scripted(answers: list[dict[str, Any]]) -> tuple[Client, list[int]]:
    polls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"object": "list", "data": []})
        polls[0] += 1
        return httpx.Response(200, json=answers[min(polls[0], len(answers)) - 1])

    return Client(BASE, "t", transport=httpx.MockTransport(handler)), polls


def test_replicas_of_an_older_generation_do_not_count() -> None:
    client, polls = _scripted([
        # Just after an update: the server still says ready, from generation 1 replicas.
        _deployment("ready", 1, 1, 2, [_replica(1)]),
        _deployment("ready", 1, 1, 2, [_replica(1, "stopping"), _replica(2)]),
    ])
    ready = client.deployments.wait_ready("web", timeout_s=30, poll_s=0)
    assert polls[0] == 2 and ready.replica_list[-1].generation == 2


def test_zero_replicas_are_ready_at_once() -> None:
    client, polls = _scripted([_deployment("scaled_to_zero", 0, 0, 1, [])])
    assert client.deployments.wait_ready("web", timeout_s=30, poll_s=0).replicas == 0
    assert polls[0] == 1


@pytest.mark.parametrize("status", ["degraded", "pending"])
def test_partial_readiness_keeps_waiting(status: str) -> None:
    client, polls = _scripted([
        _deployment(status, 2, 1, 1, [_replica(1), _replica(1, "starting")]),
        _deployment("ready", 2, 2, 1, [_replica(1), _replica(1)]),
    ])
    client.deployments.wait_ready("web", timeout_s=30, poll_s=0)
    assert polls[0] == 2


def test_a_crash_loop_stops_the_wait_early() -> None:
    crash = "process exited with code 2; last log lines:\nImportError: no module 'x'\n"
    looping = _deployment("pending", 1, 0, 1, [_replica(1, "failed", 3, crash)])
    client, polls = _scripted([looping])
    with pytest.raises(errors.Unavailable) as info:
        client.deployments.wait_ready("web", timeout_s=30, poll_s=0)
    assert info.value.code == "deployment_crashing" and polls[0] == 1
    assert "replica r-1-abcd restarted 3 times" in info.value.message
    assert "last log lines: ... ImportError: no module 'x'" in info.value.message
    assert "\n" not in info.value.message
    # Without the limit it waits for the whole timeout.
    patient, _ = _scripted([looping])
    with pytest.raises(errors.Timeout):
        patient.deployments.wait_ready("web", timeout_s=0, poll_s=0, max_restarts=None)
    # Restarts of an older generation do not count.
    rolled, _ = _scripted([
        _deployment("pending", 1, 0, 2, [_replica(1, "stopping", 5), _replica(2, "starting")]),
        _deployment("ready", 1, 1, 2, [_replica(2)]),
    ])
    assert rolled.deployments.wait_ready("web", timeout_s=30, poll_s=0).ready_replicas == 1


def test_brief() -> None:
    assert brief("one line") == "one line"
    assert brief("first\n\nmiddle\n  last  \n") == "first ... last"
    assert brief("") == ""
    long = brief("x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("...")


def test_work_no_registered_node_can_hold_fails_fast() -> None:
    never = _deployment("pending", 1, 0, 1, [_replica(1, "pending")])
    never["pending_reason"] = "no node can run 8 GPUs of type H100 (1 node(s) without GPUs)"
    never["pending_code"] = "NO_MATCHING_GPU_TYPE"  # the code decides, not the wording
    client, polls = _scripted([never])
    with pytest.raises(errors.Unavailable) as exc:
        client.deployments.wait_ready("web", timeout_s=30, poll_s=0)
    assert exc.value.code == "unschedulable" and "8 GPUs" in exc.value.message
    assert polls[0] == 1
    # A reason that capacity freeing up can cure keeps waiting (until the timeout).
    busy = _deployment("pending", 1, 0, 1, [_replica(1, "pending")])
    busy["pending_reason"] = "no node has 1 free GPU of type H100 (best: g1 with 0)"
    busy["pending_code"] = "WAITING_FOR_CAPACITY"
    client, polls = _scripted([busy])
    with pytest.raises(errors.Timeout):
        client.deployments.wait_ready("web", timeout_s=0.05, poll_s=0.01)

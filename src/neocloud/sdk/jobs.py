"""``client.jobs``: run-to-completion work of 1..N gang-scheduled workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import quote

from neocloud.errors import Timeout
from neocloud.models import EventOut
from neocloud.models.jobs import JobCreate, JobOut
from neocloud.models.volumes import VolumeMount
from neocloud.sdk._http import HttpApi, build

JobList = list[JobOut]
EventList = list[EventOut]
#: A mount given as ``"VOLUME:PATH"``, ``(volume, path)`` or a :class:`VolumeMount`.
MountLike = str | tuple[str, str] | VolumeMount


def mounts(values: Sequence[MountLike] | None) -> list[dict[str, str]] | None:
    """Mounts as request fields; ``"data:/data"`` -> ``{"volume": "data", "path": "/data"}``."""
    if values is None:
        return None
    out = []
    for v in values:
        if isinstance(v, VolumeMount):
            out.append(v.model_dump())
        elif isinstance(v, tuple):
            out.append({"volume": v[0], "path": v[1]})
        else:
            volume, _, path = v.partition(":")
            out.append({"volume": volume, "path": path})
    return out


class Jobs:
    """Create, watch, stop and delete jobs of the token's workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def create(
        self,
        name: str,
        command: Sequence[str],
        *,
        shape: str = "cpu.small",
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        volumes: Sequence[MountLike] | None = None,
        max_retries: int = 0,
        time_limit_s: float | None = None,
        priority: int = 0,
        preemptible: bool = False,
    ) -> JobOut:
        """Create a job (``POST /jobs``); it is queued and starts when all workers fit.

        Args:
            name: DNS-label name.
            command: program and arguments, run without a shell by every worker.
            shape: resources of each worker.
            workers: 1..256 workers, placed all at once; they get ``MASTER_ADDR``,
                ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``NODE_RANK``, ``LOCAL_RANK``,
                ``NNODES`` for ``torch.distributed``.
            env: environment variables.
            secrets: environment variable -> secret name.
            volumes: mounts, ``"VOLUME:PATH"`` or ``(volume, path)``.
            max_retries: failed attempts retried (with exponential back-off).
            time_limit_s: seconds of running time per attempt before the job fails.
            priority: larger is placed first and may preempt lower, preemptible work.
            preemptible: whether higher-priority work may stop (and requeue) this job.

        Raises:
            ValidationFailed: a field is malformed (checked before sending).
            AlreadyExists: the name is taken; NotFound: unknown shape, secret or volume.
        """
        body = build(
            JobCreate, name=name, command=list(command), shape=shape, workers=workers,
            env=dict(env) if env is not None else None,
            secrets=dict(secrets) if secrets is not None else None,
            volumes=mounts(volumes), max_retries=max_retries, time_limit_s=time_limit_s,
            priority=priority, preemptible=preemptible,
        )
        return self._api.send_model("POST", JobOut, "/jobs", body)

    def get(self, name: str) -> JobOut:
        """The job with the workers of its current attempt. Raises ``NotFound``."""
        return self._api.get_model(JobOut, _path(name))

    def list(self) -> JobList:
        return self._api.get_list(JobOut, "/jobs")

    def stop(self, name: str) -> JobOut:
        """Stop the job (its logs are kept). Raises ``NotFound``."""
        response = self._api.request("POST", _path(name) + "/stop")
        return JobOut.model_validate(response.json())

    def delete(self, name: str) -> None:
        """Delete a finished job and its logs. Raises ``Conflict`` while it is live."""
        self._api.request("DELETE", _path(name))

    def events(self, name: str, *, limit: int | None = None) -> EventList:
        events = self._api.get_list(EventOut, _path(name) + "/events", params={"limit": limit})
        return sorted(events, key=lambda e: e.id)

    def logs(self, name: str, *, worker: int | None = None, attempt: int | None = None,
             tail: int | None = None) -> str:
        """Output of worker ``worker`` (all workers under ``==> worker R <==`` headers when
        ``None``) of ``attempt`` (default: the latest); the last ``tail`` lines."""
        response = self._api.request("GET", _path(name) + "/logs", params={
            "worker": worker, "attempt": attempt, "tail": tail})
        return response.text

    def wait(self, name: str, *, timeout_s: float = 3600.0, poll_s: float = 1.0,
             on_poll: Callable[[JobOut], None] | None = None) -> JobOut:
        """Poll until the job has succeeded, failed or stopped; returns it.

        Raises:
            Timeout: still live after ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(name)
            if on_poll is not None:
                on_poll(job)
            if job.status.finished:
                return job
            if time.monotonic() >= deadline:
                raise Timeout(f"job {name!r} is still {job.status.value} after "
                              f"{timeout_s:g} s")
            time.sleep(poll_s)


def _path(name: str) -> str:
    return f"/jobs/{quote(name, safe='')}"

"""``client.pods``: interactive dev machines (SSH, a shell through the control plane)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from neocloud.errors import NeocloudError, Timeout, Unsupported, from_wire
from neocloud.models import EventOut
from neocloud.models.pods import DEFAULT_IDLE_TIMEOUT_S, PodCreate, PodOut, PodStatus
from neocloud.sdk._http import HttpApi, build
from neocloud.sdk.jobs import MountLike, mounts

PodList = list[PodOut]
EventList = list[EventOut]


class Pods:
    """Create, start, stop, delete and open shells into pods of the token's workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def create(
        self,
        name: str,
        *,
        shape: str = "cpu.small",
        volume: str | None = None,
        ssh_public_key: str | None = None,
        jupyter: bool = False,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        volumes: Sequence[MountLike] | None = None,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    ) -> PodOut:
        """Create and start a pod whose working directory is the volume ``volume``
        (default ``<name>-home``, created when missing).

        Raises:
            ValidationFailed: bad field (e.g. not an OpenSSH public key).
            AlreadyExists, NotFound (shape, secret, volume), Unsupported (no sshd or
            JupyterLab on the node).
        """
        body = build(
            PodCreate, name=name, shape=shape, volume=volume, ssh_public_key=ssh_public_key,
            jupyter=jupyter, env=dict(env) if env is not None else None,
            secrets=dict(secrets) if secrets is not None else None, volumes=mounts(volumes),
        )
        payload = body.model_dump(mode="json", exclude_unset=True)
        payload["idle_timeout_s"] = idle_timeout_s
        response = self._api.request("POST", "/pods", json=payload)
        return PodOut.model_validate(response.json())

    def get(self, name: str) -> PodOut:
        return self._api.get_model(PodOut, _path(name))

    def list(self) -> PodList:
        return self._api.get_list(PodOut, "/pods")

    def start(self, name: str) -> PodOut:
        return PodOut.model_validate(self._api.request("POST", _path(name) + "/start").json())

    def stop(self, name: str) -> PodOut:
        """Stop the pod (billing ends once it has stopped; files stay on its volume)."""
        return PodOut.model_validate(self._api.request("POST", _path(name) + "/stop").json())

    def delete(self, name: str) -> None:
        """Stop and delete the pod; its volume is kept."""
        self._api.request("DELETE", _path(name))

    def events(self, name: str, *, limit: int | None = None) -> EventList:
        events = self._api.get_list(EventOut, _path(name) + "/events", params={"limit": limit})
        return sorted(events, key=lambda e: e.id)

    def logs(self, name: str, *, tail: int | None = None) -> str:
        """The pod process's own log (its sshd)."""
        return self._api.request("GET", _path(name) + "/logs", params={"tail": tail}).text

    def wait(self, name: str, *statuses: PodStatus, timeout_s: float = 120.0,
             poll_s: float = 0.5) -> PodOut:
        """Poll until the pod's status is one of ``statuses`` (default ``running``).

        Raises:
            NeocloudError: the pod failed while waiting for ``running`` (its reason).
            Timeout: not there after ``timeout_s`` seconds.
        """
        want = statuses or (PodStatus.running,)
        deadline = time.monotonic() + timeout_s
        while True:
            pod = self.get(name)
            if pod.status in want:
                return pod
            if pod.status is PodStatus.failed and PodStatus.failed not in want:
                raise NeocloudError(f"pod {name!r} failed: {pod.reason}")
            if time.monotonic() >= deadline:
                raise Timeout(f"pod {name!r} is {pod.status.value}, not "
                              f"{'/'.join(s.value for s in want)}, after {timeout_s:g} s")
            time.sleep(poll_s)

    def shell(self, name: str, *, cols: int = 80, rows: int = 24,
              command: str | None = None) -> ShellConnection:
        """Open the pod's shell: a ``websockets`` connection (sync client). Send terminal
        input as bytes and ``{"type": "resize", "cols": C, "rows": R}`` as text; receive
        output as bytes and finally ``{"type": "exit", "code": N}`` as text.

        Raises:
            the server's error (``NotFound``, ``Conflict`` when not running, ...).
            Unsupported: the ``websockets`` package is missing.
        """
        try:
            from websockets.sync.client import connect
        except ImportError as exc:  # pragma: no cover - a dependency
            raise Unsupported("the websockets package is not installed") from exc
        base = self._api.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        query = {"cols": cols, "rows": rows, **({"command": command} if command else {})}
        url = f"{base}/api/v1{_path(name)}/shell?{urlencode(query)}"
        headers = {"Authorization": f"Bearer {self._api.token}"} if self._api.token else {}
        ws = connect(url, additional_headers=headers, open_timeout=self._api.timeout,
                     max_size=None)
        first = ws.recv(timeout=self._api.timeout)
        msg = json.loads(first) if isinstance(first, str) else {}
        if msg.get("type") != "ready":
            ws.close()
            raise _wire_error(msg) if "error" in msg else NeocloudError(
                "the control plane did not open the shell")
        return ShellConnection(ws)


class ShellConnection:
    """An open pod shell (after the server's ``ready`` frame)."""

    def __init__(self, ws: Any):
        self._ws = ws

    def recv(self, timeout: float | None = None) -> bytes | str:
        """The next frame: output bytes, or a text control frame (``exit``)."""
        data: bytes | str = self._ws.recv(timeout=timeout)
        return data

    def send(self, data: bytes | str) -> None:
        self._ws.send(data)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> ShellConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wire_error(msg: dict[str, Any]) -> NeocloudError:
    statuses = {"not_found": 404, "conflict": 409, "invalid_api_key": 401,
                "permission_denied": 403}
    code = msg["error"].get("code") or ""
    return from_wire(statuses.get(code, 500), msg)


def _path(name: str) -> str:
    return f"/pods/{quote(name, safe='')}"

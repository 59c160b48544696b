"""``client.quotas`` and ``client.queue``: workspace limits and the work waiting for room."""

from __future__ import annotations

from neocloud.models import QueueItem, QuotaOut, QuotaSet
from neocloud.sdk._http import HttpApi, build, parse


class Quotas:
    """Workspace quotas. Reading your own is open to every role; setting is for operators."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def get(self, workspace: str | None = None) -> QuotaOut:
        """The quota and current use of ``workspace`` (default: the caller's)."""
        if workspace is None:
            return self._api.get_model(QuotaOut, "/quota")
        return self._api.get_model(QuotaOut, f"/workspaces/{workspace}/quota")

    def set(
        self,
        workspace: str,
        *,
        gpus: dict[str, int] | None = None,
        gpus_total: int | None = None,
        cpu_milli: int | None = None,
        memory_mib: int | None = None,
    ) -> QuotaOut:
        """Replace the quota of ``workspace``. ``gpus`` maps a GPU type to whole GPUs
        (``"*"``: each type not listed); ``None`` means no limit.

        Raises:
            PermissionDenied: the caller is not an operator.
            NotFound: no such workspace.
        """
        body = build(QuotaSet, gpus=gpus or {}, gpus_total=gpus_total, cpu_milli=cpu_milli,
                     memory_mib=memory_mib)
        payload = body.model_dump(mode="json")
        return parse(QuotaOut, self._api.request("PUT", f"/workspaces/{workspace}/quota",
                                                 json=payload))


class Queue:
    """Work waiting for resources, highest priority first, each with its reason."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self, *, all_workspaces: bool = False) -> list[QueueItem]:
        params = {"all_workspaces": "true"} if all_workspaces else None
        return self._api.get_list(QueueItem, "/queue", params=params)

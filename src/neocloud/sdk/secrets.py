"""``client.secrets``: workspace secrets (values are write-only)."""

from __future__ import annotations

from urllib.parse import quote

from neocloud.models.secrets import SecretOut, SecretSet
from neocloud.sdk._http import HttpApi, build

SecretList = list[SecretOut]


class Secrets:
    """Set, list and delete secrets of the token's workspace. No call returns a value."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def set(self, name: str, value: str) -> SecretOut:
        """Create or replace the secret ``name`` (``version`` counts the changes).

        Raises:
            ValidationFailed: empty or over-long value (checked before sending).
            InvalidRequest: bad name.
        """
        body = build(SecretSet, value=value)
        return self._api.send_model("PUT", SecretOut, _path(name), body)

    def get(self, name: str) -> SecretOut:
        """The secret's metadata. Raises ``NotFound``."""
        return self._api.get_model(SecretOut, _path(name))

    def list(self) -> SecretList:
        return self._api.get_list(SecretOut, "/secrets")

    def delete(self, name: str) -> None:
        """Delete; workloads that reference it cannot start until it is set again."""
        self._api.request("DELETE", _path(name))


def _path(name: str) -> str:
    return f"/secrets/{quote(name, safe='')}"

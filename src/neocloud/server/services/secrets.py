"""Secrets: set, list and delete workspace secrets; resolve references for workloads.

Values are encrypted with the control plane's :class:`~neocloud.server.crypto.SecretBox`
before they reach the database, and are never returned by the API, written to events,
logs or error messages: every message here names the secret, never its value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import Conflict, InvalidRequest, NeocloudError, NotFound
from neocloud.masking import Masker, looks_sensitive
from neocloud.models.secrets import MAX_SECRET_BYTES, SecretOut
from neocloud.server.crypto import SecretBox
from neocloud.server.db.tables import Secret
from neocloud.server.services import events
from neocloud.server.services.envvars import ENV_NAME, RESERVED_ENV
from neocloud.server.services.removal import delete_locked, lock_for_delete
from neocloud.server.services.upsert import insert_unless_taken

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")


def check_name(name: str, *, param: str = "name") -> None:
    """Raise :class:`InvalidRequest` unless ``name`` is a valid secret name."""
    if not _NAME.match(name):
        raise InvalidRequest(
            f"secret name {name!r} is invalid: letters, digits, '_', '-' and '.', starting "
            "with a letter, at most 63 characters", param=param)


def _owner(workspace_id: str, name: str) -> str:
    return f"{workspace_id}/{name}"


def _find(s: Session, *, workspace_id: str, name: str) -> Secret | None:
    return s.scalars(
        select(Secret).where(Secret.workspace_id == workspace_id, Secret.name == name)
    ).first()


def set_secret(
    s: Session, *, workspace_id: str, name: str, value: str, box: SecretBox
) -> tuple[Secret, bool]:
    """Create or replace the secret ``name``; returns the row and whether it is new.

    Raises:
        InvalidRequest: bad name (``param="name"``), or a value over 64 KiB or holding
            a NUL character (``"value"``).
    """
    check_name(name)
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise InvalidRequest(f"secret value is larger than {MAX_SECRET_BYTES} bytes",
                             param="value")
    if "\x00" in value:
        # Workloads get secrets as environment variables, which cannot hold NUL: such a
        # value was stored, then every job or pod given it failed to start.
        raise InvalidRequest("secret value may not contain NUL (\\x00) characters: "
                             "workloads receive it as an environment variable",
                             param="value")
    sealed = box.encrypt(value, owner=_owner(workspace_id, name))
    row = _find(s, workspace_id=workspace_id, name=name)
    created = False
    if row is None:
        # Invariant: concurrent first sets of one name all succeed (one creates, the
        # others replace); a plain insert lost the race to the unique (workspace, name)
        # constraint and was answered 409 already_exists.
        created = insert_unless_taken(s, Secret, key=["workspace_id", "name"],
                                      workspace_id=workspace_id, name=name,
                                      ciphertext=sealed, version=1)
        row = _find(s, workspace_id=workspace_id, name=name)
        if row is None:  # inserted by a racing call whose commit this one cannot see yet
            raise Conflict(f"secret {name!r} is being set by another call; retry",
                           param="name")
    if not created:
        row.ciphertext = sealed
        row.version = Secret.version + 1  # computed by the database: no lost update
        row.updated_at = datetime.now(UTC)
    s.flush()
    s.refresh(row, ["version"])
    events.record(s, workspace_id=workspace_id, kind="secret", name=name, object_id=row.id,
                  reason="Created" if created else "Updated",
                  message=f"secret {name} {'created' if created else 'updated'} "
                          f"(version {row.version})")
    return row, created


def get_secret(s: Session, *, workspace_id: str, name: str) -> Secret:
    """The secret row (value still encrypted). Raises :class:`NotFound`."""
    row = _find(s, workspace_id=workspace_id, name=name)
    if row is None:
        raise NotFound(f"secret {name!r} not found", param="name")
    return row


def list_secrets(s: Session, *, workspace_id: str) -> list[Secret]:
    return list(s.scalars(
        select(Secret).where(Secret.workspace_id == workspace_id).order_by(Secret.name)
    ))


def delete_secret(s: Session, *, workspace_id: str, name: str) -> None:
    """Delete a secret; workloads that reference it fail to start until it is set again.

    Of concurrent deletes of one secret exactly one succeeds (:mod:`.removal`).

    Raises:
        NotFound: no such secret, or another call deleted it first.
    """
    missing = f"secret {name!r} not found"
    row = lock_for_delete(s, Secret, _find(s, workspace_id=workspace_id, name=name),
                          missing=missing)
    delete_locked(s, row, missing=missing)
    events.record(s, workspace_id=workspace_id, kind="secret", name=name, object_id=row.id,
                  reason="Deleted", message=f"secret {name} deleted")


def secret_out(row: Secret) -> SecretOut:
    return SecretOut(name=row.name, version=row.version, created_at=row.created_at,
                     updated_at=row.updated_at)


def check_refs(
    s: Session, *, workspace_id: str, refs: dict[str, str], env: dict[str, str],
    param: str = "secrets",
) -> None:
    """Check secret references ``{ENV_NAME: SECRET_NAME}`` of a workload spec.

    Raises:
        InvalidRequest: an env name is not a variable name or is also set in ``env``
            (``param="secrets.<ENV>"``).
        NotFound: the workspace has no secret of that name (``param="secrets.<ENV>"``).
    """
    for var, secret in refs.items():
        where = f"{param}.{var}"
        if not ENV_NAME.match(var):
            raise InvalidRequest(f"{var!r} is not a valid environment variable name",
                                 param=where)
        if var in env:
            raise InvalidRequest(f"{var!r} is set both in env and from a secret", param=where)
        if var in RESERVED_ENV:
            raise InvalidRequest(f"{var!r} is set by neocloud itself", param=where)
        check_name(secret, param=where)
        if _find(s, workspace_id=workspace_id, name=secret) is None:
            raise NotFound(f"secret {secret!r} (for {var}) not found in this workspace",
                           param=where)


def resolve(
    s: Session, *, workspace_id: str, refs: dict[str, str], box: SecretBox
) -> dict[str, str]:
    """The environment ``{ENV_NAME: value}`` of secret references, decrypted.

    Raises:
        NotFound: a referenced secret no longer exists (the message names it).
        SecretKeyError: the control plane's key cannot decrypt it.
    """
    out: dict[str, str] = {}
    for var, secret in refs.items():
        row = _find(s, workspace_id=workspace_id, name=secret)
        if row is None:
            raise NotFound(f"secret {secret!r} (for {var}) no longer exists", param="secrets")
        out[var] = box.decrypt(row.ciphertext, owner=_owner(workspace_id, secret))
    return out


def redact(text: str, values: list[str]) -> str:
    """``text`` with every occurrence of each secret value replaced by ``***``, in every
    form :class:`neocloud.masking.Masker` knows (plain, base64, URL-encoded, JSON-escaped;
    values shorter than :data:`neocloud.masking.MIN_MASKED_CHARS` are left alone).

    Logs are masked when they are written (:mod:`neocloud.logrun`); this second pass
    covers text neocloud builds itself and logs written before masking existed.
    """
    return Masker(values).mask_text(text) if values and text else text


def values_of(
    s: Session, *, workspace_id: str, refs: dict[str, str], box: SecretBox | None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The clear values to redact from a workload's output: those of the secrets ``refs``
    names (skipped when they cannot be decrypted or no longer exist) and those of the
    ``env`` entries whose names look sensitive."""
    out = [v for k, v in (env or {}).items() if looks_sensitive(k)]
    if not refs or box is None:
        return out
    for var, secret in refs.items():
        try:
            out += resolve(s, workspace_id=workspace_id, refs={var: secret}, box=box).values()
        except NeocloudError:
            continue
    return out

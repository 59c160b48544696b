"""Workspaces and API tokens."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from neocloud.errors import AlreadyExists, Conflict, NotFound
from neocloud.models import Role, TokenOut
from neocloud.server.db import sqlite_writers
from neocloud.server.db.tables import Token, Workspace
from neocloud.server.security import hash_token, new_token
from neocloud.server.services.lifecycle import lock_row
from neocloud.server.services.principal import Caller
from neocloud.server.services.removal import delete_locked, lock_for_delete


class LastOperatorAdminToken(Conflict):
    """Revoking this token would leave no operator admin token in the cloud (409)."""

    default_code = "last_operator_admin_token"


def create_workspace(s: Session, *, name: str, operator: bool = False) -> Workspace:
    """Create a workspace. Raises :class:`AlreadyExists` when the name is taken."""
    if s.scalars(select(Workspace).where(Workspace.name == name)).first():
        raise AlreadyExists(f"workspace {name!r} already exists", param="name")
    ws = Workspace(name=name, operator=operator)
    s.add(ws)
    try:
        s.flush()
    except IntegrityError as e:
        raise AlreadyExists(f"workspace {name!r} already exists", param="name") from e
    return ws


def get_workspace(s: Session, *, name: str) -> Workspace:
    ws = s.scalars(select(Workspace).where(Workspace.name == name)).first()
    if ws is None:
        raise NotFound(f"workspace {name!r} not found", param="name")
    return ws


def list_workspaces(s: Session, *, caller: Caller) -> list[Workspace]:
    q = select(Workspace).order_by(Workspace.created_at)
    if not caller.operator:
        q = q.where(Workspace.id == caller.workspace_id)
    return list(s.scalars(q))


def create_token(s: Session, *, workspace: Workspace, name: str, role: Role) -> tuple[Token, str]:
    """Create a token; returns the row and the secret (shown once, stored hashed).

    Raises :class:`AlreadyExists` when the workspace already has a token of that name.
    """
    if s.scalars(
        select(Token).where(Token.workspace_id == workspace.id, Token.name == name)
    ).first():
        raise AlreadyExists(f"token {name!r} already exists in this workspace", param="name")
    secret, prefix, digest = new_token()
    tok = Token(workspace_id=workspace.id, name=name, role=role.value, prefix=prefix, hash=digest)
    s.add(tok)
    s.flush()
    return tok, secret


def token_out(tok: Token, workspace_name: str) -> TokenOut:
    return TokenOut(
        id=tok.id,
        name=tok.name,
        role=Role(tok.role),
        workspace=workspace_name,
        prefix=tok.prefix,
        created_at=tok.created_at,
        last_used_at=tok.last_used_at,
    )


def list_tokens(s: Session, *, workspace_id: str) -> list[Token]:
    q = select(Token).where(Token.workspace_id == workspace_id).order_by(Token.created_at)
    return list(s.scalars(q))


def delete_token(s: Session, *, workspace_id: str, name: str, param: str = "name") -> None:
    """Revoke the token ``name`` of the workspace ``workspace_id``.

    Invariant: the cloud always keeps at least one live admin token in an operator
    workspace (an operator: only such a token may create workspaces and tokens for
    them, so without one every operator is locked out and only the database could let
    them back in). A token is live while its row exists: revoking deletes the row, and
    tokens do not expire. Every caller (``DELETE /tokens/{name}``, ``DELETE
    /workspaces/{name}/tokens/{token}``, ``neocloud token rm``) comes through here.

    Race safety: revoking a token of an operator workspace first locks the rows of every
    operator workspace, in id order (:func:`lock_row`: ``SELECT ... FOR UPDATE`` on
    PostgreSQL; on SQLite the database write lock, one writer at a time), then reads the
    token and counts the other operator admin tokens. Two revocations of the last two
    such tokens therefore run one after the other, and the second counts after the
    first has committed and is refused. The lock is held until the caller's transaction
    ends. Every revocation also locks the token's row before deleting it and confirms
    the ``DELETE`` removed it (:mod:`.removal`), so of concurrent revocations of one
    token (in any workspace) exactly one succeeds and the others get 404.

    Raises:
        NotFound: the workspace has no token ``name`` (404, naming ``param``).
        LastOperatorAdminToken: ``name`` is the last operator admin token (409,
            ``last_operator_admin_token``, naming ``param``); nothing is changed.
    """
    ws = s.get(Workspace, workspace_id)
    if ws is not None and ws.operator:
        operator_ids = s.scalars(
            select(Workspace.id).where(Workspace.operator.is_(True)).order_by(Workspace.id)
        ).all()
        for ws_id in operator_ids:
            lock_row(s, Workspace, ws_id)
    missing = f"token {name!r} not found"
    tok = lock_for_delete(s, Token, s.scalars(
        select(Token).where(Token.workspace_id == workspace_id, Token.name == name)
        .execution_options(populate_existing=True)
    ).first(), missing=missing, param=param)
    if ws is not None and ws.operator and tok.role == Role.admin.value:
        others = s.scalar(
            select(func.count()).select_from(Token)
            .join(Workspace, Workspace.id == Token.workspace_id)
            .where(Workspace.operator.is_(True), Token.role == Role.admin.value,
                   Token.id != tok.id)
        )
        if not others:
            raise LastOperatorAdminToken(
                f"token {name!r} is the last admin token of an operator workspace; "
                "revoking it would lock every operator out. Create another admin token "
                "first (neocloud token create NAME --role admin), then revoke this one",
                param=param,
            )
    delete_locked(s, tok, missing=missing, param=param)


TOUCH_EVERY_S = 60.0
"""A token's ``last_used_at`` is written at most this often, seconds."""


def touch_last_used(s: Session, tok: Token, now: datetime) -> None:
    """Record that ``tok`` was used at ``now``, best effort on SQLite.

    A read authenticates too, so this write must not make a read wait for (or fail on)
    SQLite's write lock: when the session's connection has no write transaction open, the
    touch is skipped if another writer of this process holds the writer queue
    (:mod:`neocloud.server.db.sqlite_writers`), and tried without waiting (busy timeout
    0) otherwise, so a lock held by another process skips it too. The time is then
    written by a later call (the column is advisory: listings show it). A writer of this
    process that takes the queue between that check and the write is waited for in line,
    as by any writer. A session that already writes, and PostgreSQL (no database-wide
    write lock), write it as before.
    """
    conn = s.connection()
    raw = conn.connection.driver_connection
    if conn.dialect.name != "sqlite" or raw is None or raw.in_transaction:
        tok.last_used_at = now
        return
    queue = getattr(raw, "writer_queue", None)
    if isinstance(queue, sqlite_writers.WriterQueue) and queue.holder is not None:
        return
    raw.execute("PRAGMA busy_timeout=0")
    try:
        with s.begin_nested():
            s.execute(update(Token).where(Token.id == tok.id).values(last_used_at=now)
                      .execution_options(synchronize_session=False))
        set_committed_value(tok, "last_used_at", now)
    except OperationalError as exc:
        if "locked" not in str(exc.orig).lower() and "busy" not in str(exc.orig).lower():
            raise
    finally:
        raw.execute(f"PRAGMA busy_timeout={int(sqlite_writers.BUSY_TIMEOUT_S * 1000)}")


def authenticate(s: Session, *, secret: str) -> Caller | None:
    """The caller behind a token secret, or ``None`` for an unknown token."""
    row = s.execute(
        select(Token, Workspace)
        .join(Workspace, Workspace.id == Token.workspace_id)
        .where(Token.hash == hash_token(secret))
    ).first()
    if row is None:
        return None
    tok, ws = row
    now = datetime.now(UTC)
    if tok.last_used_at is None or (now - tok.last_used_at).total_seconds() > TOUCH_EVERY_S:
        touch_last_used(s, tok, now)
    return Caller(
        token_id=tok.id,
        token_name=tok.name,
        workspace_id=ws.id,
        workspace_name=ws.name,
        role=Role(tok.role),
        operator=ws.operator,
    )

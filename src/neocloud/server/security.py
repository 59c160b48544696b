"""API tokens: generation and hashing.

A token reads ``nc_<8 hex prefix>_<43 url-safe characters>`` (256 random bits from
``secrets``). Only its SHA-256 hex digest is stored; the prefix is kept in clear so a
person can tell tokens apart in listings. SHA-256 without salt is adequate here because
the secret has 256 bits of entropy (no dictionary to guess from), and it keeps lookup to
one indexed equality query.
"""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> tuple[str, str, str]:
    """Make a fresh token. Returns ``(token, prefix, sha256_hex)``."""
    prefix = secrets.token_hex(4)
    token = f"nc_{prefix}_{secrets.token_urlsafe(32)}"
    return token, prefix, hash_token(token)


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization`` header's value (``Bearer <token>``, the scheme
    in any case, RFC 6750 section 2.1), or ``None`` for another scheme or no token."""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def hash_token(token: str) -> str:
    """SHA-256 hex digest (64 characters) of ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()

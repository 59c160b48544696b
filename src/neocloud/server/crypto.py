"""Encryption at rest of secret values (AES-256-GCM, ``cryptography``).

The key comes from the setting ``NEOCLOUD_SECRET_KEY`` (32 bytes as URL-safe base64, or
any other string, which is stretched to 32 bytes with SHA-256); without it, a random key
is generated once into ``<home>/secret.key`` (mode 0600) and read from there afterwards.
The key is never written to the database.

A stored value is ``v1:<base64(nonce ‖ ciphertext ‖ tag)>`` with a fresh 96-bit nonce per
value (NIST SP 800-38D, section 8.2.2: random nonces, at most 2^32 values per key). The
secret's owner (``<workspace id>/<name>``) is bound in as associated data, so a stored
value copied to another row or workspace does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from neocloud.errors import NeocloudError
from neocloud.server.datafolder import make_private_dirs

KEY_FILE = "secret.key"
_PREFIX = "v1:"
_NONCE_BYTES = 12


class SecretKeyError(NeocloudError):
    """The key cannot decrypt a stored value (the key changed, or the row was tampered with)."""

    default_code = "secret_key_mismatch"


def key_from_setting(value: str) -> bytes:
    """32 key bytes from the setting: URL-safe base64 of 32 bytes, else SHA-256 of it."""
    try:
        raw = base64.urlsafe_b64decode(value.encode() + b"=" * (-len(value) % 4))
        if len(raw) == 32:
            return raw
    except (binascii.Error, ValueError):
        pass
    return hashlib.sha256(value.encode()).digest()


def load_or_create_key_file(home: Path) -> bytes:
    """The key in ``<home>/secret.key``, created (random, mode 0600) when missing."""
    path = home / KEY_FILE
    try:
        return base64.urlsafe_b64decode(path.read_bytes().strip())
    except FileNotFoundError:
        pass
    make_private_dirs(home)
    key = AESGCM.generate_key(bit_length=256)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return base64.urlsafe_b64decode(path.read_bytes().strip())
    with os.fdopen(fd, "wb") as f:
        f.write(base64.urlsafe_b64encode(key) + b"\n")
    return key


class SecretBox:
    """Encrypts and decrypts secret values with one 32-byte key.

    Args:
        key: 32 bytes (AES-256).

    Raises:
        ValueError: the key is not 32 bytes long.
    """

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def for_home(cls, home: Path, setting: str | None) -> SecretBox:
        """The box for a control plane: the setting's key, else ``<home>/secret.key``."""
        return cls(key_from_setting(setting) if setting else load_or_create_key_file(home))

    def encrypt(self, plaintext: str, *, owner: str) -> str:
        """Encrypt ``plaintext`` for the row ``owner`` (``<workspace id>/<name>``)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), owner.encode())
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def decrypt(self, stored: str, *, owner: str) -> str:
        """The plaintext of a value made by :meth:`encrypt` for the same ``owner``.

        Raises:
            SecretKeyError: wrong key, wrong owner, or a damaged value (the message never
                contains any part of the value).
        """
        if not stored.startswith(_PREFIX):
            raise SecretKeyError("stored secret has an unknown format")
        try:
            blob = base64.b64decode(stored[len(_PREFIX):])
            plain = self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], owner.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretKeyError(
                "a stored secret cannot be decrypted with this control plane's key "
                "(was NEOCLOUD_SECRET_KEY or <home>/secret.key changed?)"
            ) from None
        return plain.decode()

"""What counts as a secret value, and how it is masked wherever neocloud shows or writes it.

Two rules, used by the control plane (API responses, served logs) and by the process that
writes a workload's log (:mod:`neocloud.logrun`), so both mask exactly the same things:

* **Names.** An environment variable whose name contains ``KEY``, ``TOKEN``, ``SECRET``,
  ``PASSWORD`` or ``CREDENTIAL`` (any case) :func:`looks_sensitive`: its value is shown as
  :data:`MASK` in every API response and its value is masked in the workload's logs. The
  match is a plain substring (``TOKENIZERS_PARALLELISM`` counts too): a false positive costs
  a masked value, a false negative leaks one.
* **Values.** A :class:`Masker` replaces every occurrence of a secret value with
  :data:`MASK`, and also the forms a program commonly prints it in: base64 (standard and
  URL-safe alphabets, padded or not, and the part of it that is the same wherever the value
  sits inside a longer base64 text, e.g. ``user:password`` in an HTTP Basic header),
  percent-encoding (as ``urllib.parse.quote`` and ``quote_plus`` write it, upper- or
  lower-case hex) and JSON string escaping. Values shorter than :data:`MIN_MASKED_CHARS`
  are not masked: masking every ``1`` would garble logs and protect nothing.

This module uses the standard library only: it runs inside every workload's log writer.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

#: What a masked value is shown as.
MASK = "***"

#: Substrings of an environment variable name that mark its value as secret.
SENSITIVE_MARKERS: tuple[str, ...] = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")

#: Values shorter than this many characters are never masked.
MIN_MASKED_CHARS = 4

#: Longest stretch of output (bytes) held back while waiting for the end of a line.
MAX_PENDING_BYTES = 64 * 1024

_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def looks_sensitive(name: str) -> bool:
    """Whether the environment variable ``name`` looks like it holds a secret
    (contains one of :data:`SENSITIVE_MARKERS`, case-insensitive)."""
    upper = name.upper()
    return any(marker in upper for marker in SENSITIVE_MARKERS)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the value of every name that :func:`looks_sensitive` replaced by
    :data:`MASK` (names and the other values unchanged)."""
    return {k: (MASK if looks_sensitive(k) else v) for k, v in env.items()}


def sensitive_names(env: Iterable[str]) -> list[str]:
    """The names in ``env`` that :func:`looks_sensitive`, sorted."""
    return sorted(k for k in env if looks_sensitive(k))


def _base64_forms(raw: bytes) -> set[bytes]:
    forms: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw)
        forms.update((whole, whole.rstrip(b"=")))
        # Inside a longer base64 text the value starts at byte offset 0, 1 or 2 of a
        # 3-byte group; the characters built only from its own bits are the same
        # wherever it sits: character i covers bits [6i, 6i + 6).
        for shift in (0, 1, 2):
            text = encode(b"\0" * shift + raw)
            first = -(-8 * shift // 6)
            end = 8 * (shift + len(raw)) // 6
            core = text[first:end]
            if len(core) >= MIN_MASKED_CHARS:
                forms.add(core)
    return forms


def _url_forms(value: str) -> set[bytes]:
    forms: set[bytes] = set()
    for text in (quote(value, safe=""), quote(value), quote_plus(value),
                 quote_plus(value, safe="/")):
        forms.add(text.encode())
        forms.add(_HEX_ESCAPE.sub(lambda m: m.group().lower(), text).encode())
    return forms


def encoded_forms(value: str) -> set[bytes]:
    """Every byte string that :class:`Masker` replaces for the secret ``value`` (empty when
    the value is shorter than :data:`MIN_MASKED_CHARS`)."""
    if len(value) < MIN_MASKED_CHARS:
        return set()
    raw = value.encode("utf-8", errors="surrogateescape")
    forms = {raw, *_base64_forms(raw), *_url_forms(value)}
    for ascii_only in (True, False):
        forms.add(json.dumps(value, ensure_ascii=ascii_only)[1:-1].encode())
    return {f for f in forms if len(f) >= MIN_MASKED_CHARS}


class Masker:
    """Replaces every secret value in ``values`` (in every form of :func:`encoded_forms`)
    with :data:`MASK`.

    :meth:`mask` and :meth:`mask_text` work on a whole text. For a stream (a process's
    output), :meth:`feed` returns what may be written now: whole lines, masked; the end of
    an unfinished line waits for its line break, for :meth:`flush` (nothing arrived for a
    while) or for :meth:`close` (end of output). A value is masked as long as it does not
    span a line break; :meth:`flush` keeps back just enough to never write the start of a
    value in clear.
    """

    def __init__(self, values: Iterable[str]):
        forms: set[bytes] = set()
        for v in values:
            forms |= encoded_forms(v)
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile(b"|".join(re.escape(f) for f in ordered)) if ordered else None
        self._keep = max((len(f) for f in ordered), default=1) - 1
        self._pending = b""

    def __bool__(self) -> bool:
        """Whether there is anything to mask."""
        return self._pattern is not None

    def mask(self, data: bytes) -> bytes:
        """``data`` with every secret form replaced by :data:`MASK`."""
        if self._pattern is None:
            return data
        return self._pattern.sub(MASK.encode(), data)

    def mask_text(self, text: str) -> str:
        """:meth:`mask` of a text (decoded again as UTF-8, undecodable bytes kept)."""
        if self._pattern is None:
            return text
        raw = text.encode("utf-8", errors="surrogateescape")
        return self.mask(raw).decode("utf-8", errors="surrogateescape")

    def feed(self, data: bytes) -> bytes:
        """Take more output; return the masked bytes that may be written now."""
        self._pending += data
        buf = self._pending
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        out = self.mask(buf[:cut])
        self._pending = buf[cut:]
        if len(self._pending) > MAX_PENDING_BYTES:
            out += self.flush()
        return out

    def flush(self) -> bytes:
        """The masked part of an unfinished line that may be written without ever writing
        the start of a secret form in clear (the last few bytes wait)."""
        buf = self._pending
        cut = len(buf) - self._keep
        if cut <= 0:
            return b""
        if self._pattern is not None:
            for m in self._pattern.finditer(buf):
                if m.start() < cut < m.end():
                    cut = m.start()  # a whole match waits; it is masked once written
                    break
        out = self.mask(buf[:cut])
        self._pending = buf[cut:]
        return out

    def close(self) -> bytes:
        """Everything still held back, masked (end of output)."""
        out, self._pending = self.mask(self._pending), b""
        return out

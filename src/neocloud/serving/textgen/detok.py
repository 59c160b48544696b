"""Incremental detokenization and stop strings for streamed generation.

Byte-level tokenizers (GPT-2 style BPE, SentencePiece byte fallback) may split one UTF-8
character over several tokens; decoding a prefix then ends in U+FFFD. The decoder below
emits text only once it no longer ends in an incomplete character, re-decoding a short
window of tokens (``prefix_offset``..end) so that merges and leading spaces come out as
the full decode would give them. After :data:`MAX_HELD_TOKENS` tokens that still decode
to U+FFFD (truly invalid bytes) the text is released as is.
"""

from __future__ import annotations

from typing import Any

#: A UTF-8 character has at most 4 bytes, so at most 4 byte tokens can be pending.
MAX_HELD_TOKENS = 4
_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas that never split a character.

    Args:
        tokenizer: a Hugging Face tokenizer (``decode(ids, skip_special_tokens=...)``).
        skip_special_tokens: drop special tokens (EOS, chat markers) from the text.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one token; returns the new complete text (possibly empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        held = len(self.ids) - self.read_offset
        if len(full) > len(prefix) and (not full.endswith(_REPLACEMENT) or held >= MAX_HELD_TOKENS):
            delta = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self, whole_chars_only: bool = False) -> str:
        """Text of tokens still held back (at the end of generation).

        ``whole_chars_only`` (generation cut by ``max_tokens``): the bytes of a character
        left incomplete are dropped instead of becoming U+FFFD.
        """
        if self.read_offset == len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        out = full[len(prefix):]
        return out.rstrip(_REPLACEMENT) if whole_chars_only else out


class StopFilter:
    """Cuts generated text at the first stop string; the stop string itself is not emitted.

    Text that could be the start of a stop string is held back until it is decided.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; returns ``(text safe to emit, True when a stop string was hit)``."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        cut = -1
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self.pending = ""
            return buf[:cut], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold:] if hold else ""
        return (buf[: len(buf) - hold] if hold else buf), False

    def flush(self) -> str:
        """Held-back text (generation ended without a stop string)."""
        out, self.pending = self.pending, ""
        return out

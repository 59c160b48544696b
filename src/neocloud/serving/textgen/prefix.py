"""Automatic prefix caching: the keys and values of prompts already prefilled, reused by
later prompts that start with the same tokens.

Chat traffic repeats its beginnings: a system prompt, the template's header, the earlier
turns of a conversation. vLLM caches the KV blocks of every prompt it prefills and a new
prompt skips the blocks it shares with one of them ("automatic prefix caching", on by
default in its V1 engine; Kwon et al., SOSP'23, for the block layout it rests on). This
module does the same for the built-in engine, whose running batch is one right-aligned
buffer (:mod:`neocloud.serving.textgen.kvcache`) rather than a pool of pages, so the cache
is a store beside the batch:

* an entry holds the keys and values of one prompt's first ``L`` tokens (``L`` a multiple
  of :data:`BLOCK_TOKENS`), per layer ``(kv_heads, L, head_dim)``, copied out of the batch
  after the prompt's prefill;
* it is found through the hash of every block-aligned prefix (a chain: the hash of block
  ``k`` covers blocks ``0 .. k``), so a prompt that shares only its first blocks with an
  entry uses those; the tokens are compared on a hit (a hash collision is a miss);
* :meth:`PrefixCache.peek` gives the longest cached prefix of a prompt, never the whole
  prompt: the last token is always computed, since its logits give the first token;
* entries are evicted least recently used first, the cache holding at most
  ``capacity_tokens`` tokens (``2 × layers × kv_heads × head_dim × dtype size`` bytes each).

The keys and values of a token depend only on the tokens before it (causal attention), so
reusing them is exact up to the rounding of the batch they were computed in: in float32
the engine's products are row-invariant and a prompt gives the same greedy text with and
without the cache; in bfloat16 the difference is the one between batched and alone (see
the engine's README). The cache lives on the engine thread only (no lock).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

#: Tokens per block: prefixes are cached and matched in whole blocks of this many tokens.
#: An entry is one contiguous copy, not a set of pages, so a block is only the unit of
#: hashing: a smaller one recomputes less of a cached prompt (at most a block less one
#: token) for a few more hashes. 8 rather than vLLM's 16: chat prompts of about 43
#: tokens recomputed 10-12 tokens each with 16, 2-4 with 8.
BLOCK_TOKENS = 8

__all__ = ["BLOCK_TOKENS", "PrefixCache", "PrefixHit", "block_hashes"]


def block_hashes(tokens: list[int], blocks: int | None = None) -> list[int]:
    """Chained hashes of the first ``blocks`` whole blocks of ``tokens`` (all whole
    blocks by default): entry ``k`` identifies ``tokens[: (k + 1) * BLOCK_TOKENS]``."""
    n = len(tokens) // BLOCK_TOKENS if blocks is None else blocks
    out, h = [], 0
    for k in range(n):
        h = hash((h, tuple(tokens[k * BLOCK_TOKENS:(k + 1) * BLOCK_TOKENS])))
        out.append(h)
    return out


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    keys: list[Any]     # per layer (kv_heads, len(tokens), head_dim)
    values: list[Any]
    hashes: list[int]


@dataclass(frozen=True)
class PrefixHit:
    """A cached prefix of a prompt: its first ``tokens`` tokens are in ``entry``."""

    entry: _Entry
    tokens: int

    def copy_into(self, cache: Any, row: int, column: int, tokens: int) -> None:
        """Write the first ``tokens`` cached tokens (at most :attr:`tokens`) into row
        ``row`` of the :class:`~neocloud.serving.textgen.kvcache.SlotCache` ``cache``,
        columns ``column .. column + tokens - 1``."""
        if tokens <= 0:
            return
        e = self.entry
        for i in range(cache.layers):
            cache.keys[i][row, :, column:column + tokens] = e.keys[i][:, :tokens]
            cache.values[i][row, :, column:column + tokens] = e.values[i][:, :tokens]


class PrefixCache:
    """The prefix store of one engine (see the module docstring).

    Args:
        capacity_tokens: most tokens held over all entries; 0 disables the cache.

    Attributes:
        queries: prompt tokens looked up (a counter).
        hits: of those, tokens found in the cache (a counter).
    """

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = max(0, int(capacity_tokens))
        self.tokens = 0
        self.queries = 0
        self.hits = 0
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._index: dict[int, _Entry] = {}  # block-chain hash -> an entry holding it

    @property
    def enabled(self) -> bool:
        return self.capacity_tokens >= BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, prompt: list[int]) -> PrefixHit | None:
        """The longest cached prefix of ``prompt`` (at most ``len(prompt) - 1`` tokens),
        or ``None``; counts nothing and does not refresh the entry."""
        if not self.enabled or len(prompt) <= BLOCK_TOKENS:
            return None
        hashes = block_hashes(prompt, (len(prompt) - 1) // BLOCK_TOKENS)
        for k in range(len(hashes) - 1, -1, -1):
            entry = self._index.get(hashes[k])
            n = (k + 1) * BLOCK_TOKENS
            if entry is not None and entry.tokens[:n] == tuple(prompt[:n]):
                return PrefixHit(entry, n)
        return None

    def count(self, queried: int, used: int, hit: PrefixHit | None) -> None:
        """Count a prefill of ``queried`` prompt tokens of which ``used`` came from
        ``hit`` (which becomes the most recently used entry)."""
        self.queries += queried
        self.hits += used
        if hit is not None and used > 0 and id(hit.entry) in self._entries:
            self._entries.move_to_end(id(hit.entry))

    def store(self, prompt: list[int], cache: Any, row: int, column: int) -> bool:
        """Keep the keys and values of ``prompt``'s whole blocks, read from row ``row`` of
        ``cache`` where the prompt starts at column ``column``. Nothing is stored when the
        cache already holds them all, when the prompt has no whole block, or when it is
        larger than the capacity. True when an entry was added."""
        if not self.enabled:
            return False
        blocks = len(prompt) // BLOCK_TOKENS
        n = blocks * BLOCK_TOKENS
        if blocks == 0 or n > self.capacity_tokens:
            return False
        hashes = block_hashes(prompt, blocks)
        have = self._index.get(hashes[-1])
        if have is not None and have.tokens[:n] == tuple(prompt[:n]):
            self._entries.move_to_end(id(have))
            return False
        while self.tokens + n > self.capacity_tokens and self._entries:
            self._evict()
        keys = [cache.keys[i][row, :, column:column + n].clone() for i in range(cache.layers)]
        values = [cache.values[i][row, :, column:column + n].clone()
                  for i in range(cache.layers)]
        entry = _Entry(tuple(prompt[:n]), keys, values, hashes)
        self._entries[id(entry)] = entry
        for h in hashes:
            self._index[h] = entry
        self.tokens += n
        return True

    def _evict(self) -> None:
        _, old = self._entries.popitem(last=False)
        self.tokens -= len(old.tokens)
        for h in old.hashes:
            if self._index.get(h) is old:
                del self._index[h]

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self._entries.clear()
        self._index.clear()
        self.tokens = 0

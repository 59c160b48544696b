"""The KV cache of the running batch: one right-aligned buffer per layer.

Layout: per layer, keys and values of shape ``(rows, kv_heads, columns, head_dim)``. Row
``r`` holds one sequence; its tokens occupy columns ``start[r] .. t - 1`` where ``t`` (the
*write column*) is shared by every row. Because every running sequence gains exactly one
token per decode step, right alignment is kept for free: a decode step writes column
``t`` of all rows at once and attends over the column range ``lo .. t`` (``lo`` the
smallest start), with a mask that hides, for each row, the columns left of its start.
A newcomer is prefilled into a free row at columns ``t - p .. t - 1`` (``p`` its prompt
length; when ``t < p`` the content is first shifted right). Active rows are kept
contiguous (``0 .. rows - 1``): a finished row is replaced by the last row, so every
forward reads a view of the buffer, never a gathered copy.

Footprint: the buffer holds ``rows × (t - lo)`` token slots in use (padding included: it
is memory all the same); :attr:`SlotCache.allocated_tokens` is what is allocated. The
engine keeps ``allocated_tokens`` within its budget (see :mod:`.engine`); buffers grow by
whole blocks of rows (:data:`ROW_BLOCK`) and columns (:data:`COL_BLOCK`), and columns
left of ``lo`` are reclaimed by shifting the content left (compaction) before growing.

Invariant: every slot of the buffers holds a finite number. A row attends over the
columns ``lo .. t`` of the whole window and the mask hides those left of its start, but a
masked column still enters the attention product with weight 0, and ``0 × NaN`` (or
``0 × inf``) is NaN: one non-finite value left in a padding slot turns the row's logits
into NaN (argmax then picks token 0, often EOS; the sampler picks the last token of the
vocabulary). Fresh memory from the allocator may hold any bit pattern, so buffers are
allocated zeroed; every later write is a key or value computed by the model, or a copy of
one.

The object is also the ``cache`` argument of the transformers model call: attention
layers call :meth:`update` with their new keys/values; the engine sets the rows and
columns of the next call first (:meth:`set_window`).
"""

from __future__ import annotations

from typing import Any

#: Rows are allocated in blocks of this many sequences.
ROW_BLOCK = 8
#: Columns are allocated in blocks of this many tokens.
COL_BLOCK = 128


def _round_up(n: int, block: int) -> int:
    return max(block, -(-n // block) * block)


class SlotCache:
    """Right-aligned KV buffers of all layers (see the module docstring).

    Args:
        layers: number of attention layers.
        kv_heads: key/value heads per layer.
        head_dim: size of one head.
        dtype: torch dtype of the buffers.
        device: torch device.
        row_block: rows are allocated in blocks of this many (:data:`ROW_BLOCK`; 1 for
            the one-row cache of a prompt prefilled in chunks).
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: Any, device: str,
                 row_block: int = ROW_BLOCK) -> None:
        self.row_block = row_block
        self.layers = layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.row_cap = 0
        self.col_cap = 0
        self.rows = 0            # rows in use: 0 .. rows - 1
        self.t = 0               # the shared write column
        self.start: list[int] = []  # first column of each row in use
        # window of the next model call (set_window)
        self._r0 = 0
        self._r1 = 0
        self._c0 = 0
        self._lo = 0

    # ------------------------------------------------------------------ sizes
    @property
    def allocated_tokens(self) -> int:
        """Token slots allocated (rows × columns of the buffers)."""
        return self.row_cap * self.col_cap

    @property
    def lo(self) -> int:
        """Leftmost column in use (``t`` when no row is in use)."""
        return min(self.start) if self.start else self.t

    @property
    def used_tokens(self) -> int:
        """Token slots in use, padding included: ``rows × (t - lo)``."""
        return self.rows * (self.t - self.lo)

    def _caps(self, rows: int, need_left: int, need_right: int, limit: int | None,
              shrink: bool = False) -> tuple[int, int, int]:
        """``(row_cap, col_cap, new t)`` that :meth:`reserve` would use."""
        left = max(self.t - self.lo, need_left)
        if shrink:
            return (_round_up(rows, self.row_block), _round_up(left + need_right, COL_BLOCK),
                    left)
        row_cap = max(self.row_cap, _round_up(rows, self.row_block))
        col_cap = self.col_cap
        need = left + need_right
        if need > col_cap or row_cap != self.row_cap:
            grown = _round_up(max(need, col_cap + col_cap // 4), COL_BLOCK)
            if limit is not None and row_cap * grown > limit:
                grown = max(_round_up(need, COL_BLOCK), min(grown, limit // row_cap))
            col_cap = max(col_cap, grown) if need > col_cap else col_cap
        return row_cap, col_cap, left

    def tokens_after(self, rows: int, need_left: int, need_right: int,
                     limit: int | None = None, shrink: bool = False) -> int:
        """Tokens that would be allocated after :meth:`reserve` with these arguments."""
        row_cap, col_cap, _ = self._caps(rows, need_left, need_right, limit, shrink)
        return row_cap * col_cap

    # ------------------------------------------------------------------ storage
    def _realloc(self, row_cap: int, col_cap: int, shift: int) -> None:
        """New buffers of ``row_cap × col_cap``; live content moves ``shift`` columns
        right (negative: left)."""
        import torch

        lo, t = self.lo, self.t
        new_keys, new_values = [], []
        for i in range(self.layers):
            # zeros, never torch.empty: see the invariant in the module docstring
            k = torch.zeros((row_cap, self.kv_heads, col_cap, self.head_dim), dtype=self.dtype,
                            device=self.device)
            v = torch.zeros_like(k)
            if self.rows and t > lo:
                k[: self.rows, :, lo + shift: t + shift] = self.keys[i][: self.rows, :, lo:t]
                v[: self.rows, :, lo + shift: t + shift] = self.values[i][: self.rows, :, lo:t]
            new_keys.append(k)
            new_values.append(v)
        self.keys, self.values = new_keys, new_values
        self.row_cap, self.col_cap = row_cap, col_cap
        self.t += shift
        self.start = [s + shift for s in self.start]

    def _shift(self, shift: int) -> None:
        """Move live content ``shift`` columns within the current buffers."""
        lo, t = self.lo, self.t
        if self.rows and t > lo:
            for i in range(self.layers):
                for buf in (self.keys[i], self.values[i]):
                    buf[: self.rows, :, lo + shift: t + shift] = (
                        buf[: self.rows, :, lo:t].clone())
        self.t += shift
        self.start = [s + shift for s in self.start]

    def reserve(self, rows: int, need_left: int, need_right: int,
                limit: int | None = None, shrink: bool = False) -> None:
        """Make room for ``rows`` rows, ``need_left`` columns left of ``t`` and
        ``need_right`` columns from ``t`` on, growing columns by a quarter at a time but
        not past ``limit`` tokens when the room needed fits under it. ``t`` and the starts
        may move (content is shifted, or copied into larger buffers); nothing moves when
        there is room. ``shrink`` sizes the buffers to just what is needed (used when the
        buffers grew larger than the budget allows now)."""
        row_cap, col_cap, left = self._caps(rows, need_left, need_right, limit, shrink)
        if row_cap != self.row_cap or col_cap != self.col_cap:
            self._realloc(row_cap, col_cap, left - self.t)
            return
        if self.t < need_left or self.t + need_right > self.col_cap:
            if self.rows:
                self._shift(left - self.t)
            else:
                self.t = left

    def add_rows(self, starts: list[int]) -> int:
        """Take ``len(starts)`` rows with these first columns; returns the first row."""
        first = self.rows
        self.rows += len(starts)
        self.start.extend(starts)
        return first

    def copy_row(self, src: int, dst: int) -> None:
        """Copy the content of row ``src`` into row ``dst`` (columns ``lo .. t``)."""
        lo, t = self.lo, self.t
        for i in range(self.layers):
            self.keys[i][dst, :, lo:t] = self.keys[i][src, :, lo:t]
            self.values[i][dst, :, lo:t] = self.values[i][src, :, lo:t]
        self.start[dst] = self.start[src]

    def load_rows(self, first: int, count: int, src: SlotCache, length: int) -> None:
        """Copy the first ``length`` columns of row 0 of ``src`` (a prompt prefilled on
        its own) into rows ``first .. first + count - 1``, ending at ``t``."""
        t = self.t
        for i in range(self.layers):
            for dst, part in ((self.keys[i], src.keys[i]), (self.values[i], src.values[i])):
                dst[first:first + count, :, t - length:t] = part[0:1, :, :length]

    def remove_row(self, row: int) -> int | None:
        """Free ``row``; the last row moves into it. Returns the old index of the moved row
        (``None`` when ``row`` was the last)."""
        last = self.rows - 1
        moved: int | None = None
        if row != last:
            lo, t = min(self.start[last], self.start[row]), self.t
            for i in range(self.layers):
                self.keys[i][row, :, lo:t] = self.keys[i][last, :, lo:t]
                self.values[i][row, :, lo:t] = self.values[i][last, :, lo:t]
            self.start[row] = self.start[last]
            moved = last
        self.start.pop()
        self.rows -= 1
        return moved

    def release(self) -> None:
        """Free all buffers (nothing is running)."""
        self.keys, self.values = [], []
        self.row_cap = self.col_cap = self.rows = self.t = 0
        self.start = []

    # ------------------------------------------------------------------ model calls
    def set_window(self, r0: int, r1: int, c0: int) -> None:
        """The next model call covers rows ``r0 .. r1 - 1`` and writes its ``q`` new
        tokens at columns ``c0 .. c0 + q - 1``; it attends from the rows' leftmost start."""
        self._r0, self._r1, self._c0 = r0, r1, c0
        self._lo = min(self.start[r0:r1])

    def mask(self, q: int) -> Any:
        """Boolean attention mask ``(rows, 1, q, c0 + q - lo)`` of the window (True =
        attend): causal within the new tokens, nothing left of each row's start (a padding
        query, left of its row's start, attends to itself alone)."""
        import torch

        lo, c0 = self._lo, self._c0
        cols = torch.arange(lo, c0 + q, device=self.device)
        starts = torch.tensor(self.start[self._r0:self._r1], device=self.device)
        qpos = torch.arange(c0, c0 + q, device=self.device)
        c, q_at = cols[None, None, :], qpos[None, :, None]
        # a left-padding query sees itself only (no row is fully masked, so no NaN); real
        # queries never see padding columns
        m = ((c >= starts[:, None, None]) & (c <= q_at)) | (c == q_at)
        return m[:, None, :, :]

    def positions(self, q: int) -> Any:
        """Position ids ``(rows, q)`` of the new tokens (0 at each row's start; negative
        ones, left padding of a prefill, are clamped to 0 and masked anyway)."""
        import torch

        starts = torch.tensor(self.start[self._r0:self._r1], device=self.device)
        qpos = torch.arange(self._c0, self._c0 + q, device=self.device)
        return (qpos[None, :] - starts[:, None]).clamp_(min=0)

    def decode_columns(self) -> tuple[int, int]:
        """``(window, columns)`` of a decode call (``set_window`` with one new token):
        the columns it attends over (``lo .. c0``) and the columns of the buffers."""
        return self._c0 + 1 - self._lo, self.col_cap

    def decode_mask(self, dtype: Any) -> Any:
        """Additive mask ``(rows, 1, 1, columns)`` of a decode call over the buffers'
        whole width (:meth:`full_rows`): 0 on each row's columns ``start .. c0``, ``-inf``
        elsewhere (left of its start, and the columns right of the new token)."""
        import torch

        cols = torch.arange(self.col_cap, device=self.device)
        starts = torch.tensor(self.start[self._r0:self._r1], device=self.device)
        keep = (cols[None, :] >= starts[:, None]) & (cols[None, :] <= self._c0)
        mask = torch.zeros(keep.shape, dtype=dtype, device=self.device)
        return mask.masked_fill_(~keep, float("-inf"))[:, None, None, :]

    def full_rows(self, layer_idx: int) -> tuple[Any, Any]:
        """Keys and values of the window's rows over the buffers' whole width, as
        ``(rows × kv_heads, columns, head_dim)`` contiguous views (a batched product
        reads them in place; a column slice of the buffers would be copied first)."""
        r0, r1 = self._r0, self._r1
        shape = ((r1 - r0) * self.kv_heads, self.col_cap, self.head_dim)
        return (self.keys[layer_idx][r0:r1].view(shape),
                self.values[layer_idx][r0:r1].view(shape))

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[Any, Any]:
        """Store the new keys/values of layer ``layer_idx`` in the window; returns the
        keys/values to attend over (views of the buffers)."""
        q = key_states.shape[-2]
        r0, r1, c0, lo = self._r0, self._r1, self._c0, self._lo
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[r0:r1, :, c0:c0 + q] = key_states
        v[r0:r1, :, c0:c0 + q] = value_states
        return k[r0:r1, :, lo:c0 + q], v[r0:r1, :, lo:c0 + q]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._c0 - self._lo

    def __len__(self) -> int:
        return self.layers

"""The preallocated (static) KV cache: S slots, each one sequence and its unconditional twin.

A job of n variations takes n neighbouring slots, so its rows form one block and attention reads a view of the
cache, never a copy. Inside a block of slots s0..s0+n-1 the rows are laid out as `generate` lays out a request run
alone: the n conditional rows (2*s0 ... 2*s0+n-1), then the n unconditional ones. Position `max_positions` is a
scratch column that rows idle in a static step write to; no live row ever attends to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    slots: int
    layers: int
    heads: int
    head_dim: int
    max_positions: int  # decoder positions a job may use: BOS + prompt frames + new tokens
    max_text_tokens: int  # cross-attention length reserved per row (the static path pads to it)


class StaticKVCache:
    """Self-attention K/V (rows, heads, positions + 1, head_dim) per layer, and cross-attention K/V per layer."""

    def __init__(self, shape: CacheShape, *, dtype: torch.dtype, device: torch.device | str) -> None:
        self.shape = shape
        rows = 2 * shape.slots
        self.rows = rows
        size = (rows, shape.heads, shape.max_positions + 1, shape.head_dim)
        # zeros, not empty: the static path reads masked positions, and masked garbage could be NaN
        self.keys = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.layers)]
        self.values = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.layers)]
        cross = (rows, shape.heads, shape.max_text_tokens, shape.head_dim)
        self.cross_keys = [torch.zeros(cross, dtype=dtype, device=device) for _ in range(shape.layers)]
        self.cross_values = [torch.zeros(cross, dtype=dtype, device=device) for _ in range(shape.layers)]
        # True where a row may attend to a text position (False: padding, and every position of an unconditional row)
        self.cross_mask = torch.zeros((rows, 1, 1, shape.max_text_tokens), dtype=torch.bool, device=device)
        self.text_len = [0] * rows
        self._used = [False] * shape.slots

    @property
    def scratch_position(self) -> int:
        return self.shape.max_positions

    def bytes(self) -> int:
        tensors = self.keys + self.values + self.cross_keys + self.cross_values
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- slots ----------------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self._used.count(False)

    def largest_free_block(self) -> int:
        best = run = 0
        for used in self._used:
            run = 0 if used else run + 1
            best = max(best, run)
        return best

    def highest_used_slot(self) -> int:
        """1 + the highest slot in use (0 when empty): the slot count a static step must cover."""
        for s in range(self.shape.slots - 1, -1, -1):
            if self._used[s]:
                return s + 1
        return 0

    def allocate(self, n: int) -> int | None:
        """First slot of n free neighbouring slots, now taken; None when no such block is free."""
        run = 0
        for s, used in enumerate(self._used):
            run = 0 if used else run + 1
            if run == n:
                first = s - n + 1
                for t in range(first, first + n):
                    self._used[t] = True
                return first
        return None

    def release(self, first: int, n: int) -> None:
        for t in range(first, first + n):
            self._used[t] = False
        rows = slice(2 * first, 2 * (first + n))
        self.cross_mask[rows] = False
        for r in range(rows.start, rows.stop):
            self.text_len[r] = 0

    # -- cross-attention ------------------------------------------------------------------------------------

    def set_cross(self, layer: int, first_row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keys/values (rows, heads, text, head_dim) of a job's block, computed once when it is admitted."""
        rows, _, text, _ = keys.shape
        if text > self.shape.max_text_tokens:
            raise ValueError(f"the prompt is {text} tokens long; at most {self.shape.max_text_tokens} fit")
        block = slice(first_row, first_row + rows)
        self.cross_keys[layer][block] = 0
        self.cross_values[layer][block] = 0
        self.cross_keys[layer][block, :, :text] = keys
        self.cross_values[layer][block, :, :text] = values

    def set_cross_mask(self, first_row: int, mask: torch.Tensor) -> None:
        """mask: (rows, text) bool, True where the row attends."""
        rows, text = mask.shape
        block = slice(first_row, first_row + rows)
        self.cross_mask[block] = False
        self.cross_mask[block, 0, 0, :text] = mask
        for r in range(block.start, block.stop):
            self.text_len[r] = text

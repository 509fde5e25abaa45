"""Per-row seeded sampling for MusicGen, run as a logits processor inside transformers' `generate`.

`generate` samples every row from one global RNG, so a job's audio would depend on what else shares its batch.
Here each row (one variation of one job) draws from its own `torch.Generator`, and transformers is left to pick
the argmax of a mask that holds only our token. The processor sees the guidance-doubled batch (all conditional
rows, then all unconditional ones) before transformers applies guidance, so guidance is applied here, and the mask
is written into both halves with finite values (-inf would turn into NaN in the guidance step).

It also records every token, reports progress, checks for cancellation, and stops the call after the last step,
which leaves the un-delaying and decoding, per job and at each job's own length, to the backend.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from generation.backend import GenerationCancelled
from generation.types import Progress, ProgressCallback, SamplingParams

MASK_VALUE = -1e9


class SamplingFinished(Exception):
    """Raised after the last token has been drawn: nothing of `generate` after sampling is needed."""


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, row by row: the one recipe of the `generate` path and of
    the engine's own decoder (generation/decoder/sampling.py), so both draw the same tokens."""
    logits = logits / max(params.temperature, 1e-5)
    if params.top_k and params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        threshold = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if params.top_p and 0.0 < params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits.softmax(-1)


class RowSampler:
    """A transformers logits processor (callable on input_ids, scores) that samples each row on its own RNG."""

    def __init__(
        self,
        *,
        seeds: list[int],
        num_codebooks: int,
        sampling: SamplingParams,
        total_steps: int,
        device: torch.device,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.num_codebooks = num_codebooks
        self.sampling = sampling
        self.total_steps = total_steps
        self.progress = progress
        self.should_stop = should_stop
        self.generators = [torch.Generator(device=device).manual_seed(int(s) & 0xFFFF_FFFF_FFFF_FFFF) for s in seeds]
        self.steps = 0
        self.started = time.monotonic()
        self.sequences: torch.Tensor | None = None  # (rows * codebooks, max_length) when finished

    def _filtered_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return filtered_probs(logits, self.sampling)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.should_stop is not None and self.should_stop():
            raise GenerationCancelled("all jobs in this batch were cancelled")
        rows = len(self.generators)
        k = self.num_codebooks
        n = rows * k
        scores = scores.float()
        if scores.shape[0] == 2 * n:
            cond, uncond = scores[:n], scores[n:]
            logits = uncond + (cond - uncond) * self.sampling.guidance
        else:
            logits = scores
        probs = self._filtered_probs(logits)
        tokens = torch.empty(n, dtype=torch.long, device=scores.device)
        for row, gen in enumerate(self.generators):
            block = slice(row * k, (row + 1) * k)
            tokens[block] = torch.multinomial(probs[block], 1, generator=gen).squeeze(-1)
        self.steps += 1
        if self.progress is not None:
            self.progress(Progress(self.steps, self.total_steps, time.monotonic() - self.started))
        if self.steps >= self.total_steps:
            self.sequences = torch.cat([input_ids, tokens[:, None]], dim=-1)
            raise SamplingFinished()
        mask = torch.full_like(scores, MASK_VALUE)
        index = tokens.repeat(scores.shape[0] // n)[:, None]
        mask.scatter_(-1, index, 0.0)
        return mask

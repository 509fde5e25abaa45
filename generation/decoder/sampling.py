"""One job's tokens for one step: guidance, then temperature / top-k / top-p, then a draw from each slot's own RNG.

The operations are those of `generation.sampling.RowSampler` (the `generate` path), applied to one job's rows
only, so a job's tokens never depend on what else runs in the step, and its sampling parameters are its own.
"""

from __future__ import annotations

import torch

from generation.sampling import filtered_probs
from generation.types import SamplingParams


def new_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The RNG of one variation: seeded exactly as RowSampler seeds its rows."""
    return torch.Generator(device=device).manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


def sample_job(scores: torch.Tensor, *, slots: int, num_codebooks: int, guided: bool, params: SamplingParams,
               generators: list[torch.Generator]) -> torch.Tensor:
    """Tokens (slots, codebooks) from a job's fp32 logits: (2 if guided else 1) * slots * codebooks rows, all
    conditional rows first, then all unconditional ones (the layout `generate` gives a job run alone)."""
    n = slots * num_codebooks
    if guided:
        cond, uncond = scores[:n], scores[n:]
        logits = uncond + (cond - uncond) * params.guidance
    else:
        logits = scores
    probs = filtered_probs(logits, params)
    tokens = torch.empty(n, dtype=torch.long, device=scores.device)
    for slot, gen in enumerate(generators):
        block = slice(slot * num_codebooks, (slot + 1) * num_codebooks)
        tokens[block] = torch.multinomial(probs[block], 1, generator=gen).squeeze(-1)
    return tokens.view(slots, num_codebooks)

"""One job's tokens for one step: guidance, then temperature / top-k / top-p, then a draw from each slot's own RNG.

The operations are those of `generation.sampling.RowSampler` (the `generate` path), applied to one job's rows
only, so a job's tokens never depend on what else runs in the step, and its sampling parameters are its own.
"""

from __future__ import annotations

import torch

from generation.types import SamplingParams


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, row by row (RowSampler's recipe, op for op)."""
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

"""A finished decoder job's codes and audio: un-delayed, EnCodec-decoded and cut to the asked length, as the
`generate` path delivers them (a continuation stitched onto its prompt)."""

from __future__ import annotations

import torch

from generation.decoder.jobs import LiveJob
from generation.types import DELAY_STEPS, Audio


def undelayed_codes(job: LiveJob, num_codebooks: int) -> torch.Tensor:
    """(slots, codebooks, frames): codebook c's tokens start c + 1 positions in; the prompt's frames included."""
    count = job.prompt_frames + job.steps - DELAY_STEPS
    return torch.stack([torch.stack([job.seq[s, c, c + 1:c + 1 + count] for c in range(num_codebooks)])
                        for s in range(job.slots)])


def audio_of(backend, job: LiveJob, codes: torch.Tensor) -> list[Audio]:
    """One Audio per variation. Raises torch.OutOfMemoryError when EnCodec's decoding does not fit."""
    values = backend.model.audio_encoder.decode(codes[None], [None] * job.slots).audio_values
    audio = values.float().cpu().numpy()[:, 0, :]
    request = job.handle.request
    wanted = job.prompt_frames * backend.hop + round(request.duration_s * backend.sample_rate)
    out = [Audio(a[None, :wanted].copy(), backend.sample_rate) for a in audio]
    if request.audio_prompt is not None:
        out = [backend._stitch(request.audio_prompt, job.prompt_samples, piece) for piece in out]
    return out

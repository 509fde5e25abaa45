"""Continue audio by any number of seconds, up to five minutes, one model window at a time.

MusicGen sees at most ~30 s. Past that, each window continues the last ~10 s of what exists so far; the backend
keeps the existing audio untouched and crossfades its continuation in, so the pieces join into one file.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from generation.backend import Backend
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback, SamplingParams, tokens_for

MAX_TOTAL_S = 300.0
CONTEXT_S = 10.0
WINDOW_SEED_STRIDE = 7919  # window w of a variation draws from seed + i + w * stride


class ContinuationError(ValueError):
    """The asked continuation is impossible; the message can be shown to a user."""


def plan_windows(existing_s: float, add_s: float, *, max_call_s: float, context_s: float = CONTEXT_S) -> list[tuple[float, float]]:
    """(context seconds, new seconds) for each model call, in order."""
    if add_s <= 0:
        raise ContinuationError("Tell me how many seconds to add (more than 0).")
    if existing_s + add_s > MAX_TOTAL_S + 1e-6:
        raise ContinuationError(
            f"That would make the piece {existing_s + add_s:.0f} s long; the limit is {MAX_TOTAL_S / 60:.0f} minutes."
        )
    windows, have, left = [], existing_s, add_s
    while left > 1e-6:
        context = min(context_s, have, max_call_s - 1.0)
        new = min(left, max_call_s - context)
        windows.append((context, new))
        have += new
        left -= new
    return windows


def continue_audio(
    backend: Backend,
    audio: Audio,
    prompt: str,
    add_s: float,
    *,
    variations: int = 1,
    seed: int = 0,
    sampling: SamplingParams = SamplingParams(),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Audio]:
    """The whole continued piece for each variation: `audio` followed by `add_s` seconds of new music."""
    if not backend.supports_continuation:
        raise ContinuationError(f"{backend.model_id} cannot continue audio.")
    if audio.sample_rate != backend.sample_rate:
        raise ValueError(f"audio must be at the model's rate ({backend.sample_rate} Hz)")
    mono = audio.samples.mean(axis=0, keepdims=True).astype(np.float32)
    if mono.shape[-1] < backend.sample_rate // 10:
        raise ContinuationError("That audio is too short to continue (under 0.1 s).")
    windows = plan_windows(mono.shape[-1] / audio.sample_rate, add_s, max_call_s=backend.max_duration_s)
    total_steps = sum(tokens_for(new) for _, new in windows)
    pieces = [mono.copy() for _ in range(variations)]
    done_steps = 0
    for w, (context_s, new_s) in enumerate(windows):
        context_len = int(round(context_s * audio.sample_rate))
        requests = [
            GenerationRequest(prompt=prompt, duration_s=new_s, variations=1, seed=seed + i + w * WINDOW_SEED_STRIDE,
                              sampling=sampling, audio_prompt=Audio(piece[:, -context_len:], audio.sample_rate))
            for i, piece in enumerate(pieces)
        ]

        def report(p: Progress, offset: int = done_steps) -> None:
            if progress is not None:
                progress(replace(p, step=offset + p.step, total=total_steps))

        results = backend.generate(requests, progress=report, should_stop=should_stop)
        for i, variation in enumerate(results):
            window = variation[0].samples
            # The window output is the context (kept as it was, crossfaded at its end) followed by the new part.
            pieces[i] = np.concatenate([pieces[i][:, : pieces[i].shape[-1] - context_len], window], axis=-1)
        done_steps += tokens_for(new_s)
    wanted = mono.shape[-1] + int(round(add_s * audio.sample_rate))
    return [Audio(p[:, :wanted], audio.sample_rate) for p in pieces]

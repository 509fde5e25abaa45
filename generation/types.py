"""Plain values that cross the engine's boundary (no torch here, so every layer may import them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MAX_VARIATIONS = 4
FRAME_RATE = 50  # MusicGen's EnCodec at 32 kHz: 640 samples a frame
DELAY_STEPS = 3  # the delay pattern of 4 codebooks costs 3 extra steps


def tokens_for(duration_s: float) -> int:
    """MusicGen's model steps (new tokens) for an exact duration: 50 per second, plus the delay pattern's 3."""
    return math.ceil(round(duration_s * FRAME_RATE, 6)) + DELAY_STEPS


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn. Jobs batch together only when these are equal."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    guidance: float = 3.0


@dataclass
class Audio:
    """Float32 samples shaped (channels, frames), in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate

    @property
    def channels(self) -> int:
        return self.samples.shape[0]


@dataclass(frozen=True)
class GenerationRequest:
    """One job's worth of generation: `variations` rows of the same prompt, seeds seed..seed+variations-1."""

    prompt: str
    duration_s: float
    variations: int = 1
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Continuation: the audio to continue. The output starts with it.
    audio_prompt: Audio | None = None
    # Melody conditioning (MusicGen-melody): audio whose chroma the output follows.
    melody: Audio | None = None
    # --- Diffusion models (Stable Audio, generation/stable_audio.py); MusicGen ignores these. ---
    # Denoising steps; None: the backend's default.
    steps: int | None = None
    # What the output should not sound like (classifier-free guidance's unconditional side).
    negative_prompt: str | None = None
    # Audio-to-audio variation: the track to vary, and how far from it to go (0 stays close, 1 ignores it;
    # None: the backend's default).
    init_audio: Audio | None = None
    strength: float | None = None


@dataclass(frozen=True)
class Progress:
    """A step of a model call, for progress bars and ETAs."""

    step: int
    total: int
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]

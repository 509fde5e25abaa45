"""Remix through MusicGen-melody: keep a piece's melody (its chroma), change its style (the text prompt).

The chroma is computed here in numpy, by the recipe of transformers' `MusicgenMelodyFeatureExtractor` (which needs
torchaudio, not installed here): 32 kHz mono, a power spectrogram (Hann window of 16384, hop 4096, centred with
reflection, window-normalised), librosa's chroma filter bank, then one-hot of the strongest pitch class per frame.
Unlike the extractor, the chroma is never padded to 30 s: padding is silence, and silent frames read as C.

The model prepends the chroma (looped to its `chroma_length`, 235 frames for the real model) and the text to the
decoder's input, and attends to both without a padding mask. So:

- every row's chroma is looped to `chroma_length` here, exactly as the model would, and melodies of any length
  share a batch;
- prompts of different token counts would be padded, and padding would change what the other rows hear and where
  their positions start. A batch is therefore run as one model call per prompt token count, in order, so each row
  comes out as it would alone (variation i = seed + i, like MusicGen).
"""

from __future__ import annotations

import logging
import math
import time
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from generation.backend import Backend, ModelLoadError
from generation.hub import hub_load_options
from generation.musicgen import MusicGenBase, explain_load_error
from generation.out_of_memory import is_out_of_memory
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback, SamplingParams, tokens_for

log = logging.getLogger(__name__)

FAMILY = "musicgen-melody"
MELODY_SETTING = "BANDMATE_MELODY_MODEL"
DEFAULT_MELODY_MODEL = "facebook/musicgen-melody"
MELODY_NEEDED = (f"Remix needs a melody model: set {MELODY_SETTING} to {DEFAULT_MELODY_MODEL} (or a local folder "
                 "holding a MusicGen-melody checkpoint).")

CHROMA_RATE = 32_000
CHROMA_N_FFT = 16_384
CHROMA_HOP = 4_096
NUM_CHROMA = 12
MAX_MELODY_S = 30.0  # the extractor's chunk_length: what the model was trained to follow
_FRAME_BLOCK = 64  # STFT frames transformed at once, to bound memory on long inputs


# -- chroma ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _chroma_filters(n_fft: int, n_chroma: int, sampling_rate: int) -> np.ndarray:
    """(n_chroma, n_fft // 2 + 1), the extractor's own call (it passes n_fft as `num_frequency_bins`)."""
    from transformers.audio_utils import chroma_filter_bank

    bank = np.ascontiguousarray(
        chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=n_chroma, sampling_rate=sampling_rate, tuning=0),
        dtype=np.float32)
    bank.flags.writeable = False  # cached and shared
    return bank


@lru_cache(maxsize=4)
def _hann(n: int) -> np.ndarray:
    """torch.hann_window(n): the periodic Hann window torchaudio's Spectrogram uses."""
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    window.flags.writeable = False  # cached and shared
    return window


def _power_chroma(mono: np.ndarray, n_fft: int, hop: int, filters: np.ndarray) -> np.ndarray:
    """Chroma energy per frame, (frames, n_chroma): |STFT|^2 / sum(window^2), folded through the filter bank."""
    padded = np.pad(mono, (n_fft // 2, n_fft // 2), mode="reflect")
    frames = 1 + mono.shape[-1] // hop
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:frames]
    window = _hann(n_fft)
    scale = np.float32(1.0 / float(np.sum(window.astype(np.float64) ** 2)))
    out = np.empty((frames, filters.shape[0]), dtype=np.float32)
    for start in range(0, frames, _FRAME_BLOCK):
        spectrum = np.fft.rfft(windows[start:start + _FRAME_BLOCK] * window, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32) * scale
        out[start:start + _FRAME_BLOCK] = power @ filters.T
    return out


def chroma_from_audio(
    samples: np.ndarray,
    sample_rate: int,
    *,
    target_rate: int = CHROMA_RATE,
    n_fft: int = CHROMA_N_FFT,
    hop: int = CHROMA_HOP,
    n_chroma: int = NUM_CHROMA,
    max_seconds: float | None = None,
) -> np.ndarray:
    """One-hot chroma, (frames, n_chroma) float32, of audio shaped (channels, frames) or (frames,).

    Resampled to `target_rate` first (soxr), then mixed to mono and cut to `max_seconds` (the extractor truncates to
    its 30 s chunk), never padded beyond what a too-short input needs for one window. Bin 0 is C.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or data.shape[-1] == 0:
        raise ValueError("chroma needs audio shaped (channels, frames) with at least one frame")
    if sample_rate != target_rate:
        import soxr

        data = np.ascontiguousarray(soxr.resample(np.ascontiguousarray(data.T), sample_rate, target_rate).T,
                                    dtype=np.float32)
    mono = data.mean(axis=0)
    if max_seconds is not None:
        mono = mono[: max(1, int(round(max_seconds * target_rate)))]
    if mono.shape[-1] < n_fft:
        # The extractor's own rule: centre a too-short input in one window of zeros.
        pad = n_fft - mono.shape[-1]
        mono = np.pad(mono, (pad // 2, pad // 2 + pad % 2))
    energy = _power_chroma(mono, n_fft, hop, _chroma_filters(n_fft, n_chroma, target_rate))
    # The extractor divides each frame by its max (eps 1e-6) before the argmax; a positive scale changes no argmax,
    # and an all-zero frame lands on bin 0 either way.
    chroma = np.zeros_like(energy)
    chroma[np.arange(energy.shape[0]), energy.argmax(axis=-1)] = 1.0
    return chroma


def loop_chroma(chroma: np.ndarray, length: int) -> np.ndarray:
    """The chroma repeated and cut to `length` frames: what the model does to a shorter one, done before batching."""
    repeats = max(1, math.ceil(length / chroma.shape[0]))
    return np.tile(chroma, (repeats, 1))[:length]


# -- errors -----------------------------------------------------------------------------------------------------


def melody_load_error(model_id: str, error: BaseException) -> str:
    """MusicGen's load advice, in melody-model terms, after the line that says what remix needs."""
    if is_out_of_memory(error):
        detail = f"Not enough memory to load {model_id}: run it on the CPU (BANDMATE_DEVICE=cpu) or a larger GPU."
    else:
        detail = explain_load_error(model_id, error, kind="MusicGen-melody", setting=MELODY_SETTING,
                                    example=DEFAULT_MELODY_MODEL)
    return f"{MELODY_NEEDED} {detail}"


def melody_backend(backend_for: Callable[[str], Backend], model_id: str | None) -> Backend:
    """The loaded melody backend for a remix, or a ModelLoadError that tells the operator what to configure."""
    if not model_id:
        raise ModelLoadError(f"{MELODY_NEEDED} No melody model is configured.")
    try:
        backend = backend_for(model_id)
    except ModelLoadError as error:
        if str(error).startswith(MELODY_NEEDED):
            raise
        raise ModelLoadError(f"{MELODY_NEEDED} {error}") from error
    if getattr(backend, "family", None) != FAMILY:
        raise ModelLoadError(f"{MELODY_NEEDED} {model_id} is a {getattr(backend, 'family', 'different')} model, "
                             "which cannot follow a melody.")
    return backend


# -- backend ----------------------------------------------------------------------------------------------------


def _shifted(progress: ProgressCallback | None, offset: int, total: int, started: float) -> ProgressCallback | None:
    """One model call's progress as part of the whole batch's: steps after `offset`, out of `total`."""
    if progress is None:
        return None

    def report(p: Progress) -> None:
        progress(Progress(offset + p.step, total, time.monotonic() - started))

    return report



class MelodyBackend(MusicGenBase):
    """One loaded MusicGen-melody model. Each request needs `melody`; it cannot continue audio."""

    family = FAMILY
    supports_continuation = False

    def __init__(self, model, processor, model_id: str, choice) -> None:
        super().__init__(model, processor, model_id, choice)
        self.chroma_length = int(model.config.chroma_length)
        self.num_chroma = int(model.config.num_chroma)
        projection = getattr(model, "audio_enc_to_dec_proj", None)
        self._chroma_dtype = projection.weight.dtype if projection is not None else model.decoder.dtype

    @classmethod
    def _load_pretrained(cls, model_id: str):
        from transformers import AutoConfig, AutoTokenizer, MusicgenMelodyForConditionalGeneration

        try:
            options = hub_load_options(model_id, setting=MELODY_SETTING)
        except ModelLoadError as error:
            raise ModelLoadError(f"{MELODY_NEEDED} {error}") from error
        config = AutoConfig.from_pretrained(model_id, **options)
        if config.model_type != "musicgen_melody":
            raise ModelLoadError(f"{MELODY_NEEDED} {model_id} holds a {config.model_type} model, which cannot "
                                 "follow a melody.")
        # Only the tokenizer is needed (the chroma is computed here), and AutoProcessor would fail without
        # torchaudio because of the melody feature extractor.
        tokenizer = AutoTokenizer.from_pretrained(model_id, **options)
        model = MusicgenMelodyForConditionalGeneration.from_pretrained(model_id, dtype=torch.float32, **options)
        return tokenizer, model

    @classmethod
    def _explain_load_error(cls, model_id: str, error: BaseException) -> str:
        return melody_load_error(model_id, error)

    # -- generation -------------------------------------------------------------------------------------------

    def melody_chroma(self, melody: Audio) -> np.ndarray:
        """The melody's one-hot chroma (its first 30 s), looped to the model's chroma length."""
        if melody.duration_s > MAX_MELODY_S:
            log.info("melody is %.1f s long; the remix follows its first %.0f s", melody.duration_s, MAX_MELODY_S)
        chroma = chroma_from_audio(melody.samples, melody.sample_rate, n_chroma=self.num_chroma,
                                   max_seconds=MAX_MELODY_S)
        return loop_chroma(chroma, self.chroma_length)

    def _check_batch(self, requests: list[GenerationRequest]) -> None:
        for r in requests:
            if r.melody is None:
                raise ValueError("a remix request needs a melody")
            if r.audio_prompt is not None:
                raise ValueError("MusicGen-melody cannot continue audio: remix requests take a melody only")
            if r.duration_s > self.max_duration_s + 1e-6:
                raise ValueError(f"a remix is at most {self.max_duration_s:.0f} s long")

    def _generate_batch(self, requests, sampling: SamplingParams, progress: ProgressCallback | None,
                        should_stop: Callable[[], bool] | None) -> list[list[Audio]]:
        groups: dict[int, list[int]] = {}
        for index, r in enumerate(requests):
            groups.setdefault(len(self.tokenizer(r.prompt)["input_ids"]), []).append(index)
        steps = [max(tokens_for(requests[i].duration_s) for i in group) for group in groups.values()]
        total, done, started = sum(steps), 0, time.monotonic()
        out: dict[int, list[Audio]] = {}
        for group, group_steps in zip(groups.values(), steps):
            report = _shifted(progress, done, total, started)
            out.update(zip(group, self._remix([requests[i] for i in group], sampling, report, should_stop)))
            done += group_steps
        return [out[i] for i in range(len(requests))]

    def _remix(self, requests: list[GenerationRequest], sampling: SamplingParams, progress, should_stop):
        """One model call for requests whose prompts have one token count."""
        texts, seeds, new_tokens = self._rows(requests)
        chroma = []
        for r in requests:
            chroma.extend([self.melody_chroma(r.melody)] * r.variations)
        features = torch.from_numpy(np.stack(chroma)).to(self.device, self._chroma_dtype)
        frames = self._run(texts, seeds, new_tokens, sampling, prompt_codes=None, progress=progress,
                           should_stop=should_stop, extra={"input_features": features})
        return self._decode_requests(requests, frames, prompt_frames=0)

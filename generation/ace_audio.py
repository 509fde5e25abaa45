"""Waveform work around the ACE-Step pipeline (numpy only): fitting inputs to 48 kHz stereo, splicing a repaint
into its source, levels, and the "other" stem.

Why the repaint is spliced here rather than trusted to the model: the pipeline regenerates the whole latent
sequence (outside the range only conditioned on the source) and its autoencoder does not reproduce audio exactly,
so its output differs from the source everywhere. The promise to users is that only the asked range changes: the
result is the source, sample for sample, outside [start, end], the model's audio inside, with a short raised-cosine
crossfade just inside each edge.
"""

from __future__ import annotations

import numpy as np

from generation.types import Audio

PEAK_TARGET = 10.0 ** (-1.0 / 20.0)  # -1 dBFS, as ACE-Step's own pipeline normalises new songs


def to_model_audio(samples: np.ndarray, sample_rate: int, model_rate: int, channels: int = 2) -> np.ndarray:
    """float32 (channels, frames) at the model's rate: resampled with soxr, mono duplicated, extra channels cut."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if sample_rate != model_rate:
        import soxr

        x = np.ascontiguousarray(soxr.resample(x.T, sample_rate, model_rate).T, dtype=np.float32)
    if channels == 1:
        x = x.mean(axis=0, keepdims=True)
    elif x.shape[0] == 1:
        x = np.repeat(x, channels, axis=0)
    else:
        x = x[:channels]
    return np.ascontiguousarray(x, dtype=np.float32)


def pad_to_multiple(x: np.ndarray, hop: int) -> np.ndarray:
    """Zero-pad the last axis up to a whole number of latent frames (the encoder drops a partial last frame)."""
    extra = (-x.shape[-1]) % hop
    if not extra:
        return x
    return np.concatenate([x, np.zeros(x.shape[:-1] + (extra,), dtype=x.dtype)], axis=-1)


def fit_length(x: np.ndarray, frames: int) -> np.ndarray:
    """Cut or zero-pad the last axis to exactly `frames`."""
    if x.shape[-1] >= frames:
        return np.ascontiguousarray(x[..., :frames])
    return np.concatenate([x, np.zeros(x.shape[:-1] + (frames - x.shape[-1],), dtype=x.dtype)], axis=-1)


def repaint_bounds(start_s: float, end_s: float, frames: int, sample_rate: int) -> tuple[int, int]:
    """The range in samples, inside the track."""
    a = max(0, min(frames, int(round(start_s * sample_rate))))
    b = max(a, min(frames, int(round(end_s * sample_rate))))
    return a, b


def splice_repaint(source: np.ndarray, generated: np.ndarray, start: int, end: int, fade: int) -> np.ndarray:
    """The source with samples [start, end) taken from `generated`, crossfaded over `fade` samples just inside each
    edge (shorter when the range is short, none at the track's own ends). Outside [start, end) the result is the
    source exactly."""
    out = np.array(source, dtype=np.float32, copy=True)
    if end <= start:
        return out
    gen = np.asarray(generated, dtype=np.float32)[..., start:end]
    fade = max(0, min(int(fade), (end - start) // 2))
    weight = np.ones(end - start, dtype=np.float32)
    if fade:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade, dtype=np.float64) + 0.5) / fade)).astype(np.float32)
        if start > 0:
            weight[:fade] = ramp
        if end < source.shape[-1]:
            weight[-fade:] = ramp[::-1]
    inside = out[..., start:end]
    out[..., start:end] = inside + weight * (np.clip(gen, -1.0, 1.0) - inside)
    return out


def anti_clip(x: np.ndarray) -> np.ndarray:
    """Scale down only when the peak is over full scale (the pipeline's own guard)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    return x / peak if peak > 1.0 else x


def peak_normalise(x: np.ndarray, target: float = PEAK_TARGET) -> np.ndarray:
    """Peak to -1 dBFS, as the pipeline does for a new song or cover (silence stays silence)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    return x if peak < 1e-6 else x * np.float32(target / peak)


def stems_with_other(mix: np.ndarray, stems: dict[str, np.ndarray], want_other: bool) -> dict[str, np.ndarray]:
    """The extracted stems, and "other" as what is left of the mix; all scaled by one factor when any would clip,
    so the stems still add up to the mix."""
    out = dict(stems)
    if want_other:
        out["other"] = mix - sum(stems.values())
    peak = max((float(np.abs(v).max()) for v in out.values() if v.size), default=0.0)
    if peak > 1.0:
        out = {k: v / np.float32(peak) for k, v in out.items()}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def mix_in(source: Audio, part: Audio) -> np.ndarray:
    """`part` (made at the model's rate, for the source as context) added to the source at the source's rate and
    channels; scaled down together only when the sum would clip."""
    original = np.asarray(source.samples, dtype=np.float32)
    if original.ndim == 1:
        original = original[None, :]
    added = to_model_audio(part.samples, part.sample_rate, source.sample_rate, original.shape[0])
    return anti_clip(original + fit_length(added, original.shape[-1])).astype(np.float32)

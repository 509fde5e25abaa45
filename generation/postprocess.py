"""Turns generated samples into the files users get: a FLAC master, a tagged MP3 and a waveform PNG.

Why this exists: model output varies wildly in level and stops mid-sample, Discord wants a small file every client
plays, and every file we hand out must say it is AI-generated, by which model, under which licence, while never
naming the person who asked for it (`Provenance` has no user field on purpose, and refuses params that look like one).

Every file is written atomically (a temporary name in the same directory, then `os.replace`), so a reader, a retry
or an upload never sees half a file. MP3 goes through ffmpeg/libmp3lame into a real (seekable) file so the Xing/LAME
header records the encoder delay and padding: decoders then trim them and the MP3 is as long as the audio.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyloudnorm
import soundfile
import soxr
from mutagen.id3 import CHAP, COMM, CTOC, ID3, TIT2, TPE1, TSSE, TXXX, CTOCFlags, ID3NoHeaderError

from generation import __version__
from generation.atomic import write_atomic
from generation.types import Audio
from generation.waveform import render_waveform

log = logging.getLogger(__name__)

# Loudness normalisation never boosts by more than this: a near-silent render stays quiet instead of becoming hiss.
MAX_GAIN_DB = 30.0
# True peak is estimated by 4x oversampling, as in ITU-R BS.1770 (inter-sample peaks clip after MP3 decoding too).
TRUE_PEAK_OVERSAMPLING = 4

MP3_BITRATE_LADDER_KBPS = (192, 160, 128, 112, 96, 80, 64, 48, 32)
# Sample rates MP3 can carry, and the bitrates each MPEG version allows (MPEG-1 from 32 kHz; MPEG-2/2.5 below).
MP3_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
_MPEG1_BITRATES = frozenset({32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320})
_MPEG2_BITRATES = frozenset({8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160})

TITLE_MAX_CHARS = 60
ARTIST = "Bandmate"
# Keys in `Provenance.params` that could identify a person; provenance describes the track, never the requester.
_PERSONAL_KEY = re.compile(r"user|author|member|requester|owner", re.IGNORECASE)


@dataclass(frozen=True)
class Provenance:
    """What made a track, written into its tags. Deliberately has no user/guild/channel field."""

    track_id: str
    prompt: str
    seed: int
    model_id: str
    model_license: str
    params: dict  # JSON-serialisable generation parameters
    software: str = f"bandmate {__version__}"

    def __post_init__(self) -> None:
        try:
            encoded = json.dumps(self.params, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"provenance params must be JSON-serialisable: {exc}") from exc
        if personal := _personal_keys(self.params):
            raise ValueError(f"provenance params must not identify a person: {sorted(personal)}")
        # A detached copy: later changes to the caller's dict cannot change what gets written.
        object.__setattr__(self, "params", json.loads(encoded))
        object.__setattr__(self, "seed", int(self.seed))

    def txxx(self) -> dict[str, str]:
        """The TXXX frames, description -> text, in the order they are written."""
        return {
            "ai_generated": "true",
            "model": self.model_id,
            "model_license": self.model_license,
            "prompt": self.prompt,
            "seed": str(self.seed),
            "params": json.dumps(self.params, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            "software": self.software,
            "track_id": self.track_id,
        }


@dataclass(frozen=True)
class RenderedTrack:
    mp3: Path
    png: Path
    flac: Path
    duration_s: float


def _personal_keys(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if _PERSONAL_KEY.search(str(key)):
                found.add(str(key))
            found |= _personal_keys(inner)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            found |= _personal_keys(inner)
    return found


# --- samples -----------------------------------------------------------------------------------------------------


def _as_channels_first(samples: np.ndarray) -> np.ndarray:
    """(channels, frames) float64 view of mono 1-D or (channels, frames) input, non-finite values zeroed."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    if x.ndim != 2:
        raise ValueError(f"expected samples shaped (channels, frames) or (frames,), got {x.shape}")
    if not np.all(np.isfinite(x)):
        log.warning("audio contains NaN/inf samples; replacing them with silence")
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _integrated_loudness(x: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS of (channels, frames); -inf for silence.

    Audio shorter than one 400 ms gating block is measured looped up to block length: the meter cannot measure less,
    and looping keeps the level of what is there.
    """
    meter = pyloudnorm.Meter(sample_rate)
    frames = x.shape[1]
    needed = int(np.ceil(meter.block_size * sample_rate)) + 1
    if frames < needed:
        x = np.tile(x, (1, -(-needed // frames)))
    return float(meter.integrated_loudness(x.T))


def _true_peak(x: np.ndarray, sample_rate: int) -> float:
    """Peak magnitude including inter-sample peaks (estimated by oversampling)."""
    sample_peak = float(np.max(np.abs(x)))
    if sample_peak == 0.0:
        return 0.0
    oversampled = soxr.resample(np.ascontiguousarray(x.T), sample_rate, sample_rate * TRUE_PEAK_OVERSAMPLING)
    return max(sample_peak, float(np.max(np.abs(oversampled))))


def normalize_loudness(
    samples: np.ndarray, sample_rate: int, target_lufs: float = -14.0, peak_dbfs: float = -1.0
) -> np.ndarray:
    """Gain to `target_lufs` integrated loudness, reduced if needed so the true peak stays at or below `peak_dbfs`.

    A single gain for the whole track (no compression), so the music's dynamics are untouched. Silence stays silence,
    gain is capped at +MAX_GAIN_DB, and the shape and length of the input are kept. Returns float32.
    """
    x = _as_channels_first(samples)
    if x.shape[1] == 0:
        return np.zeros(np.shape(samples), dtype=np.float32)

    loudness = _integrated_loudness(x, sample_rate)
    gain_db = min(target_lufs - loudness, MAX_GAIN_DB) if np.isfinite(loudness) else 0.0
    gain = 10.0 ** (gain_db / 20.0)

    limit = 10.0 ** (peak_dbfs / 20.0)
    peak = _true_peak(x, sample_rate) * gain
    if peak > limit:
        log.debug("true peak would be %.2f dBFS; lowering the gain to fit", 20 * np.log10(peak))
        gain *= limit / peak
    log.debug("loudness %.2f LUFS -> gain %.2f dB", loudness, 20 * np.log10(gain))

    # The clip only catches float rounding: the gain already keeps the sample peak under the limit.
    out = np.clip(x * gain, -limit, limit).astype(np.float32)
    return out.reshape(np.shape(samples))


def apply_fades(
    samples: np.ndarray, sample_rate: int, fade_in_s: float = 0.005, fade_out_s: float = 0.05
) -> np.ndarray:
    """Raised-cosine fade-in and fade-out so the track neither starts nor stops with a click. Length is unchanged.

    The first and last samples become exactly zero. On audio shorter than both fades together, each fade gets at
    most half of it.
    """
    x = _as_channels_first(samples).astype(np.float32)
    frames = x.shape[1]
    n_in = min(int(round(fade_in_s * sample_rate)), frames // 2)
    n_out = min(int(round(fade_out_s * sample_rate)), frames // 2)
    if n_in > 0:
        x[:, :n_in] *= _half_cosine(n_in)
    if n_out > 0:
        x[:, frames - n_out :] *= _half_cosine(n_out)[::-1]
    return x.reshape(np.shape(samples))


def _half_cosine(n: int) -> np.ndarray:
    """0 -> 1 over n samples, starting at exactly 0."""
    return (0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)).astype(np.float32)


# --- FLAC --------------------------------------------------------------------------------------------------------


def write_flac(samples: np.ndarray, sample_rate: int, path: Path | str) -> Path:
    """Lossless 24-bit FLAC master, exact to the sample; the source for continuations and re-encodes."""
    x = _as_channels_first(samples)
    # libsndfile does not clip on float -> int conversion by default; +1.0 would wrap around.
    x = np.clip(x, -1.0, 1.0 - 2.0**-23)
    buffer = io.BytesIO()
    soundfile.write(buffer, x.T, sample_rate, format="FLAC", subtype="PCM_24")
    return write_atomic(path, buffer.getvalue())


def write_wav_float(samples: np.ndarray, sample_rate: int, path: Path | str) -> Path:
    """32-bit float WAV, exactly as given (no clipping, no rounding): intermediate audio that is read back."""
    buffer = io.BytesIO()
    soundfile.write(buffer, _as_channels_first(samples).T, sample_rate, format="WAV", subtype="FLOAT")
    return write_atomic(path, buffer.getvalue())


# --- MP3 ---------------------------------------------------------------------------------------------------------


def _ffmpeg() -> str:
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise RuntimeError("ffmpeg not found on PATH; it is needed to encode MP3")
    return binary


def _check_mp3_format(channels: int, sample_rate: int, bitrate_kbps: int) -> None:
    if channels not in (1, 2):
        raise ValueError(f"MP3 carries mono or stereo, not {channels} channels")
    if sample_rate not in MP3_SAMPLE_RATES:
        raise ValueError(f"MP3 cannot carry {sample_rate} Hz; resample to one of {sorted(MP3_SAMPLE_RATES)}")
    allowed = _MPEG1_BITRATES if sample_rate >= 32000 else _MPEG2_BITRATES
    if bitrate_kbps not in allowed:
        raise ValueError(f"{bitrate_kbps} kbps is not an MP3 bitrate at {sample_rate} Hz ({sorted(allowed)})")


def encode_mp3(samples: np.ndarray, sample_rate: int, *, bitrate_kbps: int = 192) -> bytes:
    """CBR MP3 through ffmpeg/libmp3lame, without tags.

    ffmpeg writes into a temporary file rather than a pipe: the Xing/LAME header (encoder delay, padding, frame count)
    is filled in at the end by seeking back, which a pipe cannot do, and without it decoders play ~1-2k extra samples.
    """
    x = _as_channels_first(samples)
    channels, frames = x.shape
    _check_mp3_format(channels, sample_rate, bitrate_kbps)
    interleaved = np.ascontiguousarray(np.clip(x, -1.0, 1.0).T, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="bandmate-mp3-") as workdir:
        out = Path(workdir) / "out.mp3"
        command = [
            _ffmpeg(), "-hide_banner", "-nostats", "-loglevel", "error",
            "-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0",
            "-map_metadata", "-1", "-c:a", "libmp3lame", "-b:a", f"{bitrate_kbps}k",
            "-write_xing", "1", "-id3v2_version", "0", "-write_id3v1", "0",
            "-f", "mp3", "-y", str(out),
        ]  # fmt: skip
        result = subprocess.run(
            command, input=interleaved.tobytes(), capture_output=True, timeout=60 + frames / sample_rate
        )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"ffmpeg failed to encode MP3 (exit {result.returncode}): {message}")
        return out.read_bytes()


def display_title(prompt: str, limit: int = TITLE_MAX_CHARS) -> str:
    """The prompt on one line, cut at a word boundary to at most `limit` characters with an ellipsis."""
    text = " ".join(prompt.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and cut.rfind(" ") >= limit // 2:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,.;:-") + "…"


def _id3(provenance: Provenance, title: str | None) -> ID3:
    tags = ID3()
    tags.add(TIT2(encoding=3, text=[title or display_title(provenance.prompt)]))
    tags.add(TPE1(encoding=3, text=[ARTIST]))
    tags.add(TSSE(encoding=3, text=[provenance.software]))
    note = f"AI-generated music. Model: {provenance.model_id} ({provenance.model_license}). Seed {provenance.seed}."
    tags.add(COMM(encoding=3, lang="eng", desc="", text=[note]))
    for key, value in provenance.txxx().items():
        tags.add(TXXX(encoding=3, desc=key, text=[value]))
    return tags


def _with_tags(mp3: bytes, provenance: Provenance, title: str | None) -> bytes:
    """`mp3` with its ID3 tag (if any) replaced by an ID3v2.4 tag for `provenance`; no v1 tag, no padding."""
    buffer = io.BytesIO(mp3)
    try:
        ID3(buffer).delete(buffer)
    except ID3NoHeaderError:
        pass
    buffer.seek(0)
    _id3(provenance, title).save(buffer, v1=0, v2_version=4, padding=lambda info: 0)
    return buffer.getvalue()


def tag_mp3(path: Path | str, provenance: Provenance, *, title: str | None = None) -> None:
    """Replace the MP3's tags with provenance tags (ID3v2.4), atomically. `title` defaults to the short prompt."""
    path = Path(path)
    write_atomic(path, _with_tags(path.read_bytes(), provenance, title))


def write_mp3(
    samples: np.ndarray,
    sample_rate: int,
    path: Path | str,
    provenance: Provenance,
    *,
    bitrate_kbps: int = 192,
    title: str | None = None,
) -> Path:
    """Encode and tag in memory, then write the finished file atomically."""
    mp3 = _with_tags(encode_mp3(samples, sample_rate, bitrate_kbps=bitrate_kbps), provenance, title)
    return write_atomic(path, mp3)


def fit_mp3(
    samples: np.ndarray,
    sample_rate: int,
    provenance: Provenance,
    max_bytes: int,
    path: Path | str,
    *,
    title: str | None = None,
) -> Path | None:
    """The tagged MP3 at the highest ladder bitrate whose whole file is at most `max_bytes`, written to `path`.

    Returns None, writing nothing, when even the lowest bitrate is too big (the caller splits the track). Bitrates
    whose audio alone must exceed the limit are skipped without encoding.
    """
    x = _as_channels_first(samples)
    channels, frames = x.shape
    duration_s = frames / sample_rate
    allowed = _MPEG1_BITRATES if sample_rate >= 32000 else _MPEG2_BITRATES
    _check_mp3_format(channels, sample_rate, min(allowed))  # a format MP3 can't carry is an error, not "too big"
    for bitrate in MP3_BITRATE_LADDER_KBPS:
        if bitrate not in allowed:
            continue
        # CBR: the audio is at least bitrate * duration (frames add encoder delay and padding on top).
        if bitrate * 1000 / 8 * duration_s > max_bytes:
            continue
        mp3 = _with_tags(encode_mp3(x, sample_rate, bitrate_kbps=bitrate), provenance, title)
        if len(mp3) <= max_bytes:
            log.info("fit %.1f s into %d bytes at %d kbps (%d bytes)", duration_s, max_bytes, bitrate, len(mp3))
            return write_atomic(path, mp3)
    log.info("%.1f s does not fit into %d bytes even at the lowest MP3 bitrate", duration_s, max_bytes)
    return None


def read_provenance(path: Path | str) -> dict[str, str]:
    """The TXXX frames of an MP3, description -> text; empty if it has no ID3 tag."""
    try:
        tags = ID3(path)
    except ID3NoHeaderError:
        return {}
    return {frame.desc: "\n".join(str(t) for t in frame.text) for frame in tags.getall("TXXX")}


# --- chapters (songs) -------------------------------------------------------------------------------------------
# Added for /song (generation/song.py): one ID3 chapter per section, so players can show and skip between them.

_NO_OFFSET = 0xFFFFFFFF  # CHAP byte offsets unused: players seek by the millisecond times


def add_chapters(mp3_path: Path | str, sections: list[tuple[float, str]], total_s: float) -> None:
    """Write an ID3 CHAP frame per section (start/end ms, TIT2 label) and a top-level CTOC; other tags are kept.

    Each section ends where the next starts, the last at `total_s`. Chapters already there are replaced, and the
    file is rewritten atomically like every other file we hand out.
    """
    path = Path(mp3_path)
    ordered = sorted((float(start), str(label)) for start, label in sections)
    if not ordered:
        raise ValueError("no sections to write as chapters")
    if ordered[0][0] < 0 or ordered[-1][0] >= total_s:
        raise ValueError(f"sections must start within the track (0 to {total_s:.3f} s): {ordered}")
    buffer = io.BytesIO(path.read_bytes())
    try:
        tags = ID3(buffer)
    except ID3NoHeaderError:
        tags = ID3()
    tags.delall("CHAP")
    tags.delall("CTOC")
    ids = [f"chp{i}" for i in range(len(ordered))]
    for i, (start, label) in enumerate(ordered):
        end = ordered[i + 1][0] if i + 1 < len(ordered) else total_s
        tags.add(CHAP(element_id=ids[i], start_time=int(round(start * 1000)), end_time=int(round(end * 1000)),
                      start_offset=_NO_OFFSET, end_offset=_NO_OFFSET, sub_frames=[TIT2(encoding=3, text=[label])]))
    tags.add(CTOC(element_id="toc", flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED, child_element_ids=ids,
                  sub_frames=[TIT2(encoding=3, text=["Sections"])]))
    buffer.seek(0)
    tags.save(buffer, v1=0, v2_version=4, padding=lambda info: 0)
    write_atomic(path, buffer.getvalue())


# --- the whole track ---------------------------------------------------------------------------------------------


def render_track(
    audio: Audio,
    provenance: Provenance,
    out_dir: Path,
    stem: str,
    *,
    bitrate_kbps: int = 192,
    title: str | None = None,
    sections: list[tuple[float, str]] | None = None,
    finish: bool = True,
) -> RenderedTrack:
    """Normalise and fade `audio`, then write `stem`.flac, `stem`.mp3 and `stem`.png into `out_dir`.

    `finish=False` writes the audio as it is: for audio cut from a track that was already finished (a replaced
    section keeps its source exact outside the range; stems add back up to their mix), where a new gain or fade
    would change every sample the model did not touch.

    `title` (default: the prompt, shortened) goes into the MP3's title tag and onto the waveform. `sections`
    ((start_s, label), for songs) become labelled marks on the waveform and ID3 chapters in the MP3.
    """
    if not stem or stem.startswith(".") or "/" in stem or os.sep in stem:
        raise ValueError(f"bad file stem {stem!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = audio.sample_rate
    samples = apply_fades(normalize_loudness(audio.samples, rate), rate) if finish else audio.samples
    title = title or display_title(provenance.prompt)

    flac = write_flac(samples, rate, out_dir / f"{stem}.flac")
    mp3 = write_mp3(samples, rate, out_dir / f"{stem}.mp3", provenance, bitrate_kbps=bitrate_kbps, title=title)
    duration_s = samples.shape[-1] / rate
    if sections:  # songs (generation/song.py): chapters in the MP3
        add_chapters(mp3, sections, duration_s)
    png = render_waveform(samples, rate, out_dir / f"{stem}.png", title=title, sections=sections)
    return RenderedTrack(mp3=mp3, png=png, flac=flac, duration_s=duration_s)

"""What an ACE-Step job asks for (no torch here): the task, the song's words and metadata, the source audio.

`GenerationRequest` (generation/types.py) stays as it is; `AceRequest` carries what only this family has.
`from_generation_request` maps a plain request onto it (text to music; `init_audio` becomes a cover), so the
scheduler can hand either kind to `AceStepBackend.generate`.

Why `batch_key` looks the way it does: ACE-Step's pipeline takes one duration, one set of metadata (bpm, key, time
signature), one task, one repaint range, one cover strength and one reference per call; prompts, lyrics, languages,
seeds, extract stems and equally long source tracks can differ row by row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from generation.lyrics import MAX_SONG_S, MIN_SONG_S, clean_lyrics, estimate_duration
from generation.types import MAX_VARIATIONS, Audio, GenerationRequest


class AceTask(str, Enum):
    TEXT2MUSIC = "text2music"  # prompt (+ lyrics, + reference) -> a song
    REPAINT = "repaint"  # a range of the source made anew; the rest kept sample-exact
    COVER = "cover"  # the source's structure in another style or voice
    EXTRACT = "extract"  # the source split into stems
    LEGO = "lego"  # one new part (an instrument, `instruments[0]`) made to fit the source
    COMPLETE = "complete"  # the source (a part, e.g. vocals alone) completed with the `instruments` named


# The tracks ACE-Step 1.5 was trained to extract, and "other": the source minus the extracted stems.
MODEL_STEMS = ("vocals", "backing_vocals", "drums", "percussion", "bass", "guitar", "keyboard", "synth", "strings",
               "brass", "woodwinds", "fx")
OTHER_STEM = "other"
DEFAULT_STEMS = ("vocals", "drums", "bass", OTHER_STEM)
REPAINT_CROSSFADE_S = 0.05
DEFAULT_COVER_STRENGTH = 0.8
MAX_BPM = 300
MIN_BPM = 30


class AceRequestError(ValueError):
    """A request the family cannot do; the message is for the user."""


@dataclass(frozen=True)
class AceRequest:
    """One ACE-Step job: `variations` rows seeded seed..seed+variations-1 (extract: one row per stem).

    duration_s None: from the lyrics (text2music) or the source's length (the other tasks). lyrics "" is an
    instrumental. key is ACE-Step's keyscale ("C major", "F# minor"); time_signature its beats a bar ("4", "3").
    start_s/end_s: the repaint range in seconds of the source. strength: the cover's `audio_cover_strength`
    (1 keeps the source's structure most, 0 is text to music). reference: audio whose timbre the result takes.
    steps/guidance None: the model's defaults (turbo: 8 steps, no guidance).
    """

    prompt: str
    task: AceTask = AceTask.TEXT2MUSIC
    lyrics: str = ""
    language: str = "en"
    duration_s: float | None = None
    bpm: int | None = None
    key: str | None = None
    time_signature: str | None = None
    variations: int = 1
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    source: Audio | None = None
    start_s: float | None = None
    end_s: float | None = None
    strength: float | None = None
    reference: Audio | None = None
    stems: tuple[str, ...] = field(default=DEFAULT_STEMS)
    instruments: tuple[str, ...] = ()  # lego: the one part to add; complete: the parts to add (none: the model's)
    crossfade_s: float = REPAINT_CROSSFADE_S

    @property
    def rows(self) -> int:
        """Rows this request takes in a pipeline call."""
        return len(self.model_stems) if self.task is AceTask.EXTRACT else self.variations

    @property
    def model_stems(self) -> tuple[str, ...]:
        """The stems the model extracts; "other" is computed from them (with vocals, drums and bass if none)."""
        named = tuple(s for s in self.stems if s != OTHER_STEM)
        return named if named else ("vocals", "drums", "bass")

    @property
    def cover_strength(self) -> float:
        return DEFAULT_COVER_STRENGTH if self.strength is None else float(self.strength)


def from_generation_request(request: GenerationRequest) -> AceRequest:
    """A plain request as an AceRequest: text to music, or a cover of `init_audio` (its `strength` 0 stays close,
    1 goes far, so the cover strength is 1 - strength). Continuation and melody are refused."""
    if request.audio_prompt is not None:
        raise AceRequestError("ACE-Step can't continue audio; ask for a song of the length you want, or replace a "
                              "part of it.")
    if request.melody is not None:
        raise AceRequestError("ACE-Step takes no melody; use a cover of the track instead.")
    common = dict(prompt=request.prompt, duration_s=request.duration_s, variations=request.variations,
                  seed=request.seed, steps=request.steps)
    if request.init_audio is not None:
        strength = None if request.strength is None else 1.0 - float(request.strength)
        return AceRequest(task=AceTask.COVER, source=request.init_audio, strength=strength, **common)
    return AceRequest(**common)


def resolved_duration(request: AceRequest, max_duration_s: float = MAX_SONG_S) -> float:
    """The seconds this request makes: as asked, else the source's length, else estimated from the lyrics."""
    if request.duration_s is not None:
        return float(request.duration_s)
    if request.source is not None:
        return request.source.duration_s
    return min(estimate_duration(request.lyrics, request.bpm), max_duration_s)


def check_request(request: AceRequest, max_duration_s: float = MAX_SONG_S) -> AceRequest:
    """The request with its lyrics cleaned, or AceRequestError saying what is wrong."""
    task = request.task
    if not isinstance(task, AceTask):
        raise AceRequestError(f"unknown task {task!r}")
    if not 1 <= request.variations <= MAX_VARIATIONS:
        raise AceRequestError(f"variations must be 1 to {MAX_VARIATIONS}, not {request.variations}")
    if request.steps is not None and request.steps < 1:
        raise AceRequestError("steps must be at least 1")
    if request.bpm is not None and not MIN_BPM <= int(request.bpm) <= MAX_BPM:
        raise AceRequestError(f"bpm must be {MIN_BPM} to {MAX_BPM}, not {request.bpm}")
    lyrics = clean_lyrics(request.lyrics)
    if task is AceTask.TEXT2MUSIC:
        if request.source is not None:
            raise AceRequestError("a new song takes no source track (use a cover or a replace for that)")
    elif request.source is None or request.source.samples.shape[-1] == 0:
        raise AceRequestError(f"{task.value} needs a source track")
    duration = resolved_duration(request, max_duration_s)
    if task is AceTask.TEXT2MUSIC and request.duration_s is not None and not 0 < duration <= max_duration_s + 1e-9:
        raise AceRequestError(f"a song can be up to {max_duration_s:g} s long, not {duration:g} s")
    if request.source is not None and request.source.duration_s > max_duration_s + 1e-9:
        raise AceRequestError(f"the source track is {request.source.duration_s:.0f} s long; the limit is "
                              f"{max_duration_s:g} s")
    if task is AceTask.REPAINT:
        _check_range(request)
    if task is AceTask.COVER and not 0.0 <= request.cover_strength <= 1.0:
        raise AceRequestError(f"a cover's strength must be 0 to 1, not {request.strength}")
    if task is AceTask.EXTRACT:
        unknown = [s for s in request.stems if s not in MODEL_STEMS and s != OTHER_STEM]
        if unknown or not request.stems:
            raise AceRequestError(f"unknown stem {', '.join(unknown) or '(none)'}; ACE-Step extracts "
                                  f"{', '.join(MODEL_STEMS)} (and {OTHER_STEM}: the rest)")
        if len(set(request.stems)) != len(request.stems):
            raise AceRequestError("each stem can be asked for once")
        if request.variations != 1:
            raise AceRequestError("stems come as one take")
    if task in (AceTask.LEGO, AceTask.COMPLETE):
        _check_instruments(request)
    if request.reference is not None and request.reference.samples.shape[-1] == 0:
        raise AceRequestError("the reference audio is empty")
    return _replace_lyrics(request, lyrics)


def _check_range(request: AceRequest) -> None:
    length = request.source.duration_s
    start, end = request.start_s, request.end_s
    if start is None or end is None:
        raise AceRequestError("a replace needs a start and an end")
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise AceRequestError(f"the range {start:g}-{end:g} s is empty (the track is {length:.1f} s long)")
    if start < 0 or end > length + 1e-6:
        raise AceRequestError(f"the range {start:g}-{end:g} s is outside the track, which is {length:.1f} s long")
    if start <= 0 and end >= length - 1e-6:
        raise AceRequestError(f"the range covers the whole {length:.1f} s track; ask for a new song instead")


def _check_instruments(request: AceRequest) -> None:
    unknown = [s for s in request.instruments if s not in MODEL_STEMS]
    if unknown:
        raise AceRequestError(f"unknown part {', '.join(unknown)}; ACE-Step knows {', '.join(MODEL_STEMS)}")
    if len(set(request.instruments)) != len(request.instruments):
        raise AceRequestError("each part can be named once")
    if request.task is AceTask.LEGO and len(request.instruments) != 1:
        raise AceRequestError("adding a part takes exactly one instrument, e.g. guitar")


def _replace_lyrics(request: AceRequest, lyrics: str) -> AceRequest:
    if lyrics == request.lyrics:
        return request
    from dataclasses import replace

    return replace(request, lyrics=lyrics)


def batch_key(request: AceRequest, strict: bool = False) -> tuple:
    """Requests with equal keys can share one pipeline call (the scheduler groups by it). strict: also the same
    prompt, lyrics and language, so that every row comes out exactly as it would alone (see generation/ace_step.py
    on padding)."""
    source = request.source
    reference = request.reference
    text = (request.prompt, request.lyrics, request.language) if strict else None
    return (text, 
        request.task, round(resolved_duration(request), 3), request.bpm, (request.key or "").strip().lower(),
        (request.time_signature or "").strip(), request.steps, request.guidance,
        None if source is None else (source.sample_rate, source.samples.shape[-1]),
        (request.start_s, request.end_s) if request.task is AceTask.REPAINT else None,
        request.cover_strength if request.task is AceTask.COVER else None,
        None if reference is None else id(reference),
        request.instruments if request.task in (AceTask.LEGO, AceTask.COMPLETE) else None,
    )


__all__ = ["AceRequest", "AceRequestError", "AceTask", "DEFAULT_STEMS", "MIN_SONG_S", "MODEL_STEMS", "OTHER_STEM",
           "batch_key", "check_request", "from_generation_request", "resolved_duration"]

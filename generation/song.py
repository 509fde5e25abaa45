"""Whole songs with structure: intro, verses, a chorus that really comes back, an outro.

MusicGen sees at most ~30 s and has no idea of form, so a long prompt gives a long, aimless piece. Here the user's
section list drives it: the first section is text-to-music, every new section continues what exists (through
`continue_audio`, with that section's own wording added to the prompt), and a returning chorus is the first chorus
again (its audio, crossfaded in) or, with a melody model, new audio that follows the first chorus's melody. That
repetition is what makes a track sound like a song rather than a drift.

Lengths are exact: section k spans samples round(start_k * rate) .. round(end_k * rate), so the song is exactly the
sum of its sections and the chapter marks and waveform labels fall on the real boundaries.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from generation.spec import JobSpec
from generation.backend import Backend, GenerationCancelled
from generation.continuation import ContinuationError, continue_audio, plan_windows
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback, SamplingParams, tokens_for

log = logging.getLogger(__name__)

MAX_TOTAL_S = 300.0
MAX_SECTIONS = 16
MIN_SECTION_S = 2.0
MAX_SECTION_S = 60.0
NAME_MAX_CHARS = 24
CROSSFADE_S = 0.08  # equal-power crossfade where a repeated chorus comes in
SECTION_SEED_STRIDE = 100_003  # section k draws from seed + k * stride: sections differ, the song reproduces
EXAMPLE = "intro 8, verse 16, chorus 16, verse 16, chorus 16, outro 8"

# The section's own wording, added to the user's prompt: what MusicGen's text conditioning understands best is
# plain description, so each part of the form is described rather than named.
SECTION_WORDING: dict[str, str] = {
    "intro": "sparse intro, building up",
    "verse": "verse, steady groove, restrained",
    "pre-chorus": "pre-chorus, rising tension, building",
    "chorus": "full energetic chorus, the hook",
    "bridge": "bridge, contrasting, different chords",
    "breakdown": "breakdown, stripped back, fewer instruments",
    "drop": "the drop, full power, heavy bass and drums",
    "solo": "instrumental solo, lead melody up front",
    "outro": "outro, fading out",
}
KNOWN_SECTIONS = tuple(SECTION_WORDING)
_ALIASES = {
    "prechorus": "pre-chorus", "pre chorus": "pre-chorus", "pre": "pre-chorus", "build": "pre-chorus",
    "buildup": "pre-chorus", "build up": "pre-chorus", "build-up": "pre-chorus",
    "hook": "chorus", "refrain": "chorus",
    "middle eight": "bridge", "middle 8": "bridge",
    "ending": "outro", "end": "outro", "coda": "outro",
    "intro section": "intro", "opening": "intro",
}

_UNITS = r"s|secs?|seconds?|m|mins?|minutes?"
# One section: a name, an optional ':' '=' or dash, then seconds ("8", "8s", "8 sec", "0:08", "(8 s)").
_ITEM = re.compile(
    r"^(?P<name>.*?)\s*[:=\-–—]?\s*\(?\s*"
    rf"(?:(?P<mm>\d+):(?P<ss>\d{{2}})|(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>{_UNITS})?\.?)\s*\)?$",
    re.IGNORECASE,
)
# Several sections without commas ("intro 8 verse 16"): names made of letters only.
_PAIR = re.compile(
    r"\s*(?P<name>[^\W\d_][^\W\d_ '\-]*(?:[ '\-][^\W\d_]+)*)\s*[:=]?\s*"
    rf"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>{_UNITS})?\.?\s*",
    re.IGNORECASE,
)
_NAME = re.compile(r"^[^\W\d_]+(?:[ '\-][^\W\d_]+){0,2}$")


class SongError(ValueError):
    """The asked song is impossible or unreadable; the message can be shown to the user as it is."""


@dataclass(frozen=True)
class Section:
    """One part of the form: a lower-case name ("verse", "pre-chorus", or a free word) and its length."""

    name: str
    seconds: float


@dataclass(frozen=True)
class SectionSpan:
    """Where a section ended up in the song, and how it was made ("generated", "reused" or "melody")."""

    name: str
    label: str
    start_s: float
    end_s: float
    source: str = "generated"


@dataclass
class Song:
    """The finished song: one piece of audio, and its sections as (start_s, label) for chapters and the waveform."""

    audio: Audio
    sections: list[tuple[float, str]]
    spans: list[SectionSpan] = field(default_factory=list)


# --- parsing -------------------------------------------------------------------------------------------------------


def normalize_name(raw: str) -> str:
    """A section name as stored: lower case, single spaces, numbering dropped ("Verse 2" -> "verse"), aliases mapped."""
    name = " ".join(raw.strip().strip(":=-–—()#.").split()).lower()
    name = re.sub(r"\s*#?\d+$", "", name).strip()
    return _ALIASES.get(name, name)


def _seconds(match: re.Match[str]) -> float:
    if match.groupdict().get("mm") is not None:
        return int(match["mm"]) * 60 + int(match["ss"])
    value = float(match["num"])
    unit = (match["unit"] or "s").lower()
    return value * 60 if unit.startswith("m") else value


def _check_name(name: str, item: str) -> None:
    if not name:
        raise SongError(f"“{item}” needs a section name before the seconds, like `verse 16`.")
    if len(name) > NAME_MAX_CHARS or not _NAME.match(name):
        raise SongError(
            f"I don't understand the section “{item}”. Use a short name such as "
            f"{', '.join(KNOWN_SECTIONS[:-1])} or {KNOWN_SECTIONS[-1]}, then its seconds, like `{EXAMPLE}`."
        )


def _parse_item(item: str) -> list[Section]:
    match = _ITEM.match(item)
    if match is not None and match["name"].strip():
        name = normalize_name(match["name"])
        if name and _NAME.match(name):
            return [Section(name, _seconds(match))]
    # Perhaps several sections with no commas between them: "intro 8 verse 16".
    pairs, position = [], 0
    for pair in _PAIR.finditer(item):
        if pair.start() != position:
            break
        pairs.append(pair)
        position = pair.end()
    if len(pairs) > 1 and position == len(item):
        return [Section(normalize_name(p["name"]), _seconds(p)) for p in pairs]
    if match is None:
        if not re.search(r"\d", item):
            raise SongError(f"“{item}” has no length. Give every section its seconds, like `{item} 8`.")
        raise SongError(f"I can't read “{item}”. Write each section as a name and seconds, like `chorus 16`.")
    name = normalize_name(match["name"])
    _check_name(name, item)
    return [Section(name, _seconds(match))]


def parse_sections(text: str) -> list[Section]:
    """Sections from what a user typed: "intro 8, verse 16s, chorus: 16 sec" (commas, semicolons or new lines)."""
    items = [item.strip() for item in re.split(r"[,;\n]+", text or "")]
    items = [item for item in items if item]
    if not items:
        raise SongError(f"Tell me the song's sections with their seconds, like `{EXAMPLE}`.")
    sections: list[Section] = []
    for item in items:
        sections.extend(_parse_item(item))
        if len(sections) > MAX_SECTIONS:
            break  # validate_sections says so, without reading the rest
    return validate_sections(sections)


def validate_sections(sections: Iterable[Section | tuple[str, float] | list[Any]]) -> list[Section]:
    """The limits every song obeys, whether typed by a user or read back from a stored job."""
    out: list[Section] = []
    for entry in sections:
        if isinstance(entry, Section):
            name, seconds = entry.name, entry.seconds
        else:
            try:
                name, seconds = entry
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise SongError(f"A section must be a name and seconds, not {entry!r}.") from None
        name = normalize_name(str(name))
        _check_name(name, f"{name} {seconds:g}")
        if not math.isfinite(seconds) or not MIN_SECTION_S <= seconds <= MAX_SECTION_S:
            raise SongError(
                f"The {name} is {seconds:g} s long; each section needs {MIN_SECTION_S:g} to {MAX_SECTION_S:g} seconds."
            )
        out.append(Section(name, round(float(seconds), 3)))
    if not out:
        raise SongError(f"Tell me the song's sections with their seconds, like `{EXAMPLE}`.")
    if len(out) > MAX_SECTIONS:
        raise SongError(f"That is {len(out)} sections or more; a song can have at most {MAX_SECTIONS}.")
    total = sum(s.seconds for s in out)
    if total > MAX_TOTAL_S + 1e-6:
        minutes, rest = divmod(round(total), 60)
        raise SongError(
            f"Those sections add up to {total:g} s ({minutes}:{rest:02d}); a song can be at most "
            f"{MAX_TOTAL_S / 60:g} minutes ({MAX_TOTAL_S:g} s). Shorten a few sections or leave some out."
        )
    return out


def sections_from_spec(spec: JobSpec) -> list[Section]:
    """The sections stored in a job's spec, checked again."""
    if not spec.sections:
        raise SongError("This song job has no sections.")
    return validate_sections([list(s) for s in spec.sections])


def sections_to_spec(sections: Iterable[Section]) -> tuple[tuple[str, float], ...]:
    """The form a job's spec holds: (name, seconds) pairs."""
    return tuple((s.name, float(s.seconds)) for s in sections)


# --- layout and wording --------------------------------------------------------------------------------------------


def section_labels(sections: list[Section]) -> list[str]:
    """Display labels: "Intro", "Verse 1", "Chorus 1", "Verse 2", "Chorus 2", "Outro" (numbered when repeated)."""
    counts: dict[str, int] = {}
    for s in sections:
        counts[s.name] = counts.get(s.name, 0) + 1
    seen: dict[str, int] = {}
    labels = []
    for s in sections:
        seen[s.name] = seen.get(s.name, 0) + 1
        title = s.name.title()
        labels.append(f"{title} {seen[s.name]}" if counts[s.name] > 1 else title)
    return labels


def song_layout(sections: list[Section]) -> list[SectionSpan]:
    """Start and end of each section in seconds, as composed (and as chapters and params record them)."""
    spans, start = [], 0.0
    for section, label in zip(sections, section_labels(sections)):
        end = start + section.seconds
        spans.append(SectionSpan(section.name, label, round(start, 6), round(end, 6)))
        start = end
    return spans


def section_prompt(base_prompt: str, section: Section) -> str:
    """The user's prompt with the section's own wording appended, e.g. "lofi piano, outro, fading out"."""
    wording = SECTION_WORDING.get(section.name, f"{section.name} section")
    base = base_prompt.strip().rstrip(",.;: ")
    return f"{base}, {wording}" if base else wording


# --- composing -----------------------------------------------------------------------------------------------------


@dataclass
class _Op:
    """One step of the plan: how section `index` is made and how many model steps that costs."""

    index: int
    how: str  # "text" | "continue" | "reuse" | "melody"
    steps: int


_SOURCES = {"text": "generated", "continue": "generated", "reuse": "reused", "melody": "melody"}


def _continue_steps(existing_s: float, add_s: float, backend: Backend) -> int:
    return sum(tokens_for(new) for _, new in plan_windows(existing_s, add_s, max_call_s=backend.max_duration_s))


def _plan(sections: list[Section], bounds: list[int], rate: int, fade: int, backend: Backend,
          melody_backend: Backend | None) -> list[_Op]:
    """Decide, before any model call, how each section is made, so progress has one total for the song."""
    ops: list[_Op] = []
    first_chorus: int | None = None
    for k, section in enumerate(sections):
        n = bounds[k + 1] - bounds[k]
        ext = fade if k + 1 < len(sections) else 0  # what a repeated chorus after it crossfades against
        if k == 0:
            head = min(n + ext, int(backend.max_duration_s * rate))
            steps = tokens_for(head / rate)
            if head < n + ext:
                steps += _continue_steps(head / rate, (n + ext - head) / rate, backend)
            ops.append(_Op(k, "text", steps))
        elif section.name == "chorus" and first_chorus is not None:
            if melody_backend is not None and (n + ext) / rate <= melody_backend.max_duration_s:
                ops.append(_Op(k, "melody", tokens_for((n + ext) / rate)))
            else:
                chorus_n = bounds[first_chorus + 1] - bounds[first_chorus]
                extra = n - chorus_n
                steps = 0
                if extra > 0:  # a longer repeat continues past the copy
                    steps = _continue_steps((bounds[k] + chorus_n) / rate, (extra + ext) / rate, backend)
                ops.append(_Op(k, "reuse", steps))
        else:
            ops.append(_Op(k, "continue", _continue_steps(bounds[k] / rate, (n + ext) / rate, backend)))
        if section.name == "chorus" and first_chorus is None:
            first_chorus = k
    return ops


def _mono(audio: Audio, rate: int) -> np.ndarray:
    """1-D float32 at `rate` (a melody model may run at another rate)."""
    x = audio.samples.mean(axis=0).astype(np.float32)
    if audio.sample_rate != rate:
        import soxr

        x = soxr.resample(x, audio.sample_rate, rate).astype(np.float32)
    return x


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if x.shape[-1] >= n else np.concatenate([x, np.zeros(n - x.shape[-1], np.float32)])


def _crossfade_in(tail: np.ndarray | None, part: np.ndarray, fade: int) -> np.ndarray:
    """`part` entering over what the previous section would have played next (`tail`), equal-power.

    Equal power (sin/cos) because the two are unrelated material: a linear fade would dip in loudness mid-way.
    """
    part = part.copy()
    n = min(fade, part.shape[-1])
    if n == 0:
        return part
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    fade_in = np.sin(0.5 * np.pi * t).astype(np.float32)
    fade_out = np.cos(0.5 * np.pi * t).astype(np.float32)
    before = _fit(tail, n) if tail is not None else np.zeros(n, np.float32)
    part[:n] = before * fade_out + part[:n] * fade_in
    return part


def compose_song(
    backend: Backend,
    prompt: str,
    sections: list[Section],
    *,
    seed: int,
    sampling: SamplingParams = SamplingParams(),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    melody_backend: Backend | None = None,
) -> Song:
    """Make the whole song, section by section, as one mono piece exactly as long as its sections together.

    `melody_backend`, when given, must honour `GenerationRequest.melody` (MusicGen-melody): repeated choruses are
    then new audio following the first chorus's melody instead of a copy of it.
    """
    sections = validate_sections(sections)
    if not backend.supports_continuation:
        raise SongError(f"{backend.model_id} cannot continue audio, so it cannot make songs.")
    rate = backend.sample_rate
    fade = int(round(CROSSFADE_S * rate))
    ends = np.cumsum([0.0] + [s.seconds for s in sections])
    bounds = [int(round(e * rate)) for e in ends]
    layout = song_layout(sections)
    ops = _plan(sections, bounds, rate, fade, backend, melody_backend)
    total_steps = max(1, sum(op.steps for op in ops))
    started = time.monotonic()
    done = 0
    last_step = 0

    def reporter(offset: int) -> ProgressCallback:
        """Progress of one model call, moved onto the song's own step counter."""
        def report(p: Progress) -> None:
            nonlocal last_step
            last_step = min(offset + p.step, total_steps)
            if progress is not None:
                progress(Progress(step=last_step, total=total_steps, elapsed_s=time.monotonic() - started))
        return report

    def extend(song: np.ndarray, text: str, add: int, section_seed: int, offset: int) -> np.ndarray:
        """`song` followed by `add` new samples of `text`, by continuation (text-to-music when empty)."""
        report = reporter(offset)
        if song.shape[-1] == 0:
            head = min(add, int(backend.max_duration_s * rate))
            request = GenerationRequest(prompt=text, duration_s=head / rate, seed=section_seed, sampling=sampling)
            first = backend.generate([request], progress=report, should_stop=should_stop)[0][0]
            song = _fit(_mono(first, rate), head)
            if head == add:
                return song
            add -= head
            report = reporter(offset + tokens_for(head / rate))
        try:
            piece = continue_audio(backend, Audio(song[None, :], rate), text, add / rate, seed=section_seed + 1,
                                   sampling=sampling, progress=report, should_stop=should_stop)[0]
        except ContinuationError as error:
            raise SongError(str(error)) from error
        return _fit(piece.samples[0], song.shape[-1] + add)

    song = np.zeros(0, np.float32)
    tail: np.ndarray | None = None  # what the last section would have played next: a repeated chorus fades over it
    chorus: np.ndarray | None = None  # the first chorus as generated, with its own `fade` samples of continuation
    spans: list[SectionSpan] = []
    for op, section, span in zip(ops, sections, layout):
        if should_stop is not None and should_stop():
            raise GenerationCancelled("the song was cancelled between sections")
        k = op.index
        n = bounds[k + 1] - bounds[k]
        ext = fade if k + 1 < len(sections) else 0
        text = section_prompt(prompt, section)
        section_seed = seed + k * SECTION_SEED_STRIDE
        log.debug("section %d %s (%d samples) by %s", k, section.name, n, op.how)
        if op.how in ("text", "continue"):
            grown = extend(song, text, n + ext, section_seed, done)
            song, tail = grown[: bounds[k + 1]], grown[bounds[k + 1]:]
        elif op.how == "melody":
            assert melody_backend is not None and chorus is not None
            request = GenerationRequest(prompt=text, duration_s=(n + ext) / rate, seed=section_seed, sampling=sampling,
                                        melody=Audio(chorus[None, :-fade or None].copy(), rate))
            made = melody_backend.generate([request], progress=reporter(done), should_stop=should_stop)[0][0]
            made = _crossfade_in(tail, _fit(_mono(made, rate), n + ext), fade)
            song, tail = np.concatenate([song, made[:n]]), made[n:]
        else:  # reuse: the first chorus itself comes back
            assert chorus is not None
            have = chorus.shape[-1] - fade  # the first chorus's own length
            if n <= have:
                part = _crossfade_in(tail, chorus[: n + ext], fade)
                song, tail = np.concatenate([song, part[:n]]), part[n:]
            else:  # a longer repeat: the whole first chorus, then more of it by continuation
                part = _crossfade_in(tail, chorus[:have], fade)
                grown = extend(np.concatenate([song, part]), text, n - have + ext, section_seed, done)
                song, tail = grown[: bounds[k + 1]], grown[bounds[k + 1]:]
        if section.name == "chorus" and chorus is None:
            after = tail if tail is not None else np.zeros(0, np.float32)
            chorus = np.concatenate([song[bounds[k]:], _fit(after, fade)])
        if song.shape[-1] != bounds[k + 1]:
            raise RuntimeError(f"section {k} ended at sample {song.shape[-1]}, not {bounds[k + 1]}")
        done += op.steps
        spans.append(replace(span, source=_SOURCES[op.how]))
    if progress is not None and last_step < total_steps:  # e.g. a song that ends on a reused chorus
        progress(Progress(step=total_steps, total=total_steps, elapsed_s=time.monotonic() - started))
    log.info("composed a %.1f s song in %d sections (%.1f s)", bounds[-1] / rate, len(sections),
             time.monotonic() - started)
    return Song(audio=Audio(song[None, :].astype(np.float32), rate),
                sections=[(span.start_s, span.label) for span in spans], spans=spans)

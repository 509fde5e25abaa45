"""Song lyrics: cleaning and limits, a duration estimate, the song's sections as time ranges.

Pure Python (no torch), so every layer may use it. Lyrics follow the Suno / ACE-Step convention: section tags on
their own line in square brackets (`[verse]`, `[chorus]`, `[bridge]`, `[intro]`, `[outro]`, `[Verse 2]`,
`[pre-chorus]`, `[instrumental]` ...), the sung lines below them. Lines before the first tag are a verse.

Why times are an estimate: ACE-Step does not report where it sang each line. A section's share of the song is
taken from how long its lines take to sing (syllables at a singing rate that follows the bpm) and, for sections
without words (intro, solo, outro), a few bars; the shares are then scaled to the track's real length. That puts
"the bridge" close enough for a repaint, whose crossfades hide a small miss. Reply parsing lives in
`generation/replace_reply.py`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

MAX_LYRICS_CHARS = 4000  # ACE-Step reads at most 2048 lyric tokens; 4000 characters stay well inside that
MAX_LYRICS_LINES = 160
MAX_LINE_CHARS = 200
MIN_SONG_S = 10.0  # ACE-Step 1.5 makes 10 s to 10 min
MAX_SONG_S = 600.0
INSTRUMENTAL_SONG_S = 30.0  # no lyrics and no duration asked for
DEFAULT_BPM = 100

# Canonical section kinds and the spellings people use for them.
_KIND_ALIASES = {
    "intro": "intro", "verse": "verse", "pre-chorus": "pre-chorus", "prechorus": "pre-chorus",
    "pre chorus": "pre-chorus", "chorus": "chorus", "post-chorus": "post-chorus", "postchorus": "post-chorus",
    "hook": "hook", "refrain": "refrain", "bridge": "bridge", "outro": "outro", "instrumental": "instrumental",
    "inst": "instrumental", "solo": "solo", "guitar solo": "solo", "interlude": "interlude", "break": "break",
    "breakdown": "breakdown", "drop": "drop", "build": "build", "build-up": "build", "buildup": "build",
    "ending": "outro", "end": "outro", "coda": "outro",
}
SECTION_KINDS = tuple(sorted(set(_KIND_ALIASES.values())))
# Sections without words, in bars of 4 beats, when they have no lines of their own.
_WORDLESS_BARS = {"intro": 4, "outro": 4, "instrumental": 8, "solo": 8, "interlude": 4, "break": 2, "breakdown": 4,
                  "drop": 8, "build": 4}
_TAG = re.compile(r"^\[\s*([^\[\]]{1,40}?)\s*\]$")
_TAG_NUMBER = re.compile(r"^(.*?)[\s#:-]*(\d+)$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
_VOWEL_GROUPS = re.compile(r"[aeiouyàáâäæãåāèéêëēėęîïíīįìôöòóœøōõûüùúū]+", re.IGNORECASE)


class LyricsError(ValueError):
    """Lyrics that cannot be used; the message says why, for the user."""


@dataclass(frozen=True)
class SectionText:
    """A section of the lyrics before timing: its kind ("chorus"), its occurrence among that kind (1-based), the
    tag as written, and its sung lines."""

    kind: str
    number: int
    tag: str
    lines: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.kind.capitalize()} {self.number}"


@dataclass(frozen=True)
class Section:
    """A section of a song with its (estimated) place in the audio."""

    kind: str
    number: int
    label: str  # "Chorus 2"
    lines: tuple[str, ...]
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def format_time(seconds: float) -> str:
    """m:ss for track times (0:40, 3:05); tenths when the time is not a whole second."""
    seconds = max(0.0, float(seconds))
    whole = round(seconds)
    if abs(seconds - whole) < 0.05:
        return f"{int(whole) // 60}:{int(whole) % 60:02d}"
    minutes = int(seconds // 60)
    return f"{minutes}:{seconds - 60 * minutes:04.1f}"


def clean_lyrics(text: str | None) -> str:
    """Lyrics ready for the model and for storage; "" means an instrumental.

    Control and invisible formatting characters are removed, tabs become spaces, line endings become "\\n",
    runs of blank lines shrink to one, and tags are written `[kind]` / `[kind N]` in lower case. Raises
    LyricsError over the limits (characters, lines, characters in a line).
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        raise LyricsError("Lyrics must be text.")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " "))
    text = _CONTROL.sub("", text)
    lines: list[str] = []
    for raw in text.split("\n"):
        line = re.sub(r" {2,}", " ", raw).strip()
        tag = _parse_tag(line)
        if tag is not None:
            kind, number = tag
            line = f"[{kind}]" if number is None else f"[{kind} {number}]"
        if not line and (not lines or not lines[-1]):
            continue
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    cleaned = "\n".join(lines)
    if len(cleaned) > MAX_LYRICS_CHARS:
        raise LyricsError(f"The lyrics are {len(cleaned)} characters long; the limit is {MAX_LYRICS_CHARS}.")
    if len(lines) > MAX_LYRICS_LINES:
        raise LyricsError(f"The lyrics have {len(lines)} lines; the limit is {MAX_LYRICS_LINES}.")
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise LyricsError(f"Line {number} of the lyrics is {len(line)} characters long; the limit is "
                              f"{MAX_LINE_CHARS} a line (break it into shorter lines).")
    return cleaned


def _parse_tag(line: str) -> tuple[str, int | None] | None:
    """A section tag line as (canonical kind, number or None); None for a sung line or an unknown tag."""
    match = _TAG.match(line)
    if not match:
        return None
    name = match.group(1).strip().lower().replace("_", " ")
    number: int | None = None
    numbered = _TAG_NUMBER.match(name)
    if numbered and numbered.group(1).strip():
        name, number = numbered.group(1).strip(), int(numbered.group(2))
    name = re.sub(r"\s+", " ", name)
    kind = _KIND_ALIASES.get(name) or _KIND_ALIASES.get(name.replace(" ", "-"))
    return None if kind is None else (kind, number)


def parse_sections(lyrics: str) -> list[SectionText]:
    """The lyrics' sections in order. Lines before any tag form a first verse; unknown bracketed lines (`[guitar
    riff]`) stay with their section as non-sung directions."""
    sections: list[SectionText] = []
    counts: dict[str, int] = {}
    current: tuple[str, str] | None = None
    body: list[str] = []

    def close() -> None:
        if current is None and not body:
            return
        kind, tag = current if current is not None else ("verse", "")
        counts[kind] = counts.get(kind, 0) + 1
        sections.append(SectionText(kind, counts[kind], tag, tuple(body)))

    for line in clean_lyrics(lyrics).split("\n"):
        tag = _parse_tag(line)
        if tag is not None:
            close()
            current, body = (tag[0], line), []
        elif line:
            body.append(line)
    close()
    return sections


def _syllables(line: str) -> int:
    """Vowel groups in a sung line; a non-Latin line (no vowels found) counts one syllable per character."""
    if line.startswith("[") and line.endswith("]"):
        return 0
    words = re.findall(r"\w+", line)
    latin = sum(max(1, len(_VOWEL_GROUPS.findall(w))) for w in words if _VOWEL_GROUPS.search(w))
    other = sum(len(w) for w in words if not _VOWEL_GROUPS.search(w) and not w.isdigit())
    return latin + other


def _section_seconds(section: SectionText, bpm: int) -> float:
    """How long a section takes, in whole bars of 4 beats: a sung line takes a beat a syllable plus a beat's
    breath, rounded up to bars (a 9-syllable line: 10 beats, 3 bars), and every section a bar's
    turnaround; a wordless section takes a few bars."""
    beat = 60.0 / bpm
    sung = [line for line in section.lines if _syllables(line)]
    if not sung:
        return _WORDLESS_BARS.get(section.kind, 2) * 4 * beat
    bars = sum(math.ceil((_syllables(line) + 1) / 4) for line in sung) + 1
    return bars * 4 * beat


def estimate_duration(lyrics: str, bpm: int | None = None) -> float:
    """Seconds a song with these lyrics needs (whole seconds, 10 s to 10 min); 30 s for an instrumental."""
    sections = parse_sections(lyrics)
    if not any(_syllables(line) for s in sections for line in s.lines):
        return INSTRUMENTAL_SONG_S
    total = sum(_section_seconds(s, _bpm(bpm)) for s in sections)
    if sections[0].kind != "intro":
        total += 4 * 4 * 60.0 / _bpm(bpm)  # a song rarely starts on its first word
    return float(min(max(round(total), MIN_SONG_S), MAX_SONG_S))


def _bpm(bpm: int | None) -> int:
    return int(bpm) if bpm and 30 <= int(bpm) <= 300 else DEFAULT_BPM


def song_sections(lyrics: str, duration_s: float, bpm: int | None = None) -> list[Section]:
    """The sections of a song of `duration_s` seconds, as named time ranges that tile the whole track.

    A leading instrumental lead-in is given to an intro when the lyrics have none (it is not listed: it has no
    name a user would say), so "the first verse" starts where the singing starts.
    """
    texts = parse_sections(lyrics)
    if not texts or duration_s <= 0:
        return []
    tempo = _bpm(bpm)
    weights = [_section_seconds(s, tempo) for s in texts]
    lead_in = 0.0 if texts[0].kind == "intro" else 4 * 4 * 60.0 / tempo
    scale = duration_s / (sum(weights) + lead_in)
    t = lead_in * scale
    out: list[Section] = []
    for i, (text, weight) in enumerate(zip(texts, weights)):
        end = duration_s if i == len(texts) - 1 else t + weight * scale
        out.append(Section(text.kind, text.number, _label(text, texts), text.lines, round(t, 3), round(end, 3)))
        t = end
    return out


def _label(text: SectionText, texts: list[SectionText]) -> str:
    """"Chorus 2" when the song has more than one chorus, else "Chorus"."""
    many = sum(1 for s in texts if s.kind == text.kind) > 1
    return text.label if many else text.kind.capitalize()


def describe_sections(sections: list[Section]) -> str:
    """One line per section for hints: "Intro 0:00-0:12, Verse 1 0:12-0:40, ..."."""
    return ", ".join(f"{s.label} {format_time(s.start_s)}-{format_time(s.end_s)}" for s in sections)


def replace_section_lines(lyrics: str, section: Section | SectionText, new_lines: str) -> str:
    """The whole song's lyrics with one section's sung lines replaced (its tag kept), for a repaint of that
    section with new words."""
    replacement = [line for line in clean_lyrics(new_lines).split("\n") if line and _parse_tag(line) is None]
    if not replacement:
        raise LyricsError("The new lines are empty.")
    out: list[str] = []
    texts = parse_sections(lyrics)
    target = next(i for i, s in enumerate(texts) if (s.kind, s.number) == (section.kind, section.number))
    for i, text in enumerate(texts):
        if text.tag:
            out.append(text.tag)
        out.extend(replacement if i == target else text.lines)
        out.append("")
    return clean_lyrics("\n".join(out))

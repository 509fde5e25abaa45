"""Thread replies that ask to replace part of a song, as typed values: which range, and what changes there.

    replace 0:40-0:55 with a guitar solo      -> 40.0-55.0 s, prompt "a guitar solo"
    redo the bridge                           -> the bridge's range, nothing changed but the take
    change the second chorus to: <new lines>  -> chorus 2's range, those words
    make the intro calmer                     -> the intro's range, style "calmer"

The grammar is forgiving (times as 0:40, 40, 40s, 1:02.5; "to", "-", "–"; "chorus 2", "the 2nd chorus", "the last
chorus"; with or without "the"); what it cannot place raises ReplyError with a hint that names the track's length
and lists its sections with their times. Pure Python: the lead's conversation layer calls `parse_replace_reply`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from generation.lyrics import Section, describe_sections, format_time

MIN_RANGE_S = 1.0  # shorter than this is a click, not a section
EDGE_SLACK_S = 0.5  # an end this close past the track's end is the end

_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
             "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "one": 1, "two": 2, "three": 3, "four": 4}
_VERBS = r"(?:replace|redo|re-do|regenerate|remake|rework|rewrite|change|make|fix|swap|try|do|give)"
_TIME = r"(\d{1,2}:\d{2}(?:\.\d+)?|\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds)?"
_RANGE = re.compile(rf"(?:from\s+)?{_TIME}\s*(?:-|–|—|to|until|till)\s*{_TIME}", re.IGNORECASE)
_SECTION_WORDS = ("pre-chorus", "prechorus", "post-chorus", "chorus", "verse", "bridge", "intro", "outro", "hook",
                  "refrain", "solo", "instrumental", "interlude", "breakdown", "break", "drop", "build", "ending")
_SECTION_ALIASES = {"prechorus": "pre-chorus", "ending": "outro"}


class ReplyError(ValueError):
    """A reply that cannot be turned into a replace; the message is the hint to show the user."""


@dataclass(frozen=True)
class ReplaceInstruction:
    """What a reply asks for: a range of the track (seconds) and what to change there.

    `section` is the label of the named section ("Chorus 2"), None for a range given by time. `prompt` is the new
    description for the range (None: keep the track's own), `style` a change of manner ("calmer") to add to the
    track's prompt, `lyrics` new sung lines for the section (None: keep its words).
    """

    start_s: float
    end_s: float
    section: str | None = None
    prompt: str | None = None
    style: str | None = None
    lyrics: str | None = None


def parse_time(text: str) -> float:
    """"0:40" / "1:02.5" / "40" / "40s" -> seconds."""
    text = re.sub(r"\s*[a-z]+$", "", text.strip().lower())
    if ":" in text:
        minutes, seconds = text.split(":", 1)
        return int(minutes) * 60 + float(seconds)
    return float(text)


def check_range(start_s: float, end_s: float, duration_s: float) -> tuple[float, float]:
    """The range, clamped by a hair at the end; ReplyError naming the track's length when it is empty, out of the
    track, too short or the whole track."""
    length = format_time(duration_s)
    if end_s <= start_s:
        raise ReplyError(f"{format_time(start_s)}-{format_time(end_s)} is an empty range: the end must come after "
                         f"the start (this track is {length} long).")
    if start_s >= duration_s:
        raise ReplyError(f"This track is only {length} long, so it has nothing at {format_time(start_s)}.")
    if end_s > duration_s + EDGE_SLACK_S:
        raise ReplyError(f"This track is {length} long; {format_time(start_s)}-{format_time(end_s)} runs past its "
                         f"end. Try {format_time(start_s)}-{length}.")
    end_s = min(end_s, duration_s)
    if end_s - start_s < MIN_RANGE_S:
        raise ReplyError(f"{format_time(start_s)}-{format_time(end_s)} is too short to replace; give at least "
                         f"{MIN_RANGE_S:g} s (this track is {length} long).")
    if start_s <= 0 and end_s >= duration_s:
        raise ReplyError(f"That is the whole track ({length}); ask for a new song instead, or give a part of it.")
    return start_s, end_s


def parse_replace_reply(text: str, duration_s: float, sections: list[Section]) -> ReplaceInstruction:
    """A reply as a ReplaceInstruction for a track of `duration_s` seconds with these sections (empty for an
    instrumental without lyrics: then only times work). Raises ReplyError with a hint otherwise."""
    reply = " ".join((text or "").strip().split(" ")).strip()
    if not reply:
        raise ReplyError(_hint("Say which part to replace.", duration_s, sections))
    head, lyrics = _split_lyrics(text.strip())
    head = re.sub(r"\s+", " ", head).strip().rstrip(".!")
    match = _RANGE.search(head)
    if match:
        start, end = check_range(parse_time(match.group(1)), parse_time(match.group(2)), duration_s)
        rest = (head[:match.start()] + " " + head[match.end():]).strip()
        prompt, style = _change(rest)
        return ReplaceInstruction(start, end, None, prompt, style, lyrics)
    found = _find_section_phrase(head)
    if found is None:
        raise ReplyError(_hint("I couldn't tell which part of the track you mean.", duration_s, sections))
    phrase, kind, number = found
    section = pick_section(sections, kind, number, duration_s)
    rest = head.replace(phrase, " ", 1)
    prompt, style = _change(rest)
    return ReplaceInstruction(section.start_s, section.end_s, section.label, prompt, style, lyrics)


def pick_section(sections: list[Section], kind: str, number: int | None, duration_s: float) -> Section:
    """The section of that kind and occurrence (None: the only one; -1: the last one), or ReplyError listing the
    track's sections."""
    kind = _SECTION_ALIASES.get(kind, kind)
    same = [s for s in sections if s.kind == kind]
    name = kind if number is None else f"{_ordinal(number)} {kind}"
    if not same:
        raise ReplyError(_hint(f"This track has no {kind}.", duration_s, sections))
    if number is None:
        if len(same) > 1:
            problem = f"This track has {len(same)} {_plural(kind)}; say which one (e.g. \"the second {kind}\")."
            raise ReplyError(_hint(problem, duration_s, sections))
        return same[0]
    if number == -1:
        return same[-1]
    if not 1 <= number <= len(same):
        raise ReplyError(_hint(f"This track has no {name}.", duration_s, sections))
    return same[number - 1]


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _ordinal(number: int) -> str:
    return {-1: "last", 1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}.get(number, f"#{number}")


def _split_lyrics(text: str) -> tuple[str, str | None]:
    """Words after "to:" / "with:" (or after the first line) are new lyrics; the rest is the instruction."""
    colon = re.search(r"\b(?:to|with|into|as|lyrics)\s*:\s*", text, re.IGNORECASE)
    if colon:
        lines = text[colon.end():].strip()
        return text[:colon.start()], (lines or None)
    if "\n" in text:
        first, rest = text.split("\n", 1)
        return first, (rest.strip() or None)
    return text, None


def _find_section_phrase(text: str) -> tuple[str, str, int | None] | None:
    """The words that name a section, its kind and number: "the second chorus", "chorus 2", "the last verse"."""
    kinds = "|".join(re.escape(k) for k in _SECTION_WORDS)
    ordinals = "|".join(list(_ORDINALS) + ["last", "final"])
    pattern = re.compile(
        rf"(?:\bthe\s+)?(?:\b({ordinals})\s+)?\b({kinds})\b(?:\s*#?\s*(\d+)\b)?", re.IGNORECASE)
    match = pattern.search(text)
    if match is None:
        return None
    ordinal, kind, digits = match.group(1), match.group(2).lower(), match.group(3)
    number: int | None = None
    if ordinal:
        number = -1 if ordinal.lower() in ("last", "final") else _ORDINALS[ordinal.lower()]
    elif digits:
        number = int(digits)
    return match.group(0), kind, number


def _change(rest: str) -> tuple[str | None, str | None]:
    """What the rest of the reply asks for: (new prompt, style change). "with X" / "to X" / "into X" is a new
    prompt; "make ... calmer" is a style; a bare verb ("redo") changes nothing but the take."""
    rest = re.sub(rf"^\s*(?:please\s+)?{_VERBS}\b", " ", rest.strip(), flags=re.IGNORECASE)
    rest = re.sub(r"\s+", " ", rest).strip(" ,.;")
    rest = re.sub(r"^(?:it|that|this|part|section|bit|again)\b\s*", "", rest, flags=re.IGNORECASE).strip()
    if not rest or rest.lower() in ("again", "please"):
        return None, None
    prompt = re.match(r"^(?:with|to|into|as|by|using)\s+(.+)$", rest, re.IGNORECASE)
    if prompt:
        return prompt.group(1).strip(), None
    return None, rest.strip() or None


def _hint(problem: str, duration_s: float, sections: list[Section]) -> str:
    where = f"This track is {format_time(duration_s)} long"
    if sections:
        where += f"; its sections: {describe_sections(sections)}"
    return (f"{problem} {where}. Reply like \"replace 0:40-0:55 with a guitar solo\""
            + (", \"redo the bridge\" or \"change the second chorus to: <new lines>\"." if sections else "."))

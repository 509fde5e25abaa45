"""Words people use for an instrument they want added to a track ("add a guitar part", "put some strings on it"),
mapped to the part names ACE-Step's `lego` task knows (generation/ace_requests.MODEL_STEMS)."""

from __future__ import annotations

import re

# The way people say it -> ACE-Step's track name. Longer phrases first, so "backing vocals" wins over "vocals".
PART_WORDS: dict[str, str] = {
    "backing vocals": "backing_vocals", "backing vocal": "backing_vocals", "harmonies": "backing_vocals",
    "harmony": "backing_vocals", "choir": "backing_vocals",
    "vocals": "vocals", "vocal": "vocals", "voice": "vocals", "singing": "vocals", "singer": "vocals",
    "drums": "drums", "drum": "drums", "beat": "drums", "drum beat": "drums",
    "percussion": "percussion", "shakers": "percussion", "shaker": "percussion", "congas": "percussion",
    "bass": "bass", "bassline": "bass", "bass line": "bass",
    "guitar": "guitar", "guitars": "guitar",
    "piano": "keyboard", "keys": "keyboard", "keyboard": "keyboard", "keyboards": "keyboard", "organ": "keyboard",
    "synth": "synth", "synths": "synth", "synthesizer": "synth", "synth pad": "synth", "pads": "synth", "pad": "synth",
    "strings": "strings", "violin": "strings", "violins": "strings", "cello": "strings", "string section": "strings",
    "brass": "brass", "horns": "brass", "horn section": "brass", "trumpet": "brass", "trumpets": "brass",
    "woodwinds": "woodwinds", "flute": "woodwinds", "sax": "woodwinds", "saxophone": "woodwinds",
    "clarinet": "woodwinds",
    "fx": "fx", "effects": "fx", "sound effects": "fx",
}
_WORDS = "|".join(re.escape(w) for w in sorted(PART_WORDS, key=len, reverse=True))
_ADD_PART = re.compile(
    rf"^(?:please\s+)?(?:can you\s+|could you\s+)?(?:add|layer|put|throw|bring)\s+(?:in\s+)?"
    rf"(?:a|an|some|the)?\s*(?:new\s+)?(?P<part>{_WORDS})"
    rf"(?:\s+(?:part|track|line|layer|section))?(?:\s+(?:to|on|over|under|into|in)\s+(?:it|this|that|the track|the song))?"
    rf"\s*[.!]*$")


def parse_part(lowered: str) -> str | None:
    """The ACE-Step part name a reply asks to add, or None. Only a whole reply of that shape counts: "add strings
    and make it jazzier" stays a prompt edit."""
    match = _ADD_PART.match(lowered.strip())
    return PART_WORDS[match.group("part")] if match else None

"""The server blocklist: words and phrases a server's prompts (and presets, and lyrics) may not contain.

Why it matches "b a d", "b4d" and "bád": a word list that a single space or digit defeats gives admins a false sense
of control. Why it still insists on whole words: blocking "ass" must not refuse "bass", "class" or "assam tea"; a
refusal for an innocent prompt is worse than the occasional clever miss.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache
from typing import Iterable

from bot.request import Refusal

log = logging.getLogger(__name__)

MAX_BLOCKLIST = 200
BLOCK_ENTRY_MAX = 60

# --- blocklist ----------------------------------------------------------------------------------------------

# Characters that stand in for a letter. Deliberately short: each one added widens what a phrase can match.
_LOOKALIKES: dict[str, str] = {
    "a": "4@", "e": "3", "i": "1!|", "l": "1|", "o": "0", "s": "5$", "t": "7+",
}
_DIGIT_LETTERS: dict[str, str] = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "7": "t"}
# Between the letters of a blocked phrase: up to three spaces or punctuation marks ("b a d", "b.a.d", "b - a d").
_GAP = r"[\W_]{0,3}"


def fold(text: str) -> str:
    """Lower case, accents and invisible characters removed, compatibility forms unified (ｂａｄ -> bad)."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text or ""))
    kept = (ch for ch in text if unicodedata.category(ch) not in ("Mn", "Me", "Cf"))
    return "".join(kept).casefold()


def block_entry(text: str) -> str:
    """A blocklist entry as stored: folded, single-spaced; words of letters/digits, `'` and `-` only."""
    folded = re.sub(r"\s+", " ", fold(text)).strip()
    if not folded or not any(ch.isalnum() for ch in folded):
        raise Refusal("Give me a word or phrase to block, for example `/settings blocklist add word`.")
    if len(folded) > BLOCK_ENTRY_MAX:
        raise Refusal(f"Blocked phrases are up to {BLOCK_ENTRY_MAX} characters.")
    if any(not (ch.isalnum() or ch in " '-") for ch in folded):
        raise Refusal("Blocked phrases are words: letters, digits, spaces, `'` and `-` only.")
    return folded


@lru_cache(maxsize=1024)
def _block_pattern(entry: str) -> re.Pattern[str] | None:
    letters = [ch for ch in fold(entry) if ch.isalnum()]
    if not letters:
        return None
    classes = []
    for ch in letters:
        options = {ch, *_LOOKALIKES.get(ch, "")}
        for letter in _DIGIT_LETTERS.get(ch, ""):  # an entry written in leetspeak still matches plain letters
            options |= {letter, *_LOOKALIKES.get(letter, "")}
        classes.append("[" + "".join(re.escape(c) for c in sorted(options)) + "]")
    # Not glued to a letter or digit on either side: whole words only.
    return re.compile(r"(?<![^\W_])" + _GAP.join(classes) + r"(?![^\W_])")


def blocked_phrase(prompt: str, blocklist: Iterable[str]) -> str | None:
    """The first blocklist entry the prompt contains, or None."""
    folded = fold(prompt)
    for entry in blocklist:
        pattern = _block_pattern(entry)
        if pattern is not None and pattern.search(folded):
            return entry
    return None


def check_blocklist(prompt: str, blocklist: Iterable[str]) -> None:
    """Refuse a prompt containing a word or phrase this server blocks."""
    entry = blocked_phrase(prompt, blocklist)
    if entry is not None:
        log.info("prompt refused by the server blocklist")
        raise Refusal(f"This server doesn't allow prompts with \u201c{entry}\u201d. Try something else.")

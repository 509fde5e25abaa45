"""The forgiving grammar of thread replies: "continue", "extend 20s", "make it jazzier", "#2 without drums".

People write to a bandmate the way they talk, so this accepts many phrasings of a few intents and rewrites prompts
with simple, predictable rules. Anything it does not understand becomes UNKNOWN and gets a short hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from bot.parts import parse_part

DEFAULT_EXTEND_S = 10.0


class IntentKind(str, Enum):
    CONTINUE = "continue"
    EXTEND = "extend"
    VARIATIONS = "variations"
    EDIT = "edit"
    MORE_LIKE = "more_like"
    REPLACE = "replace"  # a part of the track made anew (bot/vocals.py; `text` is the reply without its pick)
    ADD_PART = "add_part"  # an instrument added to the track (`text`: ACE-Step's part name; `edit`: the fallback)
    CANCEL = "cancel"
    HELP = "help"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PromptEdit:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    replace: str | None = None  # "prompt: ..." replaces the whole prompt

    def describe(self) -> str:
        if self.replace is not None:
            return f"new prompt: {self.replace}"
        parts = [f"+{a}" for a in self.add] + [f"-{r}" for r in self.remove]
        return ", ".join(parts)


@dataclass(frozen=True)
class Intent:
    kind: IntentKind
    seconds: float | None = None
    variation: int | None = None  # 1-based, when the reply picks one ("#2 extend 10s")
    edit: PromptEdit | None = None
    text: str = ""


# Comparatives people use -> (what to add, what to take out of the prompt).
COMPARATIVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "faster": (("fast tempo",), ("slow", "slow tempo", "chill", "laid-back")),
    "quicker": (("fast tempo",), ("slow", "slow tempo")),
    "slower": (("slow tempo",), ("fast", "fast tempo", "upbeat", "energetic")),
    "happier": (("happy", "uplifting"), ("sad", "melancholic", "dark")),
    "sadder": (("sad", "melancholic"), ("happy", "uplifting", "upbeat")),
    "darker": (("dark",), ("bright", "happy")),
    "brighter": (("bright",), ("dark",)),
    "heavier": (("heavy",), ("light", "soft")),
    "lighter": (("light",), ("heavy",)),
    "softer": (("soft", "gentle"), ("aggressive", "loud", "heavy")),
    "louder": (("loud", "energetic"), ("soft", "quiet", "gentle")),
    "calmer": (("calm",), ("aggressive", "energetic", "intense")),
    "harder": (("hard-hitting",), ("soft", "gentle")),
    "longer": ((), ()),  # handled as extend
}

_SECONDS = r"(\d+(?:\.\d+)?)\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes)?\b"
_PICK = re.compile(r"^(?:#|v|no\.?\s*|number\s+|variation\s+)?([1-4])\s*[:.)\-]?\s+(?=\S)|^#([1-4])\b\s*")
_MENTION = re.compile(r"<@!?\d+>")
_PART_VERBS = r"(?:replace|redo|re-do|regenerate|remake|rework|rewrite|change|make|fix|swap)"
_PART_WORDS = (r"(?:intro|verse|pre-?chorus|post-?chorus|chorus|bridge|outro|hook|refrain|solo|instrumental|"
               r"interlude|breakdown|drop|ending)")
_REPLACE_PART = re.compile(rf"^(?:please\s+)?{_PART_VERBS}\b.*?\b{_PART_WORDS}\b"
                           rf"|^(?:please\s+)?{_PART_VERBS}\b.*?\d+(?::\d{{2}})?(?:\.\d+)?\s*s?\s*(?:-|–|—|to)\s*\d"
                           rf"|^(?:from\s+)?\d{{1,2}}:\d{{2}}(?:\.\d+)?\s*(?:-|–|—|to)\s*\d")


def _seconds(match: re.Match) -> float:
    value = float(match.group(1))
    unit = (match.group(2) or "s").lower()
    return value * 60 if unit.startswith("m") else value


def _clean(word: str) -> str:
    return word.strip(" ,.!?;:\"'").strip()


def _positive(word: str) -> str:
    """jazzier -> jazzy, funkier -> funky, groovier -> groovy, punchier -> punchy."""
    if word.endswith("ier") and len(word) > 4:
        return word[:-3] + "y"
    return word


def parse_reply(text: str) -> Intent:
    raw = _MENTION.sub(" ", text or "").strip()
    lowered = re.sub(r"\s+", " ", raw.lower()).strip()
    variation = None
    pick = _PICK.match(lowered)
    if pick:
        variation = int(pick.group(1) or pick.group(2))
        lowered = lowered[pick.end():].strip()
        raw = raw[len(raw) - len(lowered):] if len(raw) >= len(lowered) else raw
    if not lowered:
        return Intent(IntentKind.UNKNOWN, variation=variation, text=text)

    def intent(kind: IntentKind, **kw) -> Intent:
        return Intent(kind, variation=variation, text=text, **kw)

    if re.match(r"^(help|\?|what can you do|commands)\b", lowered):
        return intent(IntentKind.HELP)
    if re.match(r"^(cancel|stop|abort|nevermind|never mind)\b", lowered):
        return intent(IntentKind.CANCEL)
    if _REPLACE_PART.match(lowered):
        return Intent(IntentKind.REPLACE, variation=variation, text=raw)
    part = parse_part(lowered)
    if part is not None:  # where no model adds parts, the same words edit the prompt, as they always did
        edit = parse_edit(lowered) or PromptEdit(add=(part.replace("_", " "),))
        return Intent(IntentKind.ADD_PART, variation=variation, text=part, edit=edit)
    replace = re.match(r"^(?:prompt|edit|new prompt|change (?:the )?prompt to)\s*[:=]\s*(.+)$", raw, re.I)
    if replace:
        return intent(IntentKind.EDIT, edit=PromptEdit(replace=replace.group(1).strip()))
    extend = re.match(r"^(?:extend|lengthen|make it longer|longer|add|\+)\s*(?:it\s*)?(?:by\s*)?(?:another\s*)?" + _SECONDS,
                      lowered)
    if extend:
        return intent(IntentKind.EXTEND, seconds=_seconds(extend))
    if re.match(r"^(extend|lengthen|make it longer|longer)\b", lowered):
        return intent(IntentKind.EXTEND, seconds=DEFAULT_EXTEND_S)
    cont = re.match(r"^(continue|keep going|go on|carry on|more of (?:this|that)|next part)\b", lowered)
    if cont:
        amount = re.search(r"(?:for|by)?\s*" + _SECONDS, lowered[cont.end():])
        return intent(IntentKind.CONTINUE, seconds=_seconds(amount) if amount else DEFAULT_EXTEND_S)
    if re.match(r"^(more like (?:this|that|it)|like this|love (?:it|this)|❤|❤️|♥)", lowered):
        return intent(IntentKind.MORE_LIKE)
    if re.match(r"^(variations?|reroll|re-roll|again|another (?:one|take|version)|retry|redo|try again)\b", lowered):
        return intent(IntentKind.VARIATIONS)
    edit = parse_edit(lowered)
    if edit is not None:
        return intent(IntentKind.EDIT, edit=edit)
    return intent(IntentKind.UNKNOWN)


def parse_edit(lowered: str) -> PromptEdit | None:
    """'make it jazzier and without drums', 'more bass', 'less reverb', 'add strings', 'faster'."""
    text = re.sub(r"^(?:please\s+)?(?:can you\s+|could you\s+)?(?:make it|make this|now)\s+", "", lowered).strip()
    text = re.sub(r"^(?:a (?:bit|little|lot)|much|slightly|way)\s+", "", text)
    add: list[str] = []
    remove: list[str] = []
    clauses = [c.strip() for c in re.split(r",|;|\band\b|\bbut\b|\bplus\b", text) if c.strip()]
    if not clauses:
        return None
    for clause in clauses:
        clause = re.sub(r"^(?:a (?:bit|little|lot)|much|slightly|way)\s+", "", clause).strip()
        words = clause.split()
        if not words:
            continue
        head, rest = words[0], _clean(" ".join(words[1:]))
        if head in ("without", "no", "remove", "drop", "lose") and rest:
            remove.append(rest)
            add.append(f"no {rest}")
        elif head == "less" and rest:
            remove.append(rest)
            add.append(f"subtle {rest}")
        elif head in ("more", "extra", "heavier", "bigger", "louder") and rest:
            add.append(f"{'heavy' if rest in ('bass', 'drums') else 'more'} {rest}")
        elif head in ("add", "with", "plus", "include") and rest:
            add.append(rest)
        elif len(words) == 1 and _clean(head) in COMPARATIVES:
            plus, minus = COMPARATIVES[_clean(head)]
            add.extend(plus)
            remove.extend(minus)
        elif len(words) == 1 and _clean(head).endswith(("ier", "er")) and len(_clean(head)) > 4:
            add.append(_positive(_clean(head)))
        elif lowered.startswith(("make it", "make this", "now")) or len(clauses) > 1:
            add.append(_clean(clause))
        else:
            return None
    if not add and not remove:
        return None
    return PromptEdit(add=tuple(dict.fromkeys(a for a in add if a)), remove=tuple(dict.fromkeys(remove)))


def apply_edit(prompt: str, edit: PromptEdit) -> str:
    """The parent's prompt with words taken out and the additions appended: predictable, easy to read back."""
    if edit.replace is not None:
        return edit.replace
    result = prompt
    for term in edit.remove:
        stem = re.escape(term.rstrip("s"))
        result = re.sub(rf"(?:\b(?:with|and)\s+)?\b{stem}s?\b", "", result, flags=re.I)
    result = re.sub(r"\s+,", ",", result)
    result = re.sub(r"\s*,\s*(,\s*)+", ", ", result)
    result = re.sub(r"\s{2,}", " ", result).strip(" ,")
    additions = [a for a in edit.add if a.lower() not in result.lower()]
    return ", ".join([p for p in [result, *additions] if p])


HELP_TEXT = """**Bandmate** makes music with you.
**Start:** `/compose prompt [duration] [variations] [seed] [temperature] [guidance] [audio]` — attach audio to continue it.
**In the thread of a result** (or replying to it), write:
• `continue` or `continue 20s` — carry the piece on
• `extend 30s` / `longer` — make it longer (up to 5 minutes in all)
• `make it jazzier`, `faster`, `without drums`, `more bass`, `add strings` — a new version with the prompt changed
• `prompt: a new prompt` — start over from a new prompt
• `variations` / `again` — new takes of the same prompt
• `more like this` — variations blended with your taste
• `redo the bridge`, `replace 0:40-0:55 with a guitar solo`, `change the second chorus to: <new lines>`,
  `make the intro calmer` — a song's part made anew (ACE-Step songs)
• `add a guitar part`, `add drums`, `put some strings on it` — that instrument played along and mixed in, when an
  ACE-Step model is offered (otherwise the prompt gets the words, as above)
• `#2 extend 10s` — pick variation 2 of a result
• `cancel` — stop the piece being made
**Buttons:** 🗳 vote · 🔁 variations · ➕ extend · ❤ more like this · 🎚 stems
**Songs (ACE-Step):** `/song prompt lyrics` ([verse]/[chorus] tags; " / " breaks a line) · `/cover` · `/stems`
**Other commands:** `/queue` · `/cancel` · `/track id` · `/help`"""

"""Prompt presets (`--dreamy`): a person's own shorthands. No transport, no SQL.

Presets follow Midjourney's `/prefer option set`: `/prefer set dreamy soft pads, reverb, slow` once, then
`/compose piano --dreamy` anywhere. They are per user (not per server) because they describe a person's habits.
Expansion is a single pass: a preset's value is pasted in as text and never expanded again, so presets cannot
loop or grow without bound, and what you stored is exactly what you get. (A server's rules, which see the expanded
prompt, are bot/guild_settings.py; its blocklist bot/blocklist.py.)
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any, Mapping

from bot.request import Refusal, Requester
from bot.text import user
from bot.words import clean_prompt, short

log = logging.getLogger(__name__)

NAME_MAX = 32
VALUE_MAX = 200
MAX_PRESETS = 25  # also Discord's cap on autocomplete choices, so every preset can be offered
NAME_RE = re.compile(rf"[a-z0-9_-]{{1,{NAME_MAX}}}")
# Compose options some transports parse as `--name value` (bot/console.py): a preset by that name would be
# ambiguous, so these names are not available.
RESERVED_NAMES = frozenset({"duration", "variations", "seed", "temperature", "guidance", "model", "audio"})

# `--name` (or `—name`: phones turn "--" into an em dash) not glued to a preceding word: "piano --dreamy",
# "piano,--dreamy". "lo-fi" and "piano—soft" are not references.
_REF_RE = re.compile(r"(?<![\w-])(--|\u2014)([A-Za-z0-9_-]+)")



# --- presets ------------------------------------------------------------------------------------------------


def preset_name(name: str) -> str:
    """The canonical form of a preset name (lower case, without a leading `--`), or a Refusal saying why not."""
    text = unicodedata.normalize("NFKC", name or "").strip()
    if text.startswith("--"):
        text = text[2:]
    elif text.startswith("\u2014"):
        text = text[1:]
    text = text.lower()
    if not NAME_RE.fullmatch(text):
        raise Refusal(f"Preset names are 1 to {NAME_MAX} letters, digits, `-` or `_`, for example `dreamy`.")
    if text in RESERVED_NAMES:
        raise Refusal(f"`{text}` is already a compose option; please pick another name for your preset.")
    return text


def preset_value(value: str) -> str:
    """A preset's text on one line (same cleaning as prompts), at most VALUE_MAX characters."""
    # Line breaks and tabs become spaces first: clean_prompt drops control characters before it maps them.
    spaced = re.sub(r"[\r\n\t\v\f]+", " ", value or "")
    try:
        text = clean_prompt(spaced, 1_000_000)  # only the cleaning here; the length is checked below
    except Refusal:  # nothing printable left
        raise Refusal("A preset needs some text, for example `/prefer set dreamy soft pads, reverb, slow`.") from None
    if len(text) > VALUE_MAX:
        raise Refusal(f"That preset is too long; please keep it to {VALUE_MAX} characters.")
    return text


def _preset_list(presets: Mapping[str, str]) -> str:
    if not presets:
        return "You have no presets yet; make one with `/prefer set name text`."
    return "Your presets: " + ", ".join(f"`--{name}`" for name in sorted(presets)) + "."


def expand_presets(prompt: str, presets: Mapping[str, str], *, limit: int | None = None) -> str:
    """Replace each `--name` with that preset's text; unknown names refuse, listing the user's presets.

    Names match case-insensitively. Replacement text is not scanned again. With `limit`, an expanded prompt
    longer than that is refused here, where the message can say it was the presets that made it long.
    """
    table = {name.lower(): value for name, value in presets.items()}
    unknown: list[str] = []

    def replace(match: re.Match[str]) -> str:
        dash, name = match.group(1), match.group(2).lower()
        if name in table:
            return table[name]
        if dash == "--":  # an em dash may be plain punctuation: only "--" is surely meant as a preset
            if name not in unknown:
                unknown.append(name)
        return match.group(0)

    expanded = _REF_RE.sub(replace, prompt or "")
    if unknown:
        shown = ", ".join(f"`--{short(name, NAME_MAX + 2)}`" for name in unknown[:5])
        noun = "preset" if len(unknown) == 1 else "presets"
        raise Refusal(f"I don't know the {noun} {shown}. {_preset_list(presets)}")
    expanded = re.sub(r"\s+", " ", expanded).strip()
    if limit is not None and len(expanded) > limit:
        raise Refusal(f"With your presets filled in, that prompt is {len(expanded)} characters long; "
                      f"please keep it under {limit}.")
    return expanded


def _user_id(user: Requester | str) -> str:
    return user.user_id if isinstance(user, Requester) else str(user)


class PresetService:
    """Presets for every transport. Methods return markup to show, or raise Refusal.

    `store` is a `storage.settings.SettingsStore` (or anything with its preset methods).
    """

    def __init__(self, store: Any, *, max_prompt_chars: int = 300) -> None:
        self.store = store
        self.max_prompt_chars = max_prompt_chars

    # -- presets --------------------------------------------------------------------------------------------

    async def names(self, user: Requester | str) -> list[str]:
        """The user's preset names, sorted (for autocomplete)."""
        return sorted(await self.store.presets(_user_id(user)))

    async def expand(self, user: Requester | str, prompt: str) -> str:
        return expand_presets(prompt, await self.store.presets(_user_id(user)), limit=self.max_prompt_chars)

    async def set(self, who: Requester | str, name: str, value: str) -> str:
        name, value = preset_name(name), preset_value(value)
        existing = await self.store.presets(_user_id(who))
        if name not in existing and len(existing) >= MAX_PRESETS:
            raise Refusal(f"You have {len(existing)} presets, the most I keep; remove one with `/prefer remove`.")
        await self.store.set_preset(_user_id(who), name, value)
        verb = "Updated" if name in existing else "Saved"
        return f"{verb} `--{name}` = {user(value)}\nUse it in a prompt, e.g. `/compose piano --{name}`."

    async def remove(self, user: Requester | str, name: str) -> str:
        name = preset_name(name)
        if not await self.store.remove_preset(_user_id(user), name):
            raise Refusal(f"You have no preset called `--{name}`. {_preset_list(await self.store.presets(_user_id(user)))}")
        return f"Removed `--{name}`."

    async def list(self, who: Requester | str) -> str:
        presets = await self.store.presets(_user_id(who))
        if not presets:
            return _preset_list(presets)
        lines = ["**Your presets** (write `--name` in a prompt)"]
        lines += [f"`--{name}` {user(short(presets[name], 120))}" for name in sorted(presets)]
        return "\n".join(lines)

"""Prompt presets (`--dreamy`) and per-server rules (blocklist, channels, defaults, caps). No transport, no SQL.

Presets follow Midjourney's `/prefer option set`: `/prefer set dreamy soft pads, reverb, slow` once, then
`/compose piano --dreamy` anywhere. They are per user (not per server) because they describe a person's habits.
Expansion is a single pass: a preset's value is pasted in as text and never expanded again, so presets cannot
loop or grow without bound, and what you stored is exactly what you get.

Server rules are checked here, before anything is queued, so a refusal is immediate and nothing is stored. The
settings object only needs the attributes of `storage.settings.GuildSettings` (see `GuildRules`); `bot/` does
not import `storage/`, the store arrives through `PresetService`'s constructor.

Why the blocklist matches "b a d", "b4d" and "bád": a word list that a single space or digit defeats gives
admins a false sense of control. Why it still insists on whole words: blocking "ass" must not refuse "bass",
"class" or "assam tea"; a refusal for an innocent prompt is worse than the occasional clever miss.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from bot.core import ComposeOptions, Refusal, Requester, clean_prompt, human_seconds, short
from generation.types import MAX_VARIATIONS

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

MAX_BLOCKLIST = 200
BLOCK_ENTRY_MAX = 60
MAX_CHANNELS = 100
MIN_VOTING_WINDOW_S = 60
MAX_VOTING_WINDOW_S = 7 * 86_400
MAX_RETENTION_DAYS = 3650
DISCORD_LIMIT = 2000


class GuildRules(Protocol):
    """What this module reads from a server's settings (storage.settings.GuildSettings has these)."""

    default_duration_s: float | None
    default_model: str | None
    max_variations: int
    allowed_channel_ids: Sequence[str]
    blocklist: Sequence[str]
    voting_window_s: int | None
    retention_days: int | None
    allow_model_choice: bool


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


# --- channels, defaults, caps -------------------------------------------------------------------------------


def check_channel(channel_id: str | int | None, settings: GuildRules, *, parent_id: str | int | None = None) -> None:
    """Refuse outside the server's music channels. A thread counts as its parent channel (pass `parent_id`)."""
    allowed = {str(c) for c in settings.allowed_channel_ids}
    if not allowed or channel_id is None:
        return
    if str(channel_id) in allowed or (parent_id is not None and str(parent_id) in allowed):
        return
    raise Refusal("Music is made in the channels the admins chose here; please try in one of those.")


def apply_guild_defaults(opts: ComposeOptions, settings: GuildRules) -> ComposeOptions:
    """Fill in the server's default duration and model where the user gave none; enforce its caps."""
    if opts.variations > settings.max_variations:
        n = settings.max_variations
        raise Refusal(f"This server allows up to {n} variation{'s' if n != 1 else ''} at a time.")
    if opts.model is not None and not settings.allow_model_choice and opts.model != settings.default_model:
        raise Refusal("This server doesn't let members choose the model; leave it out to use the server's.")
    return dataclasses.replace(
        opts,
        duration_s=opts.duration_s if opts.duration_s is not None else settings.default_duration_s,
        model=opts.model if opts.model is not None else settings.default_model,
    )


# --- the service both transports call -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    label: str
    describe: Callable[[Any], str]


def _seconds(value: float | None) -> str:
    return "bot default" if value is None else f"{value:g} s"


def _window(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3600)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return human_seconds(seconds)


_FIELDS: dict[str, _Field] = {
    "default_duration_s": _Field("default duration", _seconds),
    "default_model": _Field("default model", lambda v: "bot default" if v is None else f"`{v}`"),
    "max_variations": _Field("variations per request", lambda v: f"up to {v}"),
    "allow_model_choice": _Field("members may choose the model", lambda v: "yes" if v else "no"),
    "voting_window_s": _Field("voting window", lambda v: "bot default" if v is None else _window(v)),
    "retention_days": _Field("keep tracks", lambda v: "forever" if v is None else f"{v} days"),
    "allowed_channel_ids": _Field("channels", lambda v: "all" if not v else f"{len(v)} chosen"),
    "blocklist": _Field("blocked words", lambda v: "none" if not v else f"{len(v)}"),
}

_MODEL_RE = re.compile(r"[A-Za-z0-9._:/-]{1,200}")


def _user_id(user: Requester | str) -> str:
    return user.user_id if isinstance(user, Requester) else str(user)


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not value.is_integer()):  # also NaN and infinity
        raise Refusal(f"{what} must be a whole number.")
    return int(value)


def _fit(lines: list[str], more: Callable[[int], str], limit: int = DISCORD_LIMIT - 100) -> str:
    """Join lines, dropping the tail (with a note of how many) so the message stays within a chat message."""
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > limit:
            out.append(more(len(lines) - i))
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)


class PresetService:
    """Presets and server settings for every transport. Methods return the text to show, or raise Refusal.

    `store` is a `storage.settings.SettingsStore` (or anything with its methods). The limits come from the bot's
    configuration so a server cannot choose a default the bot itself would refuse.
    """

    def __init__(self, store: Any, *, max_duration_s: float = 30.0, max_variations: int = MAX_VARIATIONS,
                 max_prompt_chars: int = 300, models: Sequence[str] | None = None) -> None:
        self.store = store
        self.max_duration_s = max_duration_s
        self.max_variations = max_variations
        self.max_prompt_chars = max_prompt_chars
        self.models = tuple(models) if models else ()

    # -- presets --------------------------------------------------------------------------------------------

    async def names(self, user: Requester | str) -> list[str]:
        """The user's preset names, sorted (for autocomplete)."""
        return sorted(await self.store.presets(_user_id(user)))

    async def expand(self, user: Requester | str, prompt: str) -> str:
        return expand_presets(prompt, await self.store.presets(_user_id(user)), limit=self.max_prompt_chars)

    async def set(self, user: Requester | str, name: str, value: str, escape: Callable[[str], str] = str) -> str:
        name, value = preset_name(name), preset_value(value)
        existing = await self.store.presets(_user_id(user))
        if name not in existing and len(existing) >= MAX_PRESETS:
            raise Refusal(f"You have {len(existing)} presets, the most I keep; remove one with `/prefer remove`.")
        await self.store.set_preset(_user_id(user), name, value)
        verb = "Updated" if name in existing else "Saved"
        return f"{verb} `--{name}` = {escape(value)}\nUse it in a prompt, e.g. `/compose piano --{name}`."

    async def remove(self, user: Requester | str, name: str) -> str:
        name = preset_name(name)
        if not await self.store.remove_preset(_user_id(user), name):
            raise Refusal(f"You have no preset called `--{name}`. {_preset_list(await self.store.presets(_user_id(user)))}")
        return f"Removed `--{name}`."

    async def list(self, user: Requester | str, escape: Callable[[str], str] = str) -> str:
        presets = await self.store.presets(_user_id(user))
        if not presets:
            return _preset_list(presets)
        lines = ["**Your presets** (write `--name` in a prompt)"]
        lines += [f"`--{name}` {escape(short(presets[name], 120))}" for name in sorted(presets)]
        return _fit(lines, lambda n: f"…and {n} more.")

    # -- composing --------------------------------------------------------------------------------------------

    async def prepare(self, who: Requester, opts: ComposeOptions, *,
                      parent_channel_id: str | int | None = None) -> ComposeOptions:
        """Presets expanded, then the server's channel, blocklist, defaults and caps applied.

        The blocklist sees the expanded prompt, so a preset cannot smuggle in a blocked word.
        """
        prompt = await self.expand(who, opts.prompt)
        opts = dataclasses.replace(opts, prompt=prompt)
        if who.guild_id is None:
            return opts
        settings = await self.store.guild(who.guild_id)
        check_channel(who.channel_id, settings, parent_id=parent_channel_id)
        check_blocklist(prompt, settings.blocklist)
        return apply_guild_defaults(opts, settings)

    # -- server settings -------------------------------------------------------------------------------------

    @staticmethod
    def _guild(guild_id: str | int | None) -> str:
        if guild_id is None:
            raise Refusal("Settings belong to a server; use this command in one.")
        return str(guild_id)

    @staticmethod
    def _admin(who: Requester) -> None:
        if not who.is_admin:
            raise Refusal("Only server admins (Manage Server) can change these settings.")

    async def settings_text(self, guild_id: str | int | None,
                            channel_label: Callable[[str], str] = lambda cid: f"#{cid}") -> str:
        settings = await self.store.guild(self._guild(guild_id))
        lines = ["**Settings for this server**"]
        for name, spec in _FIELDS.items():
            value = getattr(settings, name)
            if name == "allowed_channel_ids" and value:
                shown = ", ".join(channel_label(c) for c in value[:10])
                text = shown + (f" and {len(value) - 10} more" if len(value) > 10 else "")
            else:
                text = spec.describe(value)
            lines.append(f"• {spec.label[0].upper() + spec.label[1:]}: {text}")
        return _fit(lines, lambda n: "…")

    def validate(self, name: str, value: Any) -> Any:
        """One setting's value as stored, or a Refusal saying what is allowed. None resets to the default."""
        if name not in _FIELDS:
            raise Refusal(f"There is no setting called `{short(str(name), 40)}`.")
        if value is None:
            return None
        if name == "default_duration_s":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 1.0 <= value <= self.max_duration_s:
                raise Refusal(f"The default duration must be between 1 and {self.max_duration_s:g} seconds.")
            return float(value)
        if name == "default_model":
            text = str(value).strip()
            if not _MODEL_RE.fullmatch(text):
                raise Refusal("A model is a name like `facebook/musicgen-small` (no spaces).")
            if self.models and text not in self.models:
                raise Refusal(f"I don't have the model `{text}`. Available: "
                              + ", ".join(f"`{m}`" for m in self.models) + ".")
            return text
        if name == "max_variations":
            n = _whole(value, "Max variations")
            if not 1 <= n <= self.max_variations:
                raise Refusal(f"Max variations must be between 1 and {self.max_variations}.")
            return n
        if name == "voting_window_s":
            n = _whole(value, "The voting window")
            if not MIN_VOTING_WINDOW_S <= n <= MAX_VOTING_WINDOW_S:
                raise Refusal("The voting window must be between 1 minute and 7 days.")
            return n
        if name == "retention_days":
            n = _whole(value, "Retention")
            if not 1 <= n <= MAX_RETENTION_DAYS:
                raise Refusal(f"Retention must be between 1 and {MAX_RETENTION_DAYS} days (or unset to keep forever).")
            return n
        if name == "allow_model_choice":
            if not isinstance(value, bool):
                raise Refusal("Allow model choice is yes or no.")
            return value
        if name == "allowed_channel_ids":
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise Refusal("Channels must be a list.")
            ids: list[str] = []
            for item in value:
                cid = str(item).strip()
                if not cid.isdigit() or isinstance(item, bool):
                    raise Refusal("That isn't a channel.")
                if cid not in ids:
                    ids.append(cid)
            if len(ids) > MAX_CHANNELS:
                raise Refusal(f"Up to {MAX_CHANNELS} music channels per server.")
            return ids
        # blocklist
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise Refusal("The blocklist must be a list of words or phrases.")
        entries: list[str] = []
        for item in value:
            entry = block_entry(str(item))
            if entry not in entries:
                entries.append(entry)
        if len(entries) > MAX_BLOCKLIST:
            raise Refusal(f"The blocklist holds up to {MAX_BLOCKLIST} words or phrases.")
        return entries

    async def update_settings(self, who: Requester, guild_id: str | int | None, **changes: Any) -> str:
        """Admins only; every value is checked before anything is saved. None puts a setting back to default."""
        self._admin(who)
        guild = self._guild(guild_id)
        if not changes:
            raise Refusal("Tell me what to change, e.g. `/settings set duration:20`.")
        checked = {name: self.validate(name, value) for name, value in changes.items()}
        settings = await self.store.update_guild(guild, **checked)
        log.info("guild %s settings changed by %s: %s", guild, who.user_id, ", ".join(sorted(checked)))
        parts = [f"{_FIELDS[n].label} {_FIELDS[n].describe(getattr(settings, n))}" for n in checked]
        return "Updated: " + "; ".join(parts) + "."

    async def _edit_list(self, who: Requester, guild_id: str | int | None, name: str,
                         edit: Callable[[list[str]], list[str]]) -> Any:
        """Change a list setting inside one store transaction, so concurrent edits by two admins both land."""
        self._admin(who)
        guild = self._guild(guild_id)

        def change(current: Any) -> dict[str, Any]:
            return {name: self.validate(name, edit(list(getattr(current, name))))}

        return await self.store.modify_guild(guild, change)

    async def add_channel(self, who: Requester, guild_id: str | int | None, channel_id: str | int) -> str:
        cid = str(channel_id)
        settings = await self._edit_list(who, guild_id, "allowed_channel_ids",
                                         lambda ids: ids if cid in ids else ids + [cid])
        n = len(settings.allowed_channel_ids)
        return f"Music can now be made in this channel ({n} music channel{'s' if n != 1 else ''} in all)."

    async def remove_channel(self, who: Requester, guild_id: str | int | None, channel_id: str | int) -> str:
        cid = str(channel_id)
        settings = await self._edit_list(who, guild_id, "allowed_channel_ids",
                                         lambda ids: [i for i in ids if i != cid])
        if not settings.allowed_channel_ids:
            return "No channels are chosen now, so music can be made in every channel."
        return f"Removed this channel; {len(settings.allowed_channel_ids)} music channel(s) left."

    async def clear_channels(self, who: Requester, guild_id: str | int | None) -> str:
        await self._edit_list(who, guild_id, "allowed_channel_ids", lambda ids: [])
        return "Music can be made in every channel again."

    async def block(self, who: Requester, guild_id: str | int | None, phrase: str) -> str:
        entry = block_entry(phrase)
        await self._edit_list(who, guild_id, "blocklist", lambda items: items if entry in items else items + [entry])
        return f"Blocked \u201c{entry}\u201d (also spaced out, in leetspeak or with accents)."

    async def unblock(self, who: Requester, guild_id: str | int | None, phrase: str) -> str:
        entry = block_entry(phrase)

        def without(items: list[str]) -> list[str]:
            if entry not in items:
                raise Refusal(f"\u201c{entry}\u201d isn't on the blocklist.")
            return [i for i in items if i != entry]

        await self._edit_list(who, guild_id, "blocklist", without)
        return f"Unblocked \u201c{entry}\u201d."

    async def blocklist_entries(self, who: Requester, guild_id: str | int | None) -> list[str]:
        """The blocked phrases, for admins only (autocomplete of `/settings blocklist remove`)."""
        self._admin(who)
        return [*(await self.store.guild(self._guild(guild_id))).blocklist]

    async def blocklist_text(self, who: Requester, guild_id: str | int | None) -> str:
        self._admin(who)
        settings = await self.store.guild(self._guild(guild_id))
        if not settings.blocklist:
            return "Nothing is blocked. Add words with `/settings blocklist add`."
        lines = [f"**Blocked words and phrases** ({len(settings.blocklist)})"]
        lines += [f"\u201c{entry}\u201d" for entry in settings.blocklist]
        return _fit(lines, lambda n: f"…and {n} more.")

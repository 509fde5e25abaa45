"""A server's settings, declared once: one table row per setting (its default, how a stored value is read, how a
new one is checked, its label and how it is shown) drives what is stored, what `/settings` accepts and what it
shows. Adding a setting is one row. (As Red-DiscordBot's `register_guild(**defaults)` does.)

Storage keeps the JSON object of what each server chose (storage/settings.py); everything about meaning is here.
Reading is forgiving (a stored value this version cannot use is ignored and logged, so one bad hand edit cannot take
a server's settings down); writing is strict (a refusal says what is allowed, and nothing is saved).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from bot.blocklist import MAX_BLOCKLIST, block_entry, check_blocklist
from bot.planner import ComposeOptions
from bot.request import Refusal, Requester
from bot.words import human_seconds, short
from generation.types import MAX_VARIATIONS

log = logging.getLogger(__name__)

MAX_CHANNELS = 100
MIN_VOTING_WINDOW_S = 60
MAX_VOTING_WINDOW_S = 7 * 86_400
MAX_RETENTION_DAYS = 3650
_MODEL_RE = re.compile(r"[A-Za-z0-9._:/-]{1,200}")


@dataclass(frozen=True)
class BotLimits:
    """The bot's own limits: a server cannot choose a default the bot itself would refuse."""

    max_duration_s: float = 30.0
    max_song_s: float = 240.0  # BANDMATE_MAX_SONG_S: the longest ACE-Step song (a server may choose less)
    max_variations: int = MAX_VARIATIONS
    models: tuple[str, ...] = ()


# -- reading stored values (raise ValueError/TypeError for a value this version cannot use) -----------------------


def _read_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError("not a number")
    return float(value)


def _read_whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not value.is_integer()):  # also NaN and infinity
        raise TypeError("not a whole number")
    return int(value)


def _read_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not yes or no")
    return value


def _read_text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not text")
    return value


def _read_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("not a list")
    if any(isinstance(item, bool) or not isinstance(item, (str, int)) for item in value):
        raise TypeError("not a list of strings")
    return tuple(dict.fromkeys(str(item) for item in value))


# -- checking new values (raise Refusal with what is allowed) ---------------------------------------------------


def _whole(value: Any, what: str) -> int:
    try:
        return _read_whole(value)
    except TypeError:
        raise Refusal(f"{what} must be a whole number.") from None


def _check_duration(value: Any, limits: BotLimits) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= limits.max_duration_s:
        raise Refusal(f"The default duration must be between 1 and {limits.max_duration_s:g} seconds.")
    return float(value)


MIN_SONG_LIMIT_S = 10.0


def _check_song_length(value: Any, limits: BotLimits) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not MIN_SONG_LIMIT_S <= value <= limits.max_song_s:
        raise Refusal(f"The longest song must be between {MIN_SONG_LIMIT_S:g} seconds and "
                      f"{human_seconds(limits.max_song_s)} (the bot's own limit).")
    return float(value)


def _check_model(value: Any, limits: BotLimits) -> str:
    text = str(value).strip()
    if not _MODEL_RE.fullmatch(text):
        raise Refusal("A model is a name like `facebook/musicgen-small` (no spaces).")
    if limits.models and text not in limits.models:
        raise Refusal(f"I don't have the model `{text}`. Available: " + ", ".join(f"`{m}`" for m in limits.models)
                      + ".")
    return text


def _check_variations(value: Any, limits: BotLimits) -> int:
    n = _whole(value, "Max variations")
    if not 1 <= n <= limits.max_variations:
        raise Refusal(f"Max variations must be between 1 and {limits.max_variations}.")
    return n


def _check_window(value: Any, limits: BotLimits) -> int:
    n = _whole(value, "The voting window")
    if not MIN_VOTING_WINDOW_S <= n <= MAX_VOTING_WINDOW_S:
        raise Refusal("The voting window must be between 1 minute and 7 days.")
    return n


def _check_retention(value: Any, limits: BotLimits) -> int:
    n = _whole(value, "Retention")
    if not 1 <= n <= MAX_RETENTION_DAYS:
        raise Refusal(f"Retention must be between 1 and {MAX_RETENTION_DAYS} days (or unset to keep forever).")
    return n


def _check_bool(value: Any, limits: BotLimits) -> bool:
    if not isinstance(value, bool):
        raise Refusal("Allow model choice is yes or no.")
    return value


def _check_manifest_prompt(value: Any, limits: BotLimits) -> bool:
    if not isinstance(value, bool):
        raise Refusal("Prompt in Content Credentials is yes or no.")
    return value


def _check_channels(value: Any, limits: BotLimits) -> list[str]:
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


def _check_blocklist(value: Any, limits: BotLimits) -> list[str]:
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


# -- showing ------------------------------------------------------------------------------------------------------


def _window(seconds: int | None) -> str:
    if seconds is None:
        return "bot default"
    for unit, size in (("day", 86_400), ("hour", 3600)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return human_seconds(seconds)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any  # None: the bot's own default applies
    label: str
    read: Callable[[Any], Any]
    check: Callable[[Any, BotLimits], Any]
    show: Callable[[Any], str]


SETTINGS: tuple[Setting, ...] = (
    Setting("default_duration_s", None, "default duration", _read_number, _check_duration,
            lambda v: "bot default" if v is None else f"{v:g} s"),
    Setting("max_song_s", None, "longest song (ACE-Step)", _read_number, _check_song_length,
            lambda v: "bot default" if v is None else human_seconds(v)),
    Setting("default_model", None, "default model", _read_text, _check_model,
            lambda v: "bot default" if v is None else f"`{v}`"),
    Setting("max_variations", MAX_VARIATIONS, "variations per request", _read_whole, _check_variations,
            lambda v: f"up to {v}"),
    Setting("allow_model_choice", False, "members may choose the model", _read_bool, _check_bool,
            lambda v: "yes" if v else "no"),
    Setting("voting_window_s", None, "voting window", _read_whole, _check_window, _window),
    Setting("retention_days", None, "keep tracks", _read_whole, _check_retention,
            lambda v: "forever" if v is None else f"{v} days"),
    Setting("allowed_channel_ids", (), "channels", _read_strings, _check_channels,
            lambda v: "all" if not v else f"{len(v)} chosen"),
    Setting("blocklist", (), "blocked words", _read_strings, _check_blocklist,
            lambda v: "none" if not v else f"{len(v)}"),
    Setting("manifest_prompt", True, "prompt in Content Credentials", _read_bool, _check_manifest_prompt,
            lambda v: "yes" if v else "no"),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# A server's choices as a frozen value, its fields made from the table.
GuildSettings = dataclasses.make_dataclass(
    "GuildSettings", [(s.name, Any, dataclasses.field(default=s.default)) for s in SETTINGS], frozen=True)


def settings_from_json(data: Mapping[str, Any]) -> "GuildSettings":
    """Stored JSON -> GuildSettings, keeping defaults for anything missing, unknown or unusable."""
    values: dict[str, Any] = {}
    for name, raw in (data or {}).items():
        setting = BY_NAME.get(name)
        if setting is None or raw is None:
            continue
        try:
            values[name] = setting.read(raw)
        except (TypeError, ValueError) as error:
            log.warning("ignoring stored guild setting %s=%r: %s", name, raw, error)
    return GuildSettings(**values)


def stored_form(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- rules applied to a request -------------------------------------------------------------------------------


def check_channel(channel_id: str | int | None, settings, *, parent_id: str | int | None = None) -> None:
    """Refuse outside the server's music channels. A thread counts as its parent channel (pass `parent_id`)."""
    allowed = {str(c) for c in settings.allowed_channel_ids}
    if not allowed or channel_id is None:
        return
    if str(channel_id) in allowed or (parent_id is not None and str(parent_id) in allowed):
        return
    raise Refusal("Music is made in the channels the admins chose here; please try in one of those.")


def apply_guild_defaults(opts: ComposeOptions, settings) -> ComposeOptions:
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


class ServerSettings:
    """`/settings` for every transport, and the server's rules for each request. Methods return markup to show,
    or raise Refusal. `store` is a `storage.settings.SettingsStore` (or anything with its guild methods)."""

    def __init__(self, store: Any, limits: BotLimits = BotLimits()) -> None:
        self.store = store
        self.limits = limits

    @property
    def models(self) -> tuple[str, ...]:
        return self.limits.models

    async def get(self, guild_id: str | int) -> "GuildSettings":
        return settings_from_json(await self.store.guild(str(guild_id)))

    async def apply(self, who: Requester, opts: ComposeOptions) -> ComposeOptions:
        """The server's channel rules, blocklist, defaults and caps (nothing outside a server)."""
        if who.guild_id is None:
            return opts
        settings = await self.get(who.guild_id)
        check_channel(who.channel_id, settings, parent_id=who.parent_channel_id)
        check_blocklist(opts.prompt, settings.blocklist)
        return apply_guild_defaults(opts, settings)

    @staticmethod
    def _guild(guild_id: str | int | None) -> str:
        if guild_id is None:
            raise Refusal("Settings belong to a server; use this command in one.")
        return str(guild_id)

    @staticmethod
    def _admin(who: Requester) -> None:
        if not who.is_admin:
            raise Refusal("Only server admins (Manage Server) can change these settings.")

    def validate(self, name: str, value: Any) -> Any:
        """One setting's value as stored, or a Refusal saying what is allowed. None resets to the default."""
        setting = BY_NAME.get(name)
        if setting is None:
            raise Refusal(f"There is no setting called `{short(str(name), 40)}`.")
        return None if value is None else setting.check(value, self.limits)

    async def settings_text(self, guild_id: str | int | None,
                            channel_label: Callable[[str], str] = lambda cid: f"#{cid}") -> str:
        settings = await self.get(self._guild(guild_id))
        lines = ["**Settings for this server**"]
        for setting in SETTINGS:
            value = getattr(settings, setting.name)
            if setting.name == "allowed_channel_ids" and value:
                text = ", ".join(channel_label(c) for c in value[:10]) \
                    + (f" and {len(value) - 10} more" if len(value) > 10 else "")
            else:
                text = setting.show(value)
            lines.append(f"• {setting.label[0].upper() + setting.label[1:]}: {text}")
        return "\n".join(lines)

    async def _modify(self, guild_id: str, change: Callable[["GuildSettings"], Mapping[str, Any]]) -> "GuildSettings":
        """Read-modify-write in one store transaction, so two admins' concurrent edits both land."""
        def checked(stored: Mapping[str, Any]) -> dict[str, Any]:
            return {name: None if value is None else stored_form(value)
                    for name, value in change(settings_from_json(stored)).items()}

        return settings_from_json(await self.store.modify_guild(guild_id, checked))

    async def update_settings(self, who: Requester, guild_id: str | int | None, **changes: Any) -> str:
        """Admins only; every value is checked before anything is saved. None puts a setting back to default."""
        self._admin(who)
        guild = self._guild(guild_id)
        if not changes:
            raise Refusal("Tell me what to change, e.g. `/settings set duration:20`.")
        checked = {name: self.validate(name, value) for name, value in changes.items()}
        settings = await self._modify(guild, lambda current: checked)
        log.info("guild %s settings changed by %s: %s", guild, who.user_id, ", ".join(sorted(checked)))
        parts = [f"{BY_NAME[n].label} {BY_NAME[n].show(getattr(settings, n))}" for n in checked]
        return "Updated: " + "; ".join(parts) + "."

    async def _edit_list(self, who: Requester, guild_id: str | int | None, name: str,
                         edit: Callable[[list[str]], list[str]]) -> "GuildSettings":
        self._admin(who)
        return await self._modify(self._guild(guild_id),
                                  lambda current: {name: self.validate(name, edit(list(getattr(current, name))))})

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
        return [*(await self.get(self._guild(guild_id))).blocklist]

    async def blocklist_text(self, who: Requester, guild_id: str | int | None) -> str:
        self._admin(who)
        settings = await self.get(self._guild(guild_id))
        if not settings.blocklist:
            return "Nothing is blocked. Add words with `/settings blocklist add`."
        return "\n".join([f"**Blocked words and phrases** ({len(settings.blocklist)})",
                          *(f"\u201c{entry}\u201d" for entry in settings.blocklist)])

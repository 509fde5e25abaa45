"""Per-user presets and per-server settings, kept as JSON in `users.prefs` and `guild_settings.settings`.

Why JSON objects rather than columns: these are a handful of small, optional values that change shape more often
than the schema should (a new setting needs no migration: a missing key means its default). The cost is that
nothing here can be queried by value, which nothing needs.

Storage stores; it does not judge. Validation with user-facing messages lives in `bot/presets.py`; this module only
refuses what would corrupt the row (an unknown setting name, a value of the wrong shape). Reading is forgiving the
other way round: a key it does not know, or a value it cannot use, is ignored (logged) so one bad edit made by
hand cannot take a server's settings down.

Every change is one write transaction that reads, modifies and writes the JSON, so two concurrent edits (two admins
adding a channel at once) both land: writes are serialised on the database's single writer thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import sqlite_utils

from storage.database import Database

log = logging.getLogger(__name__)

PRESETS_KEY = "presets"


@dataclass(frozen=True)
class GuildSettings:
    """A server's choices. `None` means "the bot's default", an empty allow-list means "every channel"."""

    default_duration_s: float | None = None
    default_model: str | None = None
    max_variations: int = 4
    allowed_channel_ids: tuple[str, ...] = ()
    blocklist: tuple[str, ...] = ()
    voting_window_s: int | None = None  # votes in this window after a result decide the winner; None: bot default
    retention_days: int | None = None  # None: keep tracks forever
    allow_model_choice: bool = False


FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(GuildSettings))


def _coerce(name: str, value: Any) -> Any:
    """The stored shape of one field (None: the default); raises ValueError/TypeError for a misfit value."""
    if name not in FIELDS:
        raise ValueError(f"unknown guild setting {name!r}")
    if value is None:
        return None
    if name in ("allowed_channel_ids", "blocklist"):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
            raise TypeError(f"{name} must be a list, got {type(value).__name__}")
        out: list[str] = []
        for item in value:
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise TypeError(f"{name} items must be strings, got {type(item).__name__}")
            text = str(item)
            if text not in out:
                out.append(text)
        return tuple(out)
    if name == "allow_model_choice":
        if not isinstance(value, bool):
            raise TypeError("allow_model_choice must be a bool")
        return value
    if name == "default_duration_s":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{name} must be a number or None")
        return float(value)
    if name in ("max_variations", "voting_window_s", "retention_days"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not value.is_integer()):  # also NaN and infinity
            raise TypeError(f"{name} must be a whole number")
        return int(value)
    if name == "default_model":
        if not isinstance(value, str):
            raise TypeError("default_model must be a string or None")
        return value
    raise ValueError(f"unknown guild setting {name!r}")


def settings_from_json(data: Mapping[str, Any]) -> GuildSettings:
    """Stored JSON -> GuildSettings, keeping defaults for anything missing or unusable."""
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in FIELDS:
            log.debug("ignoring unknown guild setting %r", name)
            continue
        try:
            coerced = _coerce(name, value)
        except (TypeError, ValueError) as error:
            log.warning("ignoring stored guild setting %s=%r: %s", name, value, error)
            continue
        if coerced is not None:  # a stored null is the default
            kwargs[name] = coerced
    return GuildSettings(**kwargs)


def _load_json(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("%s holds invalid JSON; treating it as empty", what)
        return {}
    return data if isinstance(data, dict) else {}


class SettingsStore:
    """User presets and guild settings on a `storage.Database`."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- user presets ----------------------------------------------------------------------------------

    @staticmethod
    def _prefs(db: sqlite_utils.Database, user_id: str) -> dict[str, Any] | None:
        row = db.execute("SELECT prefs FROM users WHERE id = ?", [user_id]).fetchone()
        return None if row is None else _load_json(row[0], f"users.prefs of {user_id}")

    def _save_prefs(self, db: sqlite_utils.Database, user_id: str, prefs: dict[str, Any], exists: bool) -> None:
        text = json.dumps(prefs, ensure_ascii=False, sort_keys=True)
        if exists:
            db.execute("UPDATE users SET prefs = ? WHERE id = ?", [text, user_id])
        else:
            db.execute("INSERT INTO users (id, created, prefs) VALUES (?, ?, ?)", [user_id, self.clock(), text])

    async def presets(self, user_id: str) -> dict[str, str]:
        """The user's presets, name -> value (empty when they have none, or no row yet)."""

        def read(db: sqlite_utils.Database) -> dict[str, str]:
            presets = (self._prefs(db, str(user_id)) or {}).get(PRESETS_KEY)
            if not isinstance(presets, dict):
                return {}
            return {str(k): v for k, v in presets.items() if isinstance(v, str)}

        return await self.db.read(read)

    async def set_preset(self, user_id: str, name: str, value: str) -> None:
        """Create or replace one preset, creating the user's row if this is their first stored preference."""
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ValueError("a preset needs a non-empty name and a string value")
        user_id = str(user_id)

        def write(db: sqlite_utils.Database) -> None:
            prefs = self._prefs(db, user_id)
            exists = prefs is not None
            prefs = prefs or {}
            presets = prefs.get(PRESETS_KEY)
            if not isinstance(presets, dict):
                presets = {}
            presets[name] = value
            prefs[PRESETS_KEY] = presets
            self._save_prefs(db, user_id, prefs, exists)

        await self.db.write(write)

    async def remove_preset(self, user_id: str, name: str) -> bool:
        """Delete one preset; False when there was none by that name."""
        user_id = str(user_id)

        def write(db: sqlite_utils.Database) -> bool:
            prefs = self._prefs(db, user_id)
            presets = (prefs or {}).get(PRESETS_KEY)
            if prefs is None or not isinstance(presets, dict) or name not in presets:
                return False
            del presets[name]
            self._save_prefs(db, user_id, prefs, True)
            return True

        return await self.db.write(write)

    # -- guild settings --------------------------------------------------------------------------------

    @staticmethod
    def _guild_json(db: sqlite_utils.Database, guild_id: str) -> dict[str, Any]:
        row = db.execute("SELECT settings FROM guild_settings WHERE guild_id = ?", [guild_id]).fetchone()
        return {} if row is None else _load_json(row[0], f"guild_settings of {guild_id}")

    async def guild(self, guild_id: str) -> GuildSettings:
        """The server's settings; all defaults for a server that never changed any."""
        guild_id = str(guild_id)
        return settings_from_json(await self.db.read(lambda db: self._guild_json(db, guild_id)))

    async def update_guild(self, guild_id: str, **changes: Any) -> GuildSettings:
        """Set the given fields (others unchanged) and return the result.

        `None` puts a field back to its default (for the nullable ones that is the same as setting None).
        Unknown names or values of the wrong type raise ValueError/TypeError before anything is written.
        """
        for name, value in changes.items():
            _coerce(name, value)  # fail before queueing a write
        return await self.modify_guild(guild_id, lambda current: changes)

    async def modify_guild(
        self, guild_id: str, change: Callable[[GuildSettings], Mapping[str, Any]]
    ) -> GuildSettings:
        """Read-modify-write in one transaction: `change(current)` returns the fields to set (None: default).

        For edits that depend on the current value (add a channel to the allow-list): done as a separate read
        and write, two concurrent edits could each overwrite the other. `change` runs on the writer thread; an
        exception from it rolls back and reaches the caller unchanged.
        """
        guild_id = str(guild_id)

        def write(db: sqlite_utils.Database) -> GuildSettings:
            stored = self._guild_json(db, guild_id)
            # Only what someone chose is stored, so a server that never touched a field follows its default
            # even if a later version changes it; keys this version does not know are kept as they are.
            merged = dict(stored)
            for name, value in change(settings_from_json(stored)).items():
                coerced = _coerce(name, value)
                if coerced is None:
                    merged.pop(name, None)
                else:
                    merged[name] = list(coerced) if isinstance(coerced, tuple) else coerced
            text = json.dumps(merged, ensure_ascii=False, sort_keys=True)
            db.execute(
                "INSERT INTO guild_settings (guild_id, settings, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings, updated = excluded.updated",
                [guild_id, text, self.clock()],
            )
            return settings_from_json(merged)

        return await self.db.write(write)

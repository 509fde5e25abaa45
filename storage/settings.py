"""Per-user presets and per-server settings, kept as JSON in `users.prefs` and `guild_settings.settings`.

Why JSON objects rather than columns: these are a handful of small, optional values that change shape more often
than the schema should (a new setting needs no migration: a missing key means its default). The cost is that
nothing here can be queried by value, which nothing needs.

Storage stores; it does not judge. What each server setting means, its default, its checks and its display are one
table in `bot/guild_settings.py`; presets are checked in `bot/presets.py`. Invalid JSON in a row reads as empty.

Every change is one write transaction that reads, modifies and writes the JSON, so two concurrent edits (two admins
adding a channel at once) both land: writes are serialised on the database's single writer thread.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Mapping

import sqlite_utils

from storage.database import Database

log = logging.getLogger(__name__)

PRESETS_KEY = "presets"


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

    async def guild_ids(self) -> list[str]:
        """Every server that changed a setting (housekeeping sweeps each one's retention)."""
        return await self.db.read(
            lambda db: [row[0] for row in db.execute("SELECT guild_id FROM guild_settings ORDER BY guild_id")])

    async def guild(self, guild_id: str) -> dict[str, Any]:
        """What the server chose, as stored (a JSON object; empty for a server that never changed anything).
        The meaning of each key, its default and its checks live in bot/guild_settings.py."""
        guild_id = str(guild_id)
        return await self.db.read(lambda db: self._guild_json(db, guild_id))

    async def modify_guild(
        self, guild_id: str, change: Callable[[dict[str, Any]], Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Read-modify-write in one transaction: `change(stored)` returns the keys to set (None: remove, so the
        default applies again); returns the stored object after the change.

        For edits that depend on the current value (add a channel to the allow-list): done as a separate read
        and write, two concurrent edits could each overwrite the other. `change` runs on the writer thread; an
        exception from it rolls back and reaches the caller unchanged. Keys this version does not know are kept.
        """
        guild_id = str(guild_id)

        def write(db: sqlite_utils.Database) -> dict[str, Any]:
            merged = self._guild_json(db, guild_id)
            for name, value in dict(change(dict(merged))).items():
                if value is None:
                    merged.pop(name, None)
                else:
                    merged[name] = value
            text = json.dumps(merged, ensure_ascii=False, sort_keys=True)
            db.execute(
                "INSERT INTO guild_settings (guild_id, settings, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings, updated = excluded.updated",
                [guild_id, text, self.clock()],
            )
            return merged

        return await self.db.write(write)

    async def update_guild(self, guild_id: str, **changes: Any) -> dict[str, Any]:
        return await self.modify_guild(guild_id, lambda stored: changes)

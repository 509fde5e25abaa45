"""Taste events on SQLite: the raw facts a user's musical fingerprint is computed from.

Why events rather than a stored score per tag: decay depends on *when* something happened, the weights may be
retuned, and `/taste` explains itself with counts ("you voted for 5 jazz tracks"). All of that needs the
individual events; a running total would forget them. The `taste_events` table (migration 1) holds one row per
(tag, signal): user_id, tag, weight, reason, track_id, created.

Explicit choices (`/style add`, `/style remove`) are rows too, told apart by `reason` (`EXPLICIT_ADD`,
`EXPLICIT_REMOVE`), with at most one per (user, tag): setting a tag replaces the previous choice for it. Their
`weight` column is 0: what an explicit choice weighs is the bot's policy (bot/taste.py), not a stored fact.

This module knows nothing of the vocabulary or of weights; tags arrive canonical from the caller.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

import sqlite_utils

from storage.database import Database

log = logging.getLogger(__name__)

TABLE = "taste_events"
EXPLICIT_ADD = "style_add"
EXPLICIT_REMOVE = "style_remove"
EXPLICIT_REASONS = (EXPLICIT_ADD, EXPLICIT_REMOVE)

_COLUMNS = "id, user_id, tag, weight, reason, track_id, created"


@dataclass(frozen=True)
class TasteEvent:
    """One stored signal. bot/taste.py reads only `.tag .weight .reason .created`."""

    tag: str
    weight: float
    reason: str | None
    created: float
    track_id: str | None = None
    user_id: str | None = None
    id: int | None = None

    @property
    def explicit(self) -> bool:
        return self.reason in EXPLICIT_REASONS


def _row_to_event(row: tuple[Any, ...]) -> TasteEvent:
    id_, user_id, tag, weight, reason, track_id, created = row
    return TasteEvent(
        tag=tag, weight=float(weight), reason=reason, created=float(created), track_id=track_id, user_id=user_id, id=id_
    )


def _clean_tag(tag: str) -> str:
    cleaned = (tag or "").strip().lower()
    if not cleaned:
        raise ValueError("a taste event needs a non-empty tag")
    return cleaned


def _already_recorded(db: sqlite_utils.Database, user_id: str, tag: str, reason: str | None, track_id: str) -> bool:
    row = db.execute(
        f"SELECT 1 FROM {TABLE} WHERE user_id = ? AND tag = ? AND reason IS ? AND track_id = ? LIMIT 1",
        [user_id, tag, reason, track_id],
    ).fetchone()
    return row is not None


def _insert(db: sqlite_utils.Database, row: dict[str, Any]) -> int:
    cur = db.execute(
        f"INSERT INTO {TABLE} (user_id, tag, weight, reason, track_id, created) VALUES (?, ?, ?, ?, ?, ?)",
        [row["user_id"], row["tag"], row["weight"], row["reason"], row["track_id"], row["created"]],
    )
    return int(cur.lastrowid)


class TasteStore:
    """A user's taste events. All methods are coroutines; writes are atomic and durable when they return."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        user_id: str,
        tag: str,
        weight: float,
        reason: str | None,
        track_id: str | None = None,
        created: float | None = None,
        *,
        once_per_track: bool = True,
    ) -> TasteEvent | None:
        """Store one event and return it (with its id).

        With a `track_id` and `once_per_track`, the same (user, tag, reason, track) is stored only once and a
        repeat returns None: pressing ❤ twice, or voting, moving the vote and voting back, is one signal.
        """
        stored = await self.record_many(
            user_id, [(tag, weight, reason)], track_id=track_id, created=created, once_per_track=once_per_track
        )
        return stored[0] if stored else None

    async def record_many(
        self,
        user_id: str,
        events: Iterable[tuple[str, float, str | None]],
        *,
        track_id: str | None = None,
        created: float | None = None,
        once_per_track: bool = True,
    ) -> list[TasteEvent]:
        """Store several (tag, weight, reason) events from one action in one transaction; return those stored.

        `events` is what `bot.taste.events_for` returns. Duplicates are skipped as in `record`.
        """
        when = time.time() if created is None else float(created)
        rows = [
            {
                "user_id": user_id,
                "tag": _clean_tag(tag),
                "weight": float(weight),
                "reason": reason,
                "track_id": track_id,
                "created": when,
            }
            for tag, weight, reason in events
        ]
        if not rows:
            return []

        def insert(db: sqlite_utils.Database) -> list[TasteEvent]:
            stored: list[TasteEvent] = []
            for row in rows:
                if (
                    once_per_track
                    and track_id is not None
                    and _already_recorded(db, user_id, row["tag"], row["reason"], track_id)
                ):
                    continue
                row_id = _insert(db, row)
                stored.append(
                    TasteEvent(
                        tag=row["tag"],
                        weight=row["weight"],
                        reason=row["reason"],
                        created=when,
                        track_id=track_id,
                        user_id=user_id,
                        id=row_id,
                    )
                )
            return stored

        stored = await self.db.write(insert)
        if len(stored) < len(rows):
            log.debug("skipped %d repeated taste events of %s on %s", len(rows) - len(stored), user_id, track_id)
        return stored

    async def events(self, user_id: str, *, since: float | None = None) -> list[TasteEvent]:
        """The user's events (explicit choices included), oldest first; only those at or after `since` if given."""
        sql = f"SELECT {_COLUMNS} FROM {TABLE} WHERE user_id = ?"
        args: list[Any] = [user_id]
        if since is not None:
            sql += " AND created >= ?"
            args.append(float(since))
        sql += " ORDER BY created, id"
        return await self.db.read(lambda db: [_row_to_event(r) for r in db.execute(sql, args).fetchall()])

    async def set_explicit(self, user_id: str, tag: str, on: bool, *, created: float | None = None) -> None:
        """Record `/style add` (on=True) or `/style remove` (on=False) for a tag, replacing the previous choice.

        A removed tag stays excluded until it is added again; implicit events for it are kept (they still show
        what the user did), the bot just never blends the tag in.
        """
        tag = _clean_tag(tag)
        row = {
            "user_id": user_id,
            "tag": tag,
            "weight": 0.0,
            "reason": EXPLICIT_ADD if on else EXPLICIT_REMOVE,
            "track_id": None,
            "created": time.time() if created is None else float(created),
        }

        def replace(db: sqlite_utils.Database) -> None:
            db.execute(
                f"DELETE FROM {TABLE} WHERE user_id = ? AND tag = ? AND reason IN (?, ?)",
                [user_id, tag, *EXPLICIT_REASONS],
            )
            _insert(db, row)

        await self.db.write(replace)

    async def clear_explicit(self, user_id: str, tag: str) -> bool:
        """Forget the explicit choice for one tag (neither added nor excluded any more); True if there was one."""
        tag = _clean_tag(tag)
        sql = f"DELETE FROM {TABLE} WHERE user_id = ? AND tag = ? AND reason IN (?, ?)"
        return await self.db.write(lambda db: db.execute(sql, [user_id, tag, *EXPLICIT_REASONS]).rowcount > 0)

    async def explicit(self, user_id: str) -> dict[str, bool]:
        """The user's explicit choices: tag -> True (added) or False (removed), in tag order."""
        sql = f"SELECT tag, reason FROM {TABLE} WHERE user_id = ? AND reason IN (?, ?) ORDER BY tag, created, id"
        rows = await self.db.read(lambda db: db.execute(sql, [user_id, *EXPLICIT_REASONS]).fetchall())
        return {tag: reason == EXPLICIT_ADD for tag, reason in rows}  # later rows win if duplicates slipped in

    async def forget(self, user_id: str) -> int:
        """Delete every taste row of the user (implicit and explicit); return how many were deleted."""
        sql = f"DELETE FROM {TABLE} WHERE user_id = ?"
        count = await self.db.write(lambda db: db.execute(sql, [user_id]).rowcount)
        log.info("forgot %d taste events of user %s", count, user_id)
        return int(count)

    async def history_tags(self, user_id: str, *, limit: int = 100) -> list[str]:
        """Distinct tags of the user, most recently used first (for autocomplete)."""
        sql = f"SELECT tag FROM {TABLE} WHERE user_id = ? GROUP BY tag ORDER BY max(created) DESC, tag LIMIT ?"
        return await self.db.read(lambda db: [r[0] for r in db.execute(sql, [user_id, int(limit)]).fetchall()])

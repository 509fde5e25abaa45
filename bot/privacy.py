"""Privacy in words: what Bandmate keeps about someone, a copy for them, and forgetting them. No transport here.

Why: a person's taste fingerprint is theirs. Discord's Developer Policy requires bots to delete the data they hold
about a user when that user asks, and to say what they collect; `/privacy`, `/export` and `/forget` are how
Bandmate does both. The store (`storage.privacy.PrivacyStore`, handed in) does the work; this module words it.

The scheduler may be handed in too: `forget` cancels the person's queued and running jobs there first, so a render
finishing a moment later cannot write a new track with their id after they were forgotten.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

from bot.words import plural as _plural

log = logging.getLogger(__name__)

_TIME_KEYS = frozenset({"created", "created_at", "started_at", "finished_at", "exported_at"})

BACKUP_NOTE = ("Backups made before now may still contain it until they age out; they are only used to recover "
               "the bot after a failure.")
POSTED_NOTE = ("Messages already posted in Discord channels are not changed by this; a server admin can delete any "
               "you want gone.")


def _day(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d") if ts is not None else "?"


def _iso(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
    return value


def _readable_times(value: Any) -> Any:
    """Unix timestamps become ISO 8601 (UTC) strings, so the export is readable without tools."""
    if isinstance(value, dict):
        return {k: (_iso(v) if k in _TIME_KEYS else _readable_times(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_readable_times(v) for v in value]
    return value


class PrivacyService:
    """`/privacy`, `/export` and `/forget` without a transport. `store` is a `storage.privacy.PrivacyStore`."""

    def __init__(self, store: Any, *, scheduler: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.scheduler = scheduler
        self.clock = clock

    async def privacy_text(self, user_id: str) -> str:
        """What is stored about the user, in plain words (markup; a transport fits it to its own limits)."""
        s = await self.store.summary(str(user_id))
        items = []
        if s["tracks"] or s["deleted_tracks"]:
            line = f"• {_plural(s['tracks'], 'track')} you made (prompt, settings, seed, files)"
            if s["deleted_tracks"]:
                line += f", and {_plural(s['deleted_tracks'], 'removed track')} kept as a record without files"
            items.append(line)
        if s["jobs"]:
            items.append(f"• {_plural(s['jobs'], 'request')} (prompts, settings, where to post the result)")
        if s["votes"]:
            items.append(f"• {_plural(s['votes'], 'vote')}")
        if s["taste_events"]:
            items.append(f"• {_plural(s['taste_events'], 'taste signal')} (what shapes your musical fingerprint)")
        if s["presets"]:
            items.append(f"• {_plural(s['presets'], 'preset')}")
        elif s.get("preferences"):
            items.append("• your preferences")
        if not items:
            return ("Bandmate stores nothing about you right now. When you make music, it keeps your prompts, "
                    "tracks, votes and taste signals with your Discord user id; `/forget` deletes them.")
        lines = ["**What Bandmate keeps about you**", *items,
                 f"Stored since {_day(s['oldest'])}, last activity {_day(s['newest'])} (UTC).",
                 "",
                 "It is kept with your Discord user id, to make your music, run the queue and daily limits, and "
                 "blend your taste into new pieces. Your display name and messages are not stored (only the prompts "
                 "you sent), and the files themselves never name you.",
                 "`/export` sends you a copy of all of it as JSON. `/forget` deletes it; you choose whether your "
                 "tracks are deleted too or stay anonymously."]
        return "\n".join(lines)

    async def export_json(self, user_id: str) -> bytes:
        """Everything stored about the user as pretty, UTF-8 JSON."""
        data = _readable_times(await self.store.export(str(user_id)))
        return (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")

    async def forget(self, user_id: str, delete_tracks: bool) -> str:
        """Cancel the user's pending jobs, erase their data, and say what went (and what backups still hold)."""
        user_id = str(user_id)
        cancelled = await self._cancel_pending(user_id)
        result = await self.store.forget(user_id, delete_tracks=delete_tracks)
        if not result.anything and not cancelled:
            return "There was nothing stored about you, so nothing was deleted. " + BACKUP_NOTE
        gone = []
        if result.taste_events:
            gone.append(_plural(result.taste_events, "taste signal"))
        if result.votes:
            gone.append(_plural(result.votes, "vote"))
        if result.presets:
            gone.append(_plural(result.presets, "preset"))
        elif result.profile:
            gone.append("your preferences")
        if result.uploads:
            gone.append(_plural(result.uploads, "uploaded audio file"))
        if result.jobs:
            gone.append(f"the link between you and {_plural(result.jobs, 'request')}")
        if result.jobs_cancelled or cancelled:
            gone.append(f"{_plural(max(result.jobs_cancelled, cancelled), 'unfinished piece')} (cancelled)")
        lines = ["Done: Bandmate has forgotten you."]
        if gone:
            lines.append("Deleted: " + ", ".join(gone) + ".")
        if delete_tracks and result.tracks_anonymised:
            lines.append(f"Your {_plural(result.tracks_anonymised, 'track')} and "
                         f"{_plural(len(result.files_removed), 'file')} on the server were deleted, "
                         "prompts included.")
        elif result.tracks_anonymised:
            lines.append(f"Your {_plural(result.tracks_anonymised, 'track')} stay, anonymously: "
                         "nothing links them to you any more.")
        if result.copied_lyrics:
            lines.append(f"Your lyrics were also removed from {_plural(result.copied_lyrics, 'piece')} that other "
                         "people made from your songs (covers, replaced sections); their audio stays theirs.")
        lines.append("Your musical fingerprint starts from scratch if you use Bandmate again.")
        lines.append(BACKUP_NOTE)
        lines.append(POSTED_NOTE)
        return "\n".join(lines)

    async def _cancel_pending(self, user_id: str) -> int:
        if self.scheduler is None:
            return 0
        pending = [j for j in [*self.scheduler.queued_jobs(), *self.scheduler.running_jobs()] if j.user_id == user_id]
        cancelled = 0
        for job in pending:
            try:
                cancelled += bool(await self.scheduler.cancel(job.id))
            except Exception:  # noqa: BLE001 - the store still marks the row cancelled
                log.exception("could not cancel job %s before forgetting its owner", job.id)
        return cancelled

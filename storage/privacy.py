"""What Bandmate stores about one person, a copy of it for them, and forgetting it for good.

Why this exists: a taste fingerprint is personal data, and it belongs to the person it describes. They can see a
summary of what is kept (`summary`), take a full copy (`export`), and have it erased (`forget`). Discord's Developer
Policy also requires bots to honour a user's request to delete the data collected about them; `forget` is that.

What `forget` does, and why each step:
- Taste events, votes, presets/preferences (the `users` row) and the conversation links of the user's jobs are
  deleted: they only exist because of the person.
- The user's queued or running jobs are marked cancelled, so no new track with their id can appear afterwards
  (the transport should also cancel them in the scheduler first; see `bot/privacy.py`).
- Jobs are kept as anonymous rows (tracks and other people's votes reference them), with `user_id` replaced by
  `FORGOTTEN_USER`, and the fields that could lead back to the person cleared: `delivery` (channel ids, interaction
  tokens), the idempotency key (it names a Discord interaction or message), `channel_id` (a DM channel is the
  person), and uploaded audio (their own recording, removed from disk).
- With `delete_tracks=True` their tracks are marked deleted, their files removed, and the rows kept only as
  tombstones (id, lineage, no prompt, no user); job prompts and specs are blanked.
  With `delete_tracks=False` the tracks stay playable but anonymous: `user_id` NULL, no channel.
- Deleting means gone from the file too: the writes run with `PRAGMA secure_delete=ON` (freed bytes are zeroed; it
  stays on for the writer connection afterwards), then the file is `VACUUM`ed (rewritten, which also drops fragments
  left by earlier deletes made without secure_delete, e.g. a cleared `/style` choice) and the WAL is checkpointed
  with TRUNCATE, so the user id is no longer in the database file or its `-wal`. VACUUM takes time proportional to
  the file size and holds the writer meanwhile; forgets are rare. Backups taken earlier still hold the data until
  they age out (the README says so).

`sweep_retention` is the per-server retention limit: tracks older than it are deleted (rows marked, files removed).

Nothing here logs a user id: a log line saying whom we forgot would itself be a record of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlite_utils

from generation.spec import JobSpec
from storage.song_privacy import erase_copied_words, erase_song_words
from storage.database import Database
from storage.files import FileStore

log = logging.getLogger(__name__)

FORGOTTEN_USER = "forgotten"
PRESETS_KEY = "presets"
EXPORT_FORMAT = 1
_UNFINISHED = ("queued", "running")
_SECRET_HINTS = ("token", "secret", "password")
_CHECKPOINT_TRIES = 5


@dataclass
class ForgetResult:
    """What `forget` removed or anonymised. File paths are relative to the data directory."""

    taste_events: int = 0
    votes: int = 0
    presets: int = 0
    profile: bool = False  # the users row (preferences, presets) existed and was deleted
    conversation_links: int = 0
    jobs: int = 0  # job rows anonymised
    jobs_cancelled: int = 0  # of those, queued/running ones marked cancelled
    tracks_deleted: int = 0  # live tracks marked deleted (delete_tracks=True)
    tracks_anonymised: int = 0  # track rows whose user id was removed (both modes)
    uploads: int = 0  # uploaded input audio files of their jobs
    copied_lyrics: int = 0  # others' jobs and tracks (covers, replacements of their songs) that lost their words
    files_removed: list[str] = field(default_factory=list)
    files_missing: list[str] = field(default_factory=list)  # referenced but already gone from disk
    scrubbed: bool = False  # VACUUM and a full WAL checkpoint succeeded

    @property
    def anything(self) -> bool:
        return bool(self.taste_events or self.votes or self.presets or self.profile or self.conversation_links
                    or self.jobs or self.tracks_anonymised or self.files_removed)


def _json_obj(text: str | None) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        log.warning("unreadable JSON in a stored row; exported as text")
        return text


def _count_presets(prefs: Any) -> int:
    """Presets may be a name->value object or a list; anything else present counts as one."""
    presets = prefs.get(PRESETS_KEY) if isinstance(prefs, dict) else None
    if isinstance(presets, (dict, list)):
        return len(presets)
    return 1 if presets else 0


def _redact(value: Any) -> Any:
    """Delivery dicts may hold live credentials (interaction tokens); an export file must not carry them."""
    if isinstance(value, dict):
        return {k: ("[redacted]" if any(h in str(k).lower() for h in _SECRET_HINTS) else _redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _rows(db: sqlite_utils.Database, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, args)
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _job_ids(db: sqlite_utils.Database, user_id: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT id FROM jobs WHERE user_id = ? ORDER BY created_at", [user_id])]


# The user's tracks: stamped with their id, or made by one of their jobs (covers rows written before user_id existed).
_USER_TRACKS = "(user_id = ? OR job_id IN (SELECT id FROM jobs WHERE user_id = ?))"


def _track_files(row: dict[str, Any] | tuple[Any, ...]) -> list[str]:
    values = [row["mp3"], row["png"], row["flac"]] if isinstance(row, dict) else list(row)
    return [p for p in values if p]


def _orphan_uploads(db: sqlite_utils.Database, job_ids: list[str]) -> list[tuple[str, str]]:
    """(job id, input_audio) of these jobs whose file no live track and no job outside `job_ids` uses.

    An extend job's input is its parent track's FLAC, possibly someone else's live track: that one must stay.
    """
    mine = set(job_ids)
    out: list[tuple[str, str]] = []
    for job_id in job_ids:
        row = db.execute("SELECT input_audio FROM jobs WHERE id = ?", [job_id]).fetchone()
        rel = row[0] if row else None
        if not rel:
            continue
        if db.execute("SELECT 1 FROM tracks WHERE deleted = 0 AND (mp3 = ? OR png = ? OR flac = ?) LIMIT 1",
                      [rel, rel, rel]).fetchone():
            continue
        users = {r[0] for r in db.execute("SELECT id FROM jobs WHERE input_audio = ?", [rel]).fetchall()}
        if users <= mine:
            out.append((job_id, rel))
    return out


def _scrub(db: sqlite_utils.Database) -> bool:
    """Rewrite the file and empty the WAL so deleted bytes are not left in either. True when both worked.

    Runs on the writer thread inside the runner's BEGIN IMMEDIATE, which it commits first: VACUUM and a TRUNCATE
    checkpoint cannot run inside a transaction. The runner sees no open transaction afterwards and commits nothing.
    """
    conn = db.conn
    if conn.in_transaction:
        conn.execute("COMMIT")
    ok = True
    try:
        conn.execute("VACUUM")
    except sqlite3.Error as error:
        log.warning("VACUUM after a forget failed (%s); freed pages are zeroed but the file was not rewritten", error)
        ok = False
    for attempt in range(_CHECKPOINT_TRIES):
        # TRUNCATE waits (busy_timeout) for readers on older snapshots; busy=1 means it could not finish.
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            break
        time.sleep(0.05 * (attempt + 1))
    else:
        log.warning("WAL checkpoint after a forget stayed busy; the -wal is emptied at the next checkpoint")
        ok = False
    return ok


class PrivacyStore:
    """Summary, export, erasure and retention for users' data, on a `Database` and its `FileStore`."""

    def __init__(self, db: Database, files: FileStore, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.files = files
        self.clock = clock

    # -- what is stored ----------------------------------------------------------------------------------

    async def summary(self, user_id: str) -> dict[str, Any]:
        """Counts of what is stored about the user, and the oldest/newest timestamps (unix seconds or None)."""
        user_id = str(user_id)

        def read(db: sqlite_utils.Database) -> dict[str, Any]:
            def one(sql: str, *args: Any) -> tuple[Any, ...]:
                return db.execute(sql, list(args)).fetchone()

            tracks, deleted = one(
                "SELECT coalesce(sum(deleted = 0), 0), coalesce(sum(deleted != 0), 0) "
                f"FROM tracks WHERE {_USER_TRACKS}", user_id, user_id)
            prefs_row = one("SELECT prefs, created FROM users WHERE id = ?", user_id)
            prefs = _json_obj(prefs_row[0]) if prefs_row else {}
            times = one(
                "SELECT min(t), max(t) FROM ("
                " SELECT created AS t FROM users WHERE id = ?"
                " UNION ALL SELECT created_at FROM jobs WHERE user_id = ?"
                f" UNION ALL SELECT created FROM tracks WHERE {_USER_TRACKS}"
                " UNION ALL SELECT created FROM votes WHERE user_id = ?"
                " UNION ALL SELECT created FROM taste_events WHERE user_id = ?)",
                user_id, user_id, user_id, user_id, user_id, user_id)
            return {
                "tracks": int(tracks),
                "deleted_tracks": int(deleted),
                "jobs": int(one("SELECT count(*) FROM jobs WHERE user_id = ?", user_id)[0]),
                "votes": int(one("SELECT count(*) FROM votes WHERE user_id = ?", user_id)[0]),
                "taste_events": int(one("SELECT count(*) FROM taste_events WHERE user_id = ?", user_id)[0]),
                "presets": _count_presets(prefs),
                "preferences": bool(prefs_row) and bool(prefs),
                "oldest": times[0],
                "newest": times[1],
            }

        return await self.db.read(read)

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the user, JSON-serialisable, in one consistent snapshot.

        Other people appear only as what the user's own rows point at (a track id they voted for); their ids are
        never included. Interaction tokens in delivery data are redacted (they are credentials, not personal data).
        """
        user_id = str(user_id)

        def read(db: sqlite_utils.Database) -> dict[str, Any]:
            user = _rows(db, "SELECT created, prefs FROM users WHERE id = ?", [user_id])
            profile = {"created": user[0]["created"], "prefs": _json_obj(user[0]["prefs"])} if user else None
            jobs = []
            for row in _rows(db, "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at, rowid", [user_id]):
                jobs.append({
                    "id": row["id"], "kind": row["kind"], "operation": row["operation"], "model": row["model"],
                    "prompt": row["prompt"], "duration_s": row["duration_s"], "variations": row["variations"],
                    "seed": row["seed"], "sampling": _json_obj(row["sampling"]), "spec": _json_obj(row.get("spec")),
                    "input_audio": row["input_audio"], "parent_track_id": row["parent_track_id"],
                    "guild_id": row["guild_id"], "channel_id": row["channel_id"],
                    "delivery": _redact(_json_obj(row["delivery"])), "state": row["state"], "error": row["error"],
                    "created_at": row["created_at"], "started_at": row["started_at"],
                    "finished_at": row["finished_at"],
                })
            tracks = []
            for row in _rows(db, f"SELECT * FROM tracks WHERE {_USER_TRACKS} ORDER BY created, id",
                             [user_id, user_id]):
                received = db.execute("SELECT count(*) FROM votes WHERE track_id = ?", [row["id"]]).fetchone()[0]
                tracks.append({
                    "id": row["id"], "job_id": row["job_id"], "variation": row["variation"], "prompt": row["prompt"],
                    "params": _json_obj(row["params"]), "seed": row["seed"], "model": row["model"],
                    "duration_s": row["duration_s"], "operation": row["operation"],
                    "parent_track_id": row["parent_track_id"], "guild_id": row["guild_id"],
                    "channel_id": row["channel_id"], "created": row["created"], "deleted": bool(row["deleted"]),
                    "files": {"mp3": row["mp3"], "png": row["png"], "flac": row["flac"]},
                    "votes_received": int(received),  # a count: who voted is their data, not this user's
                })
            votes = _rows(db, "SELECT track_id, created FROM votes WHERE user_id = ? ORDER BY created", [user_id])
            taste = _rows(db, "SELECT tag, weight, reason, track_id, created FROM taste_events WHERE user_id = ? "
                              "ORDER BY created, id", [user_id])
            return {
                "format": EXPORT_FORMAT,
                "exported_at": self.clock(),
                "user_id": user_id,
                "profile": profile,
                "presets": (profile["prefs"].get(PRESETS_KEY) if profile and isinstance(profile["prefs"], dict)
                            else None),
                "taste_events": taste,
                "votes": votes,
                "jobs": jobs,
                "tracks": tracks,
            }

        return await self.db.read(read)

    # -- erasure -------------------------------------------------------------------------------------------

    async def forget(self, user_id: str, *, delete_tracks: bool) -> ForgetResult:
        """Erase the user's data (see the module docstring); return what was removed.

        The rows change in one transaction; files are removed after it commits (a crash in between leaves orphan
        files without rows, never rows pointing at nothing); then the file is scrubbed. Idempotent.
        """
        user_id = str(user_id)
        if not user_id or user_id == FORGOTTEN_USER:
            raise ValueError("forget needs a real user id")
        now = self.clock()

        def erase(db: sqlite_utils.Database) -> tuple[ForgetResult, list[str]]:
            # Per connection, allowed inside the transaction; it stays on for the writer afterwards, which is
            # what we want: any later delete is zeroed too, at a cost that does not matter at a bot's write rate.
            db.conn.execute("PRAGMA secure_delete = ON")
            result = ForgetResult()
            ex = db.execute
            result.taste_events = ex("DELETE FROM taste_events WHERE user_id = ?", [user_id]).rowcount
            result.votes = ex("DELETE FROM votes WHERE user_id = ?", [user_id]).rowcount
            prefs_row = ex("SELECT prefs FROM users WHERE id = ?", [user_id]).fetchone()
            if prefs_row is not None:
                result.presets = _count_presets(_json_obj(prefs_row[0]))
                result.profile = ex("DELETE FROM users WHERE id = ?", [user_id]).rowcount > 0

            job_ids = _job_ids(db, user_id)
            marks = ", ".join("?" for _ in job_ids)
            if job_ids:
                result.conversation_links = ex(
                    f"DELETE FROM conversation_links WHERE job_id IN ({marks})", job_ids).rowcount
                result.jobs_cancelled = ex(
                    f"UPDATE jobs SET state = 'cancelled', finished_at = ?, error = 'Cancelled.' "
                    f"WHERE id IN ({marks}) AND state IN (?, ?)", [now, *job_ids, *_UNFINISHED]).rowcount

            tracks = _rows(db, f"SELECT id, deleted, mp3, png, flac FROM tracks WHERE {_USER_TRACKS}",
                           [user_id, user_id])
            files: list[str] = []
            track_ids = [t["id"] for t in tracks]
            tmarks = ", ".join("?" for _ in track_ids)
            if delete_tracks and track_ids:
                result.tracks_deleted = sum(1 for t in tracks if not t["deleted"])
                for t in tracks:  # already-deleted ones too: a file left behind by an earlier removal goes now
                    files.extend(_track_files(t))
                ex(f"UPDATE tracks SET deleted = 1, user_id = NULL, channel_id = NULL, prompt = '', params = '{{}}' "
                   f"WHERE id IN ({tmarks})", track_ids)
            elif track_ids:
                ex(f"UPDATE tracks SET user_id = NULL, channel_id = NULL WHERE id IN ({tmarks})", track_ids)
            result.tracks_anonymised = len(track_ids)

            # A long extend's intermediate audio (generation/chain.py), normally gone when its chain ends.
            if job_ids:
                for (spec_text,) in ex(f"SELECT spec FROM jobs WHERE id IN ({marks})", job_ids).fetchall():
                    files.extend(JobSpec.from_dict(_json_obj(spec_text)).files())
                files.extend(erase_song_words(db, job_ids, track_ids))  # lyrics and reference uploads
            if track_ids:  # their words in covers and replacements that others made of their songs
                result.copied_lyrics = erase_copied_words(db, track_ids, job_ids)

            # After the tracks changed: an upload is removed unless a live track (anyone's) still uses the file.
            uploads = _orphan_uploads(db, job_ids)
            for job_id, rel in uploads:
                ex("UPDATE jobs SET input_audio = NULL WHERE id = ?", [job_id])
                files.append(rel)
            result.uploads = len(uploads)

            if job_ids:
                blank = ", prompt = '', spec = '{}', error = NULL" if delete_tracks else ""
                result.jobs = ex(
                    f"UPDATE jobs SET user_id = ?, delivery = '{{}}', idempotency_key = NULL, channel_id = NULL"
                    f"{blank} WHERE id IN ({marks})", [FORGOTTEN_USER, *job_ids]).rowcount
            return result, list(dict.fromkeys(files))

        result, files = await self.db.write(erase)
        await asyncio.to_thread(self._remove_files, files, result)
        try:
            result.scrubbed = await self.db.write(_scrub)
        except sqlite3.Error:
            log.exception("scrubbing the database after a forget failed; the rows are gone but freed pages may "
                          "linger until the next VACUUM")
        log.info("forgot a user: %d taste events, %d votes, %d jobs, %d tracks (%s), %d files removed, scrubbed=%s",
                 result.taste_events, result.votes, result.jobs, result.tracks_anonymised,
                 "deleted" if delete_tracks else "kept anonymously", len(result.files_removed), result.scrubbed)
        return result

    def _remove_files(self, files: list[str], result: ForgetResult) -> None:
        for rel in files:
            try:
                removed = self.files.remove(rel)
            except ValueError:
                log.warning("refusing to remove a stored path outside the data directory")
                continue
            (result.files_removed if removed else result.files_missing).append(rel)

    # -- retention -----------------------------------------------------------------------------------------

    async def sweep_retention(self, guild_id: str | None, older_than_s: float) -> int:
        """Delete the guild's tracks created more than `older_than_s` ago (rows marked deleted, files removed).

        Uploaded input audio of that guild's finished jobs older than the limit goes too, unless a live track
        still uses the file. Returns the number of tracks deleted. `guild_id=None` sweeps direct-message tracks.
        """
        if older_than_s < 0:
            raise ValueError("older_than_s must not be negative")
        cutoff = self.clock() - float(older_than_s)
        guild = None if guild_id is None else str(guild_id)

        def sweep(db: sqlite_utils.Database) -> tuple[int, list[str]]:
            rows = db.execute("SELECT id, mp3, png, flac FROM tracks WHERE deleted = 0 AND guild_id IS ? "
                              "AND created < ?", [guild, cutoff]).fetchall()
            files: list[str] = []
            for track_id, *paths in rows:
                db.execute("UPDATE tracks SET deleted = 1 WHERE id = ?", [track_id])
                files.extend(p for p in paths if p)
            old_jobs = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE guild_id IS ? AND created_at < ? AND input_audio IS NOT NULL "
                "AND state NOT IN (?, ?)", [guild, cutoff, *_UNFINISHED]).fetchall()]
            for job_id, rel in _orphan_uploads(db, old_jobs):
                db.execute("UPDATE jobs SET input_audio = NULL WHERE id = ?", [job_id])
                files.append(rel)
            return len(rows), list(dict.fromkeys(files))

        count, files = await self.db.write(sweep)
        removed = ForgetResult()
        await asyncio.to_thread(self._remove_files, files, removed)
        if count:
            log.info("retention: deleted %d tracks older than %.0f s in guild %s (%d files removed)",
                     count, older_than_s, guild, len(removed.files_removed))
        return count

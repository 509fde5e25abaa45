"""`JobStore` on SQLite, plus the track, vote and queue queries the bot needs.

Enums are stored as their values and dicts/dataclasses as JSON text; reads give back the dataclasses of
`generation.jobs`. Every write goes through `Database.write` (one writer thread, one transaction per call),
so each method is atomic and durable when it returns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Iterable

import sqlite_utils
from sqlite_utils.db import NotFoundError

from generation.jobs import DeliveryAddress, DeliveryState, Job, JobKind, JobState, Operation, TrackRecord
from generation.spec import JobSpec
from generation.types import SamplingParams
from storage.database import Database

log = logging.getLogger(__name__)

_UNFINISHED = (JobState.QUEUED.value, JobState.RUNNING.value)
_FINISHED = tuple(s.value for s in JobState if s.finished)
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


class JobNotFound(KeyError):
    """An update named a job id that has no row."""


def _job_to_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "user_id": job.user_id,
        "kind": JobKind(job.kind).value,
        "operation": Operation(job.operation).value,
        "model": job.model,
        "prompt": job.prompt,
        "duration_s": float(job.duration_s),
        "variations": int(job.variations),
        "seed": int(job.seed),
        "sampling": json.dumps(dataclasses.asdict(job.sampling), sort_keys=True),
        "input_audio": job.input_audio,
        "parent_track_id": job.parent_track_id,
        "guild_id": job.guild_id,
        "channel_id": job.channel_id,
        "delivery": json.dumps(job.delivery.to_dict(), sort_keys=True),
        "spec": json.dumps(job.spec.to_dict(), sort_keys=True),
        "idempotency_key": job.idempotency_key,
        "state": JobState(job.state).value,
        "delivery_state": DeliveryState(job.delivery_state).value,
        "attempts": int(job.attempts),
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _row_to_job(row: dict[str, Any]) -> Job:
    sampling = json.loads(row["sampling"] or "{}")
    return Job(
        id=row["id"],
        user_id=row["user_id"],
        kind=JobKind(row["kind"]),
        operation=Operation(row["operation"]),
        model=row["model"],
        prompt=row["prompt"],
        duration_s=row["duration_s"],
        variations=row["variations"],
        seed=row["seed"],
        # Unknown keys are dropped so an older build can read rows written by a newer one.
        sampling=SamplingParams(**{k: v for k, v in sampling.items() if k in _SAMPLING_FIELDS}),
        input_audio=row["input_audio"],
        parent_track_id=row["parent_track_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        delivery=DeliveryAddress.from_dict(json.loads(row["delivery"] or "{}")),
        spec=JobSpec.from_dict(json.loads(row.get("spec") or "{}")),
        idempotency_key=row["idempotency_key"],
        state=JobState(row["state"]),
        delivery_state=DeliveryState(row["delivery_state"]),
        attempts=row["attempts"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _track_to_row(track: TrackRecord) -> dict[str, Any]:
    return {
        "id": track.id,
        "job_id": track.job_id,
        "variation": int(track.variation),
        "prompt": track.prompt,
        "params": json.dumps(track.params, sort_keys=True),
        "seed": int(track.seed),
        "model": track.model,
        "duration_s": float(track.duration_s),
        "mp3": track.mp3,
        "png": track.png,
        "flac": track.flac,
        "parent_track_id": track.parent_track_id,
        "operation": Operation(track.operation).value,
        "user_id": track.user_id,
        "guild_id": track.guild_id,
        "channel_id": track.channel_id,
        "created": track.created_at,
    }


def _row_to_track(row: dict[str, Any]) -> TrackRecord:
    return TrackRecord(
        id=row["id"],
        job_id=row["job_id"],
        variation=row["variation"],
        prompt=row["prompt"],
        seed=row["seed"],
        model=row["model"],
        duration_s=row["duration_s"],
        params=json.loads(row["params"] or "{}"),
        mp3=row["mp3"],
        png=row["png"],
        flac=row["flac"],
        operation=Operation(row["operation"]),
        parent_track_id=row["parent_track_id"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        created_at=row["created"],
    )


def _placeholders(values: Iterable[Any]) -> tuple[str, list[Any]]:
    args = list(values)
    return ", ".join("?" for _ in args), args


def _jobs_where(db: sqlite_utils.Database, where: str, args: list[Any]) -> list[Job]:
    rows = db.table("jobs").rows_where(where, args, order_by="created_at, rowid")
    return [_row_to_job(r) for r in rows]


class SqliteJobStore:
    """`generation.jobs.JobStore` on a `Database`. All methods are coroutines."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- JobStore protocol --------------------------------------------------------------------------

    async def add_job(self, job: Job) -> Job:
        """Insert `job`; if its idempotency key is already stored, return that job unchanged instead.

        The check and the insert share one write transaction on the single writer, so two concurrent
        submissions with the same key yield one row.
        """
        row = _job_to_row(job)

        def add(db: sqlite_utils.Database) -> Job:
            if job.idempotency_key is not None:
                existing = list(db.table("jobs").rows_where("idempotency_key = ?", [job.idempotency_key]))
                if existing:
                    return _row_to_job(existing[0])
            db.table("jobs").insert(row)
            return job

        stored = await self.db.write(add)
        if stored is not job:
            log.info("idempotency key %r already used by job %s", job.idempotency_key, stored.id)
        return stored

    async def get_job(self, job_id: str) -> Job | None:
        def get(db: sqlite_utils.Database) -> Job | None:
            try:
                return _row_to_job(db.table("jobs").get(job_id))
            except NotFoundError:
                return None

        return await self.db.read(get)

    async def job_by_key(self, idempotency_key: str) -> Job | None:
        """The job that took this idempotency key, if any (a retried command finds its first job)."""

        def find(db: sqlite_utils.Database) -> Job | None:
            rows = list(db.table("jobs").rows_where("idempotency_key = ?", [idempotency_key], limit=1))
            return _row_to_job(rows[0]) if rows else None

        return await self.db.read(find)

    async def unfinished_jobs(self) -> list[Job]:
        """Queued and running jobs, oldest first (ties in insertion order)."""
        where, args = _placeholders(_UNFINISHED)
        return await self.db.read(lambda db: _jobs_where(db, f"state IN ({where})", args))

    async def update_job(self, job: Job) -> None:
        """Write state, attempts, error and the timestamps. Other fields are immutable once queued."""
        changes = {
            "state": JobState(job.state).value,
            "attempts": int(job.attempts),
            "error": job.error,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }

        def update(db: sqlite_utils.Database) -> None:
            try:
                db.table("jobs").update(job.id, changes)
            except NotFoundError:
                raise JobNotFound(job.id) from None

        await self.db.write(update)

    async def record_spec(self, job: Job) -> None:
        """Write the job's spec (a chain's progress), unless its row was anonymised by /forget meanwhile: a
        forgotten user's prompt, tags and paths must not come back from a job that was still in memory."""
        spec = json.dumps(job.spec.to_dict(), sort_keys=True)

        def record(db: sqlite_utils.Database) -> None:
            db.execute("UPDATE jobs SET spec = ? WHERE id = ? AND user_id = ?", [spec, job.id, job.user_id])

        await self.db.write(record)

    async def complete_job(self, job: Job, tracks: list[TrackRecord]) -> None:
        """Store `tracks` and mark the job done in one transaction; on any error neither happens.

        `job` is updated in memory (state DONE, `finished_at` set if missing) only after the commit.
        Tracks are upserted by id, so completing the same job twice with the same tracks is harmless.
        """
        finished_at = job.finished_at if job.finished_at is not None else time.time()
        rows = []
        for track in tracks:
            if track.job_id not in (None, job.id):
                raise ValueError(f"track {track.id} belongs to job {track.job_id}, not {job.id}")
            rows.append({**_track_to_row(track), "job_id": job.id})
        changes = {
            "state": JobState.DONE.value,
            "attempts": int(job.attempts),
            "error": job.error,
            "started_at": job.started_at,
            "finished_at": finished_at,
        }

        def complete(db: sqlite_utils.Database) -> None:
            try:
                db.table("jobs").update(job.id, changes)
            except NotFoundError:
                raise JobNotFound(job.id) from None
            if rows:
                db.table("tracks").upsert_all(rows, pk="id")

        await self.db.write(complete)
        job.state = JobState.DONE
        job.finished_at = finished_at

    async def tracks_for_job(self, job_id: str, *, include_deleted: bool = False) -> list[TrackRecord]:
        """The job's tracks by variation; deleted ones only when asked."""
        where = "job_id = ?" + ("" if include_deleted else " AND deleted = 0")
        return await self.db.read(
            lambda db: [_row_to_track(r) for r in db.table("tracks").rows_where(where, [job_id], order_by="variation")]
        )

    async def undelivered_jobs(self) -> list[Job]:
        """Finished jobs whose delivery is not recorded as delivered, oldest first."""
        where, args = _placeholders(_FINISHED)
        sql_where = f"delivery_state != ? AND state IN ({where})"
        return await self.db.read(lambda db: _jobs_where(db, sql_where, [DeliveryState.DELIVERED.value, *args]))

    async def set_delivery_state(self, job_id: str, state: DeliveryState) -> None:
        value = DeliveryState(state).value

        def set_state(db: sqlite_utils.Database) -> None:
            if db.execute("UPDATE jobs SET delivery_state = ? WHERE id = ?", [value, job_id]).rowcount != 1:
                raise JobNotFound(job_id)

        await self.db.write(set_state)

    # --- helpers for the bot ------------------------------------------------------------------------

    async def get_track(self, track_id: str, *, include_deleted: bool = False) -> TrackRecord | None:
        """One track, or None if unknown (or deleted, unless `include_deleted`)."""

        def get(db: sqlite_utils.Database) -> TrackRecord | None:
            try:
                row = db.table("tracks").get(track_id)
            except NotFoundError:
                return None
            if row["deleted"] and not include_deleted:
                return None
            return _row_to_track(row)

        return await self.db.read(get)

    async def jobs_for_user(self, user_id: str, states: Iterable[JobState] | None = None) -> list[Job]:
        """A user's jobs, oldest first, optionally only those in `states`."""
        where, args = "user_id = ?", [user_id]
        if states is not None:
            marks, values = _placeholders(JobState(s).value for s in states)
            if not values:
                return []
            where += f" AND state IN ({marks})"
            args += values
        return await self.db.read(lambda db: _jobs_where(db, where, args))

    async def count_pending(self, user_id: str | None = None) -> int:
        """Queued plus running jobs, overall or for one user (for queue limits and position messages)."""
        marks, args = _placeholders(_UNFINISHED)
        sql = f"SELECT count(*) FROM jobs WHERE state IN ({marks})"
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        return await self.db.read(lambda db: int(db.execute(sql, args).fetchone()[0]))

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it is unknown or already finished.

        Marks the row only: the scheduler must check the state (or be told) before it acts on the job.
        """
        marks, args = _placeholders(_UNFINISHED)

        def cancel(db: sqlite_utils.Database) -> bool:
            cur = db.execute(
                f"UPDATE jobs SET state = ?, finished_at = ? WHERE id = ? AND state IN ({marks})",
                [JobState.CANCELLED.value, time.time(), job_id, *args],
            )
            return cur.rowcount == 1

        return await self.db.write(cancel)

    async def record_vote(self, job_id: str, track_id: str, user_id: str) -> bool:
        """Record `user_id`'s vote for one of the job's tracks; True if it was new or changed.

        One vote per user per job: voting again moves the vote. Raises ValueError if the track is not
        a live track of that job.
        """

        def vote(db: sqlite_utils.Database) -> bool:
            row = db.execute("SELECT job_id, deleted FROM tracks WHERE id = ?", [track_id]).fetchone()
            if row is None or row[0] != job_id or row[1]:
                raise ValueError(f"track {track_id!r} is not a live track of job {job_id!r}")
            cur = db.execute(
                "INSERT INTO votes (job_id, track_id, user_id, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (job_id, user_id) DO UPDATE SET track_id = excluded.track_id, created = excluded.created "
                "WHERE votes.track_id != excluded.track_id",
                [job_id, track_id, user_id, time.time()],
            )
            return cur.rowcount > 0

        return await self.db.write(vote)

    async def vote_tally(self, job_id: str) -> dict[str, int]:
        """Votes per live track of the job (tracks without votes count 0), in variation order."""
        sql = (
            "SELECT t.id, count(v.user_id) FROM tracks t "
            "LEFT JOIN votes v ON v.track_id = t.id AND v.job_id = t.job_id "
            "WHERE t.job_id = ? AND t.deleted = 0 GROUP BY t.id ORDER BY t.variation"
        )
        return await self.db.read(lambda db: {r[0]: int(r[1]) for r in db.execute(sql, [job_id]).fetchall()})

    async def delete_track(self, track_id: str) -> list[str]:
        """Mark a track deleted; return its file paths (relative) for the caller to remove afterwards.

        Returns [] if the track is unknown or already deleted. Remove the files only after this returns,
        so a crash in between leaves orphan files rather than a live row without files.
        """

        def delete(db: sqlite_utils.Database) -> list[str]:
            row = db.execute("SELECT mp3, png, flac FROM tracks WHERE id = ? AND deleted = 0", [track_id]).fetchone()
            if row is None:
                return []
            db.execute("UPDATE tracks SET deleted = 1 WHERE id = ?", [track_id])
            return [p for p in row if p]

        return await self.db.write(delete)


class ConversationLinks:
    """Which job a transport's message or thread belongs to ("discord:message:123" -> job id)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def link(self, ref: str, job_id: str) -> None:
        def insert(db: sqlite_utils.Database) -> None:
            db.execute("INSERT OR REPLACE INTO conversation_links (ref, job_id, created) VALUES (?, ?, ?)",
                       [ref, job_id, time.time()])

        await self.db.write(insert)

    async def job_for(self, ref: str) -> str | None:
        def find(db: sqlite_utils.Database) -> str | None:
            row = db.execute("SELECT job_id FROM conversation_links WHERE ref = ?", [ref]).fetchone()
            return row[0] if row else None

        return await self.db.read(find)

    async def refs_for(self, job_id: str) -> list[str]:
        """Every transport reference (messages, threads) linked to a job."""

        def find(db: sqlite_utils.Database) -> list[str]:
            rows = db.execute("SELECT ref FROM conversation_links WHERE job_id = ? ORDER BY created", [job_id])
            return [r[0] for r in rows.fetchall()]

        return await self.db.read(find)

    async def jobs_since(self, user_id: str, since: float) -> int:
        """Jobs a user submitted since a time (for daily quotas); cancelled and failed ones do not count."""

        def count(db: sqlite_utils.Database) -> int:
            return db.execute(
                "SELECT count(*) FROM jobs WHERE user_id = ? AND created_at >= ? AND state NOT IN ('cancelled', 'failed')",
                [user_id, since]).fetchone()[0]

        return await self.db.read(count)


class Leaderboard:
    """Votes across a guild: the leaderboard, and voting windows that close with a winner."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def top_tracks(self, guild_id: str | None, since: float, limit: int = 10) -> list[tuple[TrackRecord, int]]:
        def query(db: sqlite_utils.Database) -> list[tuple[TrackRecord, int]]:
            rows = db.execute(
                "SELECT t.*, count(v.user_id) AS votes FROM tracks t JOIN votes v ON v.track_id = t.id "
                "WHERE t.deleted = 0 AND t.guild_id IS ? AND v.created >= ? "
                "GROUP BY t.id ORDER BY votes DESC, t.created ASC LIMIT ?", [guild_id, since, limit])
            columns = [c[0] for c in rows.description]
            out = []
            for row in rows.fetchall():
                record = dict(zip(columns, row))
                votes = record.pop("votes")
                out.append((_row_to_track(record), votes))
            return out

        return await self.db.read(query)

    async def open_window(self, job_id: str, guild_id: str | None, closes_at: float) -> None:
        def insert(db: sqlite_utils.Database) -> None:
            db.execute("INSERT OR IGNORE INTO voting_windows (job_id, guild_id, closes_at) VALUES (?, ?, ?)",
                       [job_id, guild_id, closes_at])

        await self.db.write(insert)

    async def close_due(self, now: float) -> list[tuple[str, str | None]]:
        """Close every window due by `now`; returns (job id, winning track id or None when nobody voted)."""

        def close(db: sqlite_utils.Database) -> list[tuple[str, str | None]]:
            due = [r[0] for r in db.execute(
                "SELECT job_id FROM voting_windows WHERE closed = 0 AND closes_at <= ?", [now]).fetchall()]
            results = []
            for job_id in due:
                row = db.execute(
                    "SELECT track_id, count(*) AS n, min(created) AS first FROM votes WHERE job_id = ? "
                    "GROUP BY track_id ORDER BY n DESC, first ASC LIMIT 1", [job_id]).fetchone()
                winner = row[0] if row else None
                db.execute("UPDATE voting_windows SET closed = 1, winner_track_id = ? WHERE job_id = ?",
                           [winner, job_id])
                results.append((job_id, winner))
            return results

        return await self.db.write(close)

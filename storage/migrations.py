"""Numbered schema migrations, applied in order when the database opens.

Each migration runs in its own `BEGIN IMMEDIATE` transaction together with the row that records it in the
`migrations` table, so a crash mid-migration leaves the schema at the previous version, and two processes
opening the same file at once cannot both apply the same step (the second one waits for the write lock,
then sees the step recorded and skips it).

Rules for adding a migration: append, never edit or renumber an applied one; a migration gets the
sqlite-utils `Database` and must not commit (the runner owns the transaction).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import sqlite_utils

log = logging.getLogger(__name__)

MigrationFn = Callable[[sqlite_utils.Database], None]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: MigrationFn


class SchemaTooNew(RuntimeError):
    """The file was migrated by a newer Bandmate; running older code against it could corrupt data."""


def _sql(script: str) -> MigrationFn:
    """A migration that runs a SQL script (statements split by sqlite-utils, inside the open transaction)."""

    def run(db: sqlite_utils.Database) -> None:
        db.executescript(script)

    return run


_INITIAL_SCHEMA = """
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    prefs TEXT NOT NULL DEFAULT '{}'            -- display preferences, JSON object
);

CREATE TABLE guild_settings (
    guild_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL DEFAULT '{}',        -- JSON object
    updated REAL
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,                         -- JobKind value
    operation TEXT NOT NULL,                    -- Operation value
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    duration_s REAL NOT NULL,
    variations INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    sampling TEXT NOT NULL,                     -- SamplingParams as JSON
    input_audio TEXT,                           -- path relative to the data dir
    parent_track_id TEXT,
    guild_id TEXT,
    channel_id TEXT,
    delivery TEXT NOT NULL DEFAULT '{}',        -- JSON object, opaque to storage
    idempotency_key TEXT UNIQUE,
    interaction_expires_at REAL,
    state TEXT NOT NULL,                        -- JobState value
    delivery_state TEXT NOT NULL,               -- DeliveryState value
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
-- unfinished_jobs / count_pending: state filter, oldest first
CREATE INDEX jobs_by_state ON jobs (state, created_at);
-- jobs_for_user, per-user queue limits
CREATE INDEX jobs_by_user_state ON jobs (user_id, state);
-- undelivered_jobs: finished jobs whose delivery is not recorded
CREATE INDEX jobs_by_delivery ON jobs (delivery_state, state);

CREATE TABLE tracks (
    id TEXT PRIMARY KEY,
    job_id TEXT REFERENCES jobs (id),
    variation INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',          -- JSON object
    seed INTEGER NOT NULL,
    model TEXT NOT NULL,
    duration_s REAL NOT NULL,
    mp3 TEXT NOT NULL,                          -- paths relative to the data dir
    png TEXT NOT NULL,
    flac TEXT NOT NULL,
    parent_track_id TEXT,
    operation TEXT NOT NULL,                    -- Operation value: the track's lineage
    user_id TEXT,
    guild_id TEXT,
    channel_id TEXT,
    created REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, variation)
);
-- tracks_for_job is served by the UNIQUE (job_id, variation) index
CREATE INDEX tracks_by_user ON tracks (user_id, created);
CREATE INDEX tracks_by_parent ON tracks (parent_track_id);

CREATE TABLE votes (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    track_id TEXT NOT NULL REFERENCES tracks (id),
    user_id TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (job_id, user_id)                    -- one vote per user per job; changing it updates the row
);
CREATE INDEX votes_by_track ON votes (track_id);

CREATE TABLE taste_events (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    weight REAL NOT NULL,
    reason TEXT,
    track_id TEXT,
    created REAL NOT NULL
);
CREATE INDEX taste_events_by_user ON taste_events (user_id, created);
"""

_JOB_SPEC_AND_LINKS = """
-- Kind-specific parameters of a job (song sections, blended tags, variation strength...), JSON object.
ALTER TABLE jobs ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';

-- Which job a transport's message or thread belongs to, so replies and buttons find their track.
-- ref is the transport's own id, e.g. "discord:message:123" or "discord:thread:456".
CREATE TABLE conversation_links (
    ref TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    created REAL NOT NULL
);
CREATE INDEX conversation_links_job ON conversation_links(job_id);
"""

_VOTING_WINDOWS = """
-- A result's voting window: when it closes, the track with the most votes is marked the winner.
CREATE TABLE voting_windows (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    guild_id TEXT,
    closes_at REAL NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    winner_track_id TEXT
);
CREATE INDEX voting_windows_open ON voting_windows(closed, closes_at);
CREATE INDEX tracks_by_guild ON tracks(guild_id, created);
"""

def _delivery_expiry_into_delivery(db: sqlite_utils.Database) -> None:
    """The interaction expiry belongs to the Discord transport's delivery data, not to the engine's job: move it
    into the delivery JSON (as `expires_at`) and drop the column."""
    db.conn.execute("UPDATE jobs SET delivery = json_set(CASE WHEN json_valid(delivery) THEN delivery ELSE '{}' END, "
                    "'$.expires_at', interaction_expires_at) WHERE interaction_expires_at IS NOT NULL")
    db.conn.execute("ALTER TABLE jobs DROP COLUMN interaction_expires_at")


MIGRATIONS: list[Migration] = [
    Migration(1, "initial schema", _sql(_INITIAL_SCHEMA)),
    Migration(2, "job spec and conversation links", _sql(_JOB_SPEC_AND_LINKS)),
    Migration(3, "voting windows", _sql(_VOTING_WINDOWS)),
    Migration(4, "interaction expiry moves into the delivery data", _delivery_expiry_into_delivery),
]


def _begin_immediate(db: sqlite_utils.Database) -> None:
    db.conn.execute("BEGIN IMMEDIATE")


def _ensure_table(db: sqlite_utils.Database) -> None:
    db.conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )


def applied_versions(db: sqlite_utils.Database) -> dict[int, str]:
    """Recorded migrations, version -> name (empty for a fresh file)."""
    if not db.table("migrations").exists():
        return {}
    return {row[0]: row[1] for row in db.conn.execute("SELECT version, name FROM migrations")}


def schema_version(db: sqlite_utils.Database) -> int:
    """Highest applied migration, 0 for a fresh file."""
    return max(applied_versions(db), default=0)


def apply_migrations(db: sqlite_utils.Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations in order; return the versions applied (empty when already current).

    `db` must not be inside a transaction. Safe to call on every start.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError(f"migration versions must be positive and strictly increasing: {versions}")
    if db.conn.in_transaction:
        raise RuntimeError("apply_migrations needs a connection outside any transaction")

    _begin_immediate(db)
    try:
        _ensure_table(db)
        recorded = applied_versions(db)
        db.conn.execute("COMMIT")
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    known = {m.version: m.name for m in migrations}
    newer = sorted(v for v in recorded if v not in known and v > max(known, default=0))
    if newer:
        raise SchemaTooNew(f"database has migrations {newer} this code does not know; refusing to open it")
    for version, name in recorded.items():
        if version in known and known[version] != name:
            log.warning("migration %d is recorded as %r but the code calls it %r", version, name, known[version])

    done: list[int] = []
    for migration in migrations:
        _begin_immediate(db)
        try:
            # Re-check under the write lock: another process may have applied it since we looked.
            if db.conn.execute("SELECT 1 FROM migrations WHERE version = ?", [migration.version]).fetchone():
                db.conn.execute("ROLLBACK")
                continue
            migration.apply(db)
            db.conn.execute(
                "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                [migration.version, migration.name, time.time()],
            )
            db.conn.execute("COMMIT")
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            log.exception(
                "migration %d (%s) failed; schema left at the previous version", migration.version, migration.name
            )
            raise
        log.info("applied migration %d: %s", migration.version, migration.name)
        done.append(migration.version)
    return done

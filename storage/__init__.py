"""Persistence: SQLite through sqlite-utils (one writer thread) and an atomic file store.

Knows nothing of Discord or torch; the engine reaches it only through `generation.jobs.JobStore`.
"""

from storage.backup import BackupError, BackupResult, RestoreResult, backup, restore
from storage.database import DB_FILENAME, Database, DatabaseClosed
from storage.files import FileStore
from storage.jobstore import JobNotFound, SqliteJobStore
from storage.migrations import MIGRATIONS, Migration, SchemaTooNew, apply_migrations

__all__ = [
    "DB_FILENAME",
    "MIGRATIONS",
    "BackupError",
    "BackupResult",
    "Database",
    "DatabaseClosed",
    "FileStore",
    "JobNotFound",
    "Migration",
    "RestoreResult",
    "SchemaTooNew",
    "SqliteJobStore",
    "apply_migrations",
    "backup",
    "restore",
]

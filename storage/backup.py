"""Online backup and restore of a data directory (database plus the audio files it references).

`backup` may run while the bot is writing. The database is copied with SQLite's online backup API in a
single step, i.e. inside one read transaction: in WAL mode that is a consistent snapshot that neither
blocks the writer nor includes its uncommitted work. The files copied are exactly those referenced by
live rows *of that snapshot*; files are written before the rows that point at them, so every one of them
already exists. Files written later are not referenced by the snapshot and are not needed.

A backup is complete only once `manifest.json` exists (it is written last, atomically), so an
interrupted backup is never mistaken for a good one. `restore` must run with the bot stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.database import DB_FILENAME
from storage.files import FileStore
from storage.migrations import schema_version

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
# The Content Credentials signing chain (generation/credentials.py KEY_DIR_NAME): without it a restored server could
# no longer tell its own files from anyone else's. Copied with its private modes (0700 folder, 0600 keys).
KEYS_DIR = "c2pa"

_REFERENCED_FILES_SQL = """
SELECT mp3 FROM tracks WHERE deleted = 0
UNION SELECT png FROM tracks WHERE deleted = 0
UNION SELECT flac FROM tracks WHERE deleted = 0
UNION SELECT input_audio FROM jobs WHERE input_audio IS NOT NULL
    -- a finished chain's window jobs (generation/chain.py) read intermediate audio that is deleted when it ends
    AND (json_extract(spec, '$.window_of') IS NULL OR state IN ('queued', 'running'))
-- a "sound like this" reference upload: a queued song needs it, and a new take of a song reuses it
UNION SELECT json_extract(spec, '$.reference_audio') FROM jobs WHERE json_extract(spec, '$.reference_audio') IS NOT NULL
"""


class BackupError(RuntimeError):
    """The backup could not be made, or a backup directory is incomplete or damaged."""


@dataclass
class BackupResult:
    dest_dir: str
    created_at: float
    schema_version: int
    files: list[dict[str, Any]] = field(default_factory=list)  # {"path": rel, "size": bytes}
    missing: list[str] = field(default_factory=list)  # referenced by the snapshot but gone from disk
    copied: int = 0  # files actually copied (others were already present from an earlier backup)

    @property
    def bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files)


@dataclass
class RestoreResult:
    db_path: str
    files: int


def _uri(path: Path, mode: str) -> str:
    return f"{path.resolve().as_uri()}?mode={mode}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _check_db(path: Path) -> tuple[str, int, list[str]]:
    """integrity_check result, schema version and referenced files of a (non-live) database file."""
    if not path.is_file():
        raise BackupError(f"no database file at {path}")
    conn = sqlite3.connect(_uri(path, "ro"), uri=True)
    try:
        result = "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
        version = schema_version(sqlite_utils.Database(conn, execute_plugins=False))
        paths = sorted(str(r[0]) for r in conn.execute(_REFERENCED_FILES_SQL) if r[0]) if version else []
    finally:
        conn.close()
    return result, version, paths


def _copy_keys(src: Path, dest: Path) -> None:
    """The signing chain's files (certificates and keys, not the lock), each written privately then renamed."""
    if not src.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dest, 0o700)
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        mode = 0o600 if path.suffix == ".key" else 0o644
        part = dest / f".{path.name}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(path.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(part, mode)
        os.replace(part, dest / path.name)


def backup(
    db_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str]
) -> BackupResult:
    """Back up a live database and its referenced audio into `dest_dir` (`bandmate.db`, `audio/...`).

    Safe while the bot runs. Re-running into the same `dest_dir` only copies files it lacks (track files
    are never rewritten in place). Raises BackupError if the copy fails its integrity check.
    """
    db_path, data_dir, dest_dir = Path(db_path), Path(data_dir), Path(dest_dir)
    if not db_path.is_file():
        raise BackupError(f"no database at {db_path}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest_db = dest_dir / DB_FILENAME
    if dest_db.resolve() == db_path.resolve():
        raise BackupError("the backup destination is the live database itself")
    manifest = dest_dir / MANIFEST
    manifest.unlink(missing_ok=True)  # the directory is incomplete until the new manifest lands
    started = time.time()

    part = dest_dir / (DB_FILENAME + ".part")
    part.unlink(missing_ok=True)
    src = sqlite3.connect(_uri(db_path, "ro"), uri=True, timeout=5.0)
    try:
        dst = sqlite3.connect(part)
        try:
            # pages=-1: one step, one read transaction, one snapshot. Stepwise copying would restart
            # whenever the bot commits and could starve under a steady write load.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE")  # a backup should be one self-contained file
        finally:
            dst.close()
    finally:
        src.close()
    _fsync_file(part)
    result_text, version, referenced = _check_db(part)
    if result_text != "ok":
        raise BackupError(f"backup copy failed integrity_check: {result_text}")
    os.replace(part, dest_db)

    source_files, dest_files = FileStore(data_dir), FileStore(dest_dir)
    result = BackupResult(dest_dir=str(dest_dir), created_at=started, schema_version=version)
    for rel in referenced:
        src_path = source_files.absolute(rel)
        try:
            size = src_path.stat().st_size
        except FileNotFoundError:
            log.warning("backup: %s is referenced but missing from %s", rel, data_dir)
            result.missing.append(rel)
            continue
        target = dest_files.absolute(rel)
        if not (target.is_file() and target.stat().st_size == size):
            dest_files.import_file(src_path, rel)
            result.copied += 1
        result.files.append({"path": rel, "size": size})

    _copy_keys(data_dir / KEYS_DIR, dest_dir / KEYS_DIR)
    body = {"format": FORMAT, "db": DB_FILENAME, **asdict(result)}
    del body["dest_dir"]
    tmp = dest_dir / (MANIFEST + ".part")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    _fsync_file(tmp)
    os.replace(tmp, manifest)
    log.info(
        "backup of %s: schema v%d, %d files (%d copied, %d missing), %.1f s",
        db_path, version, len(result.files), result.copied, len(result.missing), time.time() - started,
    )
    return result


def restore(
    backup_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    db_path: str | os.PathLike[str] | None = None,
) -> RestoreResult:
    """Restore a backup into `data_dir` (database at `db_path`, default `<data_dir>/bandmate.db`).

    Stop the bot first. Everything is verified before anything is touched; then the audio files are
    put in place, and only then the database, so the restored rows never point at missing files. Audio
    files already in `data_dir` that the backup does not know are left alone.
    """
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    target_db = Path(db_path) if db_path is not None else data_dir / DB_FILENAME
    try:
        manifest = json.loads((backup_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{backup_dir} has no {MANIFEST}: not a backup, or an interrupted one") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unsupported backup format {manifest.get('format')!r}")
    backup_db = backup_dir / manifest["db"]
    result_text, _, _ = _check_db(backup_db)
    if result_text != "ok":
        raise BackupError(f"backup database failed integrity_check: {result_text}")
    backup_files = FileStore(backup_dir)
    for entry in manifest["files"]:
        path = backup_files.absolute(str(entry["path"]))
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise BackupError(f"backup file {entry['path']} is missing or has the wrong size")

    data_files = FileStore(data_dir)
    for entry in manifest["files"]:
        data_files.import_file(backup_files.absolute(str(entry["path"])), str(entry["path"]))
    _copy_keys(backup_dir / KEYS_DIR, data_dir / KEYS_DIR)

    target_db.parent.mkdir(parents=True, exist_ok=True)
    part = target_db.with_name(target_db.name + ".part")
    shutil.copyfile(backup_db, part)
    _fsync_file(part)
    # A -wal left by the old database would be replayed onto the restored file and corrupt it.
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(target_db) + suffix).unlink(missing_ok=True)
    os.replace(part, target_db)
    log.info("restored %s into %s (%d files)", backup_dir, target_db, len(manifest["files"]))
    return RestoreResult(db_path=str(target_db), files=len(manifest["files"]))

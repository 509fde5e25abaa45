"""Audio files under the data directory, written so that no reader or row ever sees a partial file.

Every write goes to a temporary name in the destination's own directory, is fsynced, then `os.replace`d
onto the final name (atomic on POSIX within one filesystem), and the directory is fsynced so the rename
itself is durable. The order callers must keep: write the file first, then commit the row that points at
it; a crash between the two leaves an unreferenced file, never a row pointing at nothing.

Paths stored in the database are POSIX paths relative to the data directory (`audio/ab/abcd1234.mp3`),
so the data directory can be moved or restored elsewhere.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from generation.atomic import TEMP_PREFIX, fsync_dir, write_atomic_with

log = logging.getLogger(__name__)

AUDIO_DIR = "audio"
STAGING_DIR = "tmp"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COPY_CHUNK = 1 << 20


class FileStore:
    """Files of one data directory. Methods are blocking; call them via `asyncio.to_thread` from async code."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        (self.root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / STAGING_DIR).mkdir(parents=True, exist_ok=True)

    def path_for(self, track_id: str, ext: str) -> str:
        """Relative path for a track's file: `audio/<first two chars>/<track_id>.<ext>`.

        Sharded by id prefix so no single directory grows to hundreds of thousands of entries.
        """
        ext = ext.lstrip(".")
        if not _SAFE_NAME.match(track_id) or not re.fullmatch(r"[A-Za-z0-9]+", ext):
            raise ValueError(f"unsafe track id or extension: {track_id!r}, {ext!r}")
        return f"{AUDIO_DIR}/{track_id[:2].lower()}/{track_id}.{ext}"

    def absolute(self, rel: str) -> Path:
        """Absolute path of a stored relative path; refuses anything that would leave the data directory."""
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
            raise ValueError(f"not a path inside the data directory: {rel!r}")
        path = self.root.joinpath(*pure.parts)
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"not a path inside the data directory: {rel!r}")
        return path

    def exists(self, rel: str) -> bool:
        return self.absolute(rel).is_file()

    def tmp_dir(self) -> Path:
        """Staging directory for renders in progress (same filesystem as the store, so imports can rename).

        Contents are scratch: `sweep_temp()` deletes what is left there after a crash.
        """
        path = self.root / STAGING_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _atomic_write(self, rel: str, fill: Callable[[BinaryIO], None]) -> Path:
        dest = self.absolute(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic_with(dest, fill)

    def write_bytes(self, rel: str, data: bytes | bytearray | memoryview) -> Path:
        """Atomically create or replace `rel` with `data`; returns the absolute path."""
        return self._atomic_write(rel, lambda f: f.write(data))

    def import_file(self, src: str | os.PathLike[str], rel: str, *, move: bool = False) -> Path:
        """Atomically place a copy of `src` at `rel` (with `move=True`, rename it there and drop `src`).

        A move from `tmp_dir()` is a single rename after fsyncing the source; across filesystems it
        falls back to copy-then-replace.
        """
        src = Path(src)
        if move:
            dest = self.absolute(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            try:
                os.replace(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                fsync_dir(dest.parent)
                return dest
        with open(src, "rb") as source:
            dest = self._atomic_write(rel, lambda f: shutil.copyfileobj(source, f, _COPY_CHUNK))
        if move:
            src.unlink()
        return dest

    def remove(self, rel: str) -> bool:
        """Delete a stored file; False if it was already gone."""
        path = self.absolute(rel)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep_temp(self, older_than_s: float = 0.0) -> int:
        """Delete leftovers of interrupted writes and renders; returns how many entries were removed.

        Call at start-up (default: everything) or periodically with `older_than_s` larger than the
        longest render, so staging files still in use are kept.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        candidates: list[Path] = list((self.root / AUDIO_DIR).rglob(f"{TEMP_PREFIX}*"))
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            candidates.extend(staging.iterdir())
        for path in candidates:
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d leftover temporary file(s) under %s", removed, self.root)
        return removed

"""A worker's scratch folder in the temp directory, and the sweep of folders that dead workers left there.

A SIGKILLed worker cannot clean up, so every scratch folder names its owner in `owner.pid` (host and pid); a
starting worker removes the folders whose owner on this host is gone. A folder without that file (written by an
older worker, or killed before writing it) goes once it is older than STALE_AFTER_S.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

PREFIX = "bandmate-worker-"
OWNER_FILE = "owner.pid"
STALE_AFTER_S = 24 * 3600.0


def make_scratch_dir(base: str | os.PathLike[str] | None = None) -> Path:
    """A new scratch folder that says who owns it."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    (path / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stale(folder: Path, now: float) -> bool:
    try:
        host, pid = (folder / OWNER_FILE).read_text().split()
    except FileNotFoundError:
        return now - folder.stat().st_mtime > STALE_AFTER_S
    except ValueError:  # unreadable owner: judge by age
        return now - folder.stat().st_mtime > STALE_AFTER_S
    if host != socket.gethostname():
        return False  # a shared temp directory: another machine's worker, not ours to judge
    return int(pid) != os.getpid() and not _alive(int(pid))


def sweep_stale_scratch(base: str | os.PathLike[str] | None = None) -> int:
    """Remove the scratch folders of workers that are gone; returns how many went."""
    root = Path(base or tempfile.gettempdir())
    now, removed = time.time(), 0
    for folder in root.glob(f"{PREFIX}*"):
        try:
            if folder.is_dir() and not folder.is_symlink() and _stale(folder, now):
                shutil.rmtree(folder)
                removed += 1
        except OSError as error:  # another worker sweeping at the same moment, or not ours to remove
            log.debug("could not sweep %s: %s", folder, error)
    if removed:
        log.info("removed %d scratch folders left by stopped workers", removed)
    return removed


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ScratchStore:
    """A worker's local MediaStore: renders land here, are read back into the result entry, then deleted."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, track_id: str, ext: str) -> str:
        if not _SAFE.match(track_id) or not re.fullmatch(r"[A-Za-z0-9]+", ext):
            raise ValueError(f"unsafe track id or extension: {track_id!r}, {ext!r}")
        return f"{track_id}.{ext}"

    def absolute(self, rel: str) -> Path:
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
            raise ValueError(f"not a scratch path: {rel!r}")
        return self.root.joinpath(*pure.parts)

    def remove(self, rel: str) -> None:
        try:
            self.absolute(rel).unlink()
        except FileNotFoundError:
            pass

"""The one atomic file writer: readers see the old file or the whole new one, never a part. A leaf module, so the
renderers, the waveform and the file store all write through it and every leftover has one name pattern
(`TEMP_PREFIX`), which `storage.files.FileStore.sweep_temp` removes at start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported here (e.g. Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic_with(path: Path | str, fill: Callable[[BinaryIO], None], *, mode: int = 0o644) -> Path:
    """`fill` writes the content into a temporary file beside `path` (same filesystem, so the rename is atomic);
    it is fsynced, renamed over `path`, and removed if anything fails."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".part")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; these files are served to others
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def write_atomic(path: Path | str, data: bytes, *, mode: int = 0o644) -> Path:
    return write_atomic_with(path, lambda handle: handle.write(data), mode=mode)

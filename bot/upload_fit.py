"""A result's files within a transport's upload limit: re-encoded lower from the masters first, split over
several messages only when that is not enough. Blocking (ffmpeg): call it off the event loop."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from bot.messages import FileItem, FittedFiles
from generation.fitting import refit_track

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MULTIPART_SHARE = 0.97  # what is left of a limit after a multipart body's own overhead


def fit_files(items: list[FileItem], limit: int, flac_for: dict[str, Path]) -> FittedFiles:
    limit = limit or DEFAULT_UPLOAD_LIMIT
    budget = int(limit * MULTIPART_SHARE)
    scratch = None
    sizes = {item.path: item.path.stat().st_size for item in items}
    paths = {item.path: item.path for item in items}
    if sum(sizes.values()) > budget:
        mp3s = [item for item in items if item.track_id and item.path.suffix == ".mp3"]
        others = sum(size for path, size in sizes.items() if path not in {m.path for m in mp3s})
        share = max(1, (budget - others) // max(1, len(mp3s)))
        scratch = tempfile.TemporaryDirectory(prefix="bandmate-fit-")
        for item in mp3s:
            out = Path(scratch.name) / item.path.name
            fitted = refit_track(item.path, flac_for[item.track_id], share, out) \
                or refit_track(item.path, flac_for[item.track_id], budget, out)
            if fitted is not None:
                paths[item.path] = fitted
                sizes[item.path] = fitted.stat().st_size
            log.info("fitted %s to %d bytes for a %d byte limit", item.path.name, sizes[item.path], limit)
    batches: list[list[FileItem]] = [[]]
    used = 0
    for item in items:
        size = sizes[item.path]
        if size > budget:
            log.warning("%s (%d bytes) does not fit the %d byte upload limit; left out", item.path.name, size, limit)
            continue
        if used + size > budget and batches[-1]:
            batches.append([])
            used = 0
        batches[-1].append(dataclasses.replace(item, path=paths[item.path]))
        used += size
    return FittedFiles(batches=batches, scratch=scratch)

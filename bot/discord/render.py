"""Turning the core's neutral messages into Discord messages: escaping, buttons, files within the upload limit."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import discord

from bot.messages import Button, ButtonKind, FileItem
from generation.fitting import refit_track

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
CUSTOM_ID_PREFIX = "bandmate"
STYLES = {
    ButtonKind.VOTE: discord.ButtonStyle.primary,
    ButtonKind.VARIATIONS: discord.ButtonStyle.secondary,
    ButtonKind.EXTEND: discord.ButtonStyle.secondary,
    ButtonKind.MORE_LIKE: discord.ButtonStyle.success,
}


def escape(text: str) -> str:
    """User text shown back: no markdown tricks, and no mention can resolve even if AllowedMentions were lost."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def custom_id(kind: ButtonKind, track_id: str) -> str:
    return f"{CUSTOM_ID_PREFIX}:{kind.value}:{track_id}"


def build_view(buttons: list[Button]) -> discord.ui.View | None:
    from bot.discord.buttons import TrackButton

    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for button in buttons:
        view.add_item(TrackButton(button.kind, button.target, label=button.label, emoji=button.emoji, row=button.row))
    return view


@dataclass
class PreparedFiles:
    batches: list[list[discord.File]]  # one list per message; the first goes with the text and buttons
    scratch: tempfile.TemporaryDirectory | None = None

    def close(self) -> None:
        for batch in self.batches:
            for f in batch:
                f.close()
        if self.scratch is not None:
            self.scratch.cleanup()


def prepare_files(items: list[FileItem], limit: int, flac_for: dict[str, Path]) -> PreparedFiles:
    """Files for one or more messages, each message within `limit` bytes.

    MP3s are re-encoded at a lower bitrate from their masters first; only when that is not enough are they split
    across messages, one per message.
    """
    limit = limit or DEFAULT_UPLOAD_LIMIT
    budget = int(limit * 0.97)  # multipart overhead
    scratch = None
    sizes = {item.path: item.path.stat().st_size for item in items}
    paths = {item.path: item.path for item in items}
    if sum(sizes.values()) > budget:
        mp3s = [item for item in items if item.track_id and item.path.suffix == ".mp3"]
        others = sum(size for path, size in sizes.items() if path not in {m.path for m in mp3s})
        share = max(1, (budget - others) // max(1, len(mp3s)))
        scratch = tempfile.TemporaryDirectory(prefix="bandmate-fit-")
        for item in mp3s:
            fitted = refit_track(item.path, flac_for[item.track_id], share, Path(scratch.name) / item.path.name)
            if fitted is None:
                fitted = refit_track(item.path, flac_for[item.track_id], budget, Path(scratch.name) / item.path.name)
            if fitted is not None:
                paths[item.path] = fitted
                sizes[item.path] = fitted.stat().st_size
            log.info("fitted %s to %d bytes for a %d byte limit", item.path.name, sizes[item.path], limit)
    batches: list[list[discord.File]] = [[]]
    used = 0
    for item in items:
        size = sizes[item.path]
        if size > budget:
            log.warning("%s (%d bytes) does not fit the %d byte upload limit; left out", item.path.name, size, limit)
            continue
        if used + size > budget and batches[-1]:
            batches.append([])
            used = 0
        batches[-1].append(discord.File(paths[item.path], filename=item.filename, description=item.description[:1000]
                                        or None))
        used += size
    return PreparedFiles(batches=batches, scratch=scratch)

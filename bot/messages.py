"""Transport-neutral messages: what the core wants shown; each transport renders it its own way."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class ButtonKind(str, Enum):
    VOTE = "vote"
    VARIATIONS = "var"
    EXTEND = "ext"
    MORE_LIKE = "like"
    STEMS = "stems"  # 🎚 split a track into stems (ACE-Step)


@dataclass(frozen=True)
class Button:
    kind: ButtonKind
    target: str  # a track id (vote: the track voted for)
    label: str
    emoji: str | None = None
    row: int = 0


@dataclass(frozen=True)
class FileItem:
    path: Path
    filename: str
    description: str = ""
    track_id: str | None = None  # MP3s: the track, so a transport can re-encode it to fit an upload limit


@dataclass
class OutgoingMessage:
    text: str  # markup (bot/text.py): structure and people's words marked, rendered by each transport
    files: list[FileItem] = field(default_factory=list)
    buttons: list[Button] = field(default_factory=list)
    ephemeral: bool = False
    thread_name: str | None = None  # plain text: a transport shows it literally
    job_id: str | None = None
    requester_id: str | None = None  # whom a result is for (a transport may ping them where nothing else would)
    thread_text: str | None = None  # markup: the first message of the result's thread (None: the usual invite)


@dataclass
class FittedFiles:
    """A result's files within an upload limit: one list per message (the first goes with the text and buttons),
    and a scratch folder of re-encoded copies to remove after sending."""

    batches: list[list[FileItem]]
    scratch: object | None = None

    def close(self) -> None:
        cleanup = getattr(self.scratch, "cleanup", None)
        if cleanup is not None:
            cleanup()

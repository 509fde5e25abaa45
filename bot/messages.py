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
    text: str
    files: list[FileItem] = field(default_factory=list)
    buttons: list[Button] = field(default_factory=list)
    ephemeral: bool = False
    # Raw user text inside `text` that a transport must escape (markdown, mentions) before showing.
    thread_name: str | None = None
    job_id: str | None = None

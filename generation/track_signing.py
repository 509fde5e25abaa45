"""Signs a finished job's files (MP3 and FLAC master) with Content Credentials, and re-signs refit copies.

Why a module of its own: the same step follows a local render (generation/runner.py) and a worker's render
received over Redis (generation/remote/executor.py signs on receipt, so the private key never leaves the bot's
machine and the parents' signed files, which live in the bot's file store, can be embedded as ingredients).

What goes into a manifest comes from the job and its track rows only: the model, its licence, the operation, the
track id, the time, the parent track's signed MP3 as an ingredient, and the prompt only when the job says the server
allows it (`JobSpec.manifest_prompt`). Jobs carry a user id; it is never read here.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Callable

from generation.credentials import ContentCredentials, Credential, headroom_bytes
from generation.jobs import Job, JobKind, TrackRecord
from generation.runner import MediaStore

log = logging.getLogger(__name__)


def _license_of(model_id: str) -> str:
    from generation.models import model_info

    return model_info(model_id).license


def operation_of(job: Job | None, track: TrackRecord) -> str:
    """The manifest's operation: a song is its own operation (its JobKind), the rest are the job's Operation."""
    if job is not None and job.kind is JobKind.SONG:
        return "song"
    return str((job.operation if job is not None else track.operation).value)


class TrackSigner:
    """`sign_tracks(job, tracks)` after a render; `sign_copy(track, job, path)` after a refit re-encode."""

    def __init__(self, credentials: ContentCredentials, media: MediaStore, *,
                 license_for: Callable[[str], str] = _license_of) -> None:
        self.credentials = credentials
        self.media = media
        self.license_for = license_for

    def parent_file(self, parent_track_id: str | None) -> Path | None:
        """The parent track's stored MP3 (track files sit at deterministic paths), if it is still there."""
        if not parent_track_id:
            return None
        try:
            path = self.media.absolute(self.media.path_for(parent_track_id, "mp3"))
        except ValueError:
            return None
        return path if path.is_file() else None

    def credential_for(self, job: Job | None, track: TrackRecord) -> Credential:
        parent = self.parent_file(track.parent_track_id)
        return Credential(
            track_id=track.id, model_id=track.model, model_license=self.license_for(track.model),
            operation=operation_of(job, track),
            created_at=datetime.datetime.fromtimestamp(track.created_at, datetime.timezone.utc),
            prompt=track.prompt or None, parent_files=(parent,) if parent is not None else (),
        )

    @staticmethod
    def include_prompt(job: Job | None) -> bool:
        return job is None or job.spec.manifest_prompt

    def sign_tracks(self, job: Job, tracks: list[TrackRecord]) -> None:
        """Sign every delivered MP3 and FLAC master of `tracks` (a chain's helper window has neither: skipped)."""
        for track in tracks:
            if not track.mp3:
                continue
            credential = self.credential_for(job, track)
            for rel in (track.mp3, track.flac):
                if rel:
                    self.credentials.sign(self.media.absolute(rel), credential,
                                          include_prompt=self.include_prompt(job))

    def headroom(self, track: TrackRecord) -> int:
        """Bytes to keep free under an upload limit for the manifest a refit copy of `track` gets."""
        return headroom_bytes(self.credential_for(None, track))

    def sign_copy(self, track: TrackRecord, job: Job | None, path: Path) -> None:
        """A re-encoded copy of `track` (the upload refit) gets the track's own manifest again."""
        self.credentials.sign(path, self.credential_for(job, track), include_prompt=self.include_prompt(job))

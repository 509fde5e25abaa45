"""Song words are the person's own writing: `forget` erases them (and "sound like this" reference uploads) even
when their tracks stay playable anonymously. Called inside `PrivacyStore.forget`'s transaction."""

from __future__ import annotations

import json
from typing import Any

from generation.spec import JobSpec

# Track params that hold what the person wrote; sections carry only names and times, which are kept.
PERSONAL_PARAMS = ("lyrics",)


def _load(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def erase_song_words(db, job_ids: list[str], track_ids: list[str]) -> list[str]:
    """Lyrics removed from the jobs' specs and the tracks' params; returns reference uploads to delete."""
    files: list[str] = []
    for job_id in job_ids:
        row = db.execute("SELECT spec FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            continue
        spec = JobSpec.from_dict(_load(row[0]))
        files.extend(spec.uploads())
        if spec.lyrics or spec.reference_audio:
            spec.lyrics = "" if spec.lyrics is not None else None
            spec.reference_audio = None
            db.execute("UPDATE jobs SET spec = ? WHERE id = ?", [json.dumps(spec.to_dict()), job_id])
    for track_id in track_ids:
        row = db.execute("SELECT params FROM tracks WHERE id = ?", [track_id]).fetchone()
        params = _load(row[0]) if row is not None else {}
        if any(key in params for key in PERSONAL_PARAMS):
            for key in PERSONAL_PARAMS:
                params.pop(key, None)
            db.execute("UPDATE tracks SET params = ? WHERE id = ?", [json.dumps(params), track_id])
    return files

"""Song words are the person's own writing: `forget` erases them (and "sound like this" reference uploads) even
when their tracks stay playable anonymously, and also where they were copied: a cover or a replaced section that
someone else made of their song carries its words, and so does anything made from that in turn. Called inside
`PrivacyStore.forget`'s transaction."""

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


def derived_from(db, track_ids: list[str]) -> tuple[list[str], list[str]]:
    """(job ids, track ids) of everything made from these tracks, at any depth (a replace of a cover of ...)."""
    jobs: list[str] = []
    tracks: list[str] = []
    seen = set(track_ids)
    frontier = list(track_ids)
    while frontier:
        marks = ", ".join("?" for _ in frontier)
        new_jobs = [r[0] for r in db.execute(
            f"SELECT id FROM jobs WHERE parent_track_id IN ({marks})", frontier).fetchall()]
        new_tracks = [r[0] for r in db.execute(
            f"SELECT id FROM tracks WHERE parent_track_id IN ({marks})", frontier).fetchall()]
        jobs.extend(j for j in new_jobs if j not in jobs)
        frontier = [t for t in new_tracks if t not in seen]
        seen.update(frontier)
        tracks.extend(frontier)
    return jobs, tracks


def erase_copied_words(db, track_ids: list[str], own_jobs: list[str]) -> int:
    """Lyrics removed from other people's jobs and tracks made from these tracks (the audio stays theirs);
    returns how many of their requests (jobs) lost words. Their own uploads are not touched."""
    jobs, tracks = derived_from(db, track_ids)
    changed: set[str] = set()
    for job_id in jobs:
        if job_id in own_jobs:
            continue
        row = db.execute("SELECT spec FROM jobs WHERE id = ?", [job_id]).fetchone()
        spec = JobSpec.from_dict(_load(row[0] if row else None))
        if spec.lyrics:
            spec.lyrics = ""
            db.execute("UPDATE jobs SET spec = ? WHERE id = ?", [json.dumps(spec.to_dict()), job_id])
            changed.add(job_id)
    for track_id in tracks:
        row = db.execute("SELECT params, job_id FROM tracks WHERE id = ?", [track_id]).fetchone()
        params = _load(row[0] if row else None)
        if any(key in params for key in PERSONAL_PARAMS):
            for key in PERSONAL_PARAMS:
                params.pop(key, None)
            db.execute("UPDATE tracks SET params = ? WHERE id = ?", [json.dumps(params), track_id])
            changed.add(row[1])
    return len(changed)

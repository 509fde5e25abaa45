"""What ACE-Step results add to their messages: a song's sections with their times, its lyrics in the thread,
the 🎚 stems button, and a stems result as one MP3 per stem. Markup, like bot/views.py."""

from __future__ import annotations

from typing import Callable

from bot.messages import Button, ButtonKind, FileItem, OutgoingMessage
from bot.text import user
from bot.words import short
from generation.jobs import Job, JobKind, TrackRecord
from generation.lyrics import describe_sections, format_time

THREAD_LYRICS_CHARS = 1500  # the thread's first message stays well inside a message's 2000 characters
STEM_EMOJI = "🎚"
SONG_REPLIES = ("Reply here to change a part: `redo the bridge`, `replace 0:40-0:55 with a guitar solo`, "
                "`change the second chorus to: <new lines>`, `make the intro calmer`, or add an instrument: "
                "`add a guitar part` (`help` for more)")


def is_ace_result(job: Job) -> bool:
    """A result the ACE-Step model made (its spec carries lyrics, even "" for an instrumental, or an ACE kind)."""
    return job.spec.lyrics is not None or job.kind in (JobKind.REPAINT, JobKind.COVER, JobKind.ADD_PART)


def _sections(track: TrackRecord):
    from bot.vocals import track_sections

    return track_sections(track)


def detail_lines(job: Job, first: TrackRecord | None) -> list[str]:
    """The result's extra lines: what was replaced, and the song's sections with their times."""
    lines = []
    replaced = first.params.get("replace") if first is not None else None
    if isinstance(replaced, dict):
        lines.append(f"Replaced {format_time(replaced['start_s'])}-{format_time(replaced['end_s'])}")
    if first is not None and first.params.get("lyrics"):
        sections = _sections(first)
        if sections:
            lines.append("Sections: " + user(describe_sections(sections)))
    elif job.spec.lyrics == "" and job.kind is JobKind.TEXT:
        lines.append("Instrumental")
    return lines


def stems_button(job: Job, track: TrackRecord, label: str, row: int, splittable: bool | None = None) -> list[Button]:
    """🎚 on a result: wherever a model offered here splits stems (`splittable`), else on ACE-Step's own."""
    show = is_ace_result(job) if splittable is None else splittable
    return [Button(ButtonKind.STEMS, track.id, label, STEM_EMOJI, row=row)] if show else []


def thread_text(job: Job, first: TrackRecord | None, invite: str) -> str | None:
    """The thread's first message: for a song, how to change its parts, its sections and its lyrics."""
    if first is None or not is_ace_result(job):
        return None
    parts = [SONG_REPLIES]
    sections = _sections(first) if first.params.get("lyrics") else []
    if sections:
        parts.append("**Sections:** " + user(describe_sections(sections)))
    lyrics = first.params.get("lyrics") or ""
    if lyrics:
        shown = lyrics if len(lyrics) <= THREAD_LYRICS_CHARS else lyrics[:THREAD_LYRICS_CHARS].rstrip() + " …"
        parts.append("**Lyrics:**\n" + user(shown))
    return "\n".join(parts)


def stems_message(job: Job, tracks: list[TrackRecord], absolute: Callable[[str], object]) -> OutgoingMessage:
    """A stems result: one MP3 per stem, named for it."""
    names = [str(t.params.get("stem", f"#{t.variation + 1}")) for t in tracks]
    text = (f"{STEM_EMOJI} **Stems** of {user(short(job.prompt, 120)) if job.prompt else 'your audio'}\n"
            + " · ".join(names))
    files = [FileItem(absolute(t.mp3), f"bandmate-{t.id}-{name}.mp3", f"{name} stem", track_id=t.id)
             for t, name in zip(tracks, names)]
    return OutgoingMessage(text=text, files=files, job_id=job.id, thread_name=short(f"stems: {job.prompt}", 90),
                           requester_id=job.user_id)

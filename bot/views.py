"""Jobs become messages: status lines, results with their buttons and files, the leaderboard, help.

Everything here returns markup (bot/text.py): the words and their structure, with people's text marked as theirs.
How it looks (Discord Markdown, terminal text) and how long it may be is the transport's business.
"""

from __future__ import annotations

from typing import Callable, Iterable

from bot import vocal_views
from bot.grammar import HELP_TEXT
from bot.messages import Button, ButtonKind, FileItem, OutgoingMessage
from bot.text import user
from bot.words import human_seconds, progress_bar, short
from generation.events import EventKind, JobEvent
from generation.jobs import Job, JobKind, JobState, Operation, TrackRecord

_DOING = {Operation.CONTINUE: "Continuing", Operation.EXTEND: "Extending", Operation.VARIATION: "New take",
          Operation.MORE_LIKE: "More like this", Operation.REMIX: "Remixing", Operation.REPLACE: "Replacing a part",
          Operation.COVER: "Covering", Operation.STEMS: "Splitting into stems", Operation.ADD_PART: "Adding a part"}
_DONE = {Operation.CONTINUE: "continued", Operation.EXTEND: "extended", Operation.VARIATION: "new take",
         Operation.MORE_LIKE: "more like this", Operation.REMIX: "remix", Operation.REPLACE: "part replaced",
         Operation.COVER: "cover", Operation.ADD_PART: "part added"}


def model_name(model_id: str) -> str:
    return model_id.rstrip("/").split("/")[-1]


def _where(position: int | None) -> str:
    return "up next" if position in (None, 1) else f"#{position} in line"


RATE_NOTE = "the rate limit here: a few at once, then a few a minute"


def held_s(job: Job, now: float | None) -> float | None:
    """Seconds until a job held back by its user's rate limit may start (None: not held)."""
    if now is None or job.spec.not_before is None or job.spec.not_before - now < 0.5:
        return None
    return job.spec.not_before - now


def queued_text(job: Job, position: int | None, eta_s: float | None, now: float | None = None) -> str:
    held = held_s(job, now)
    if held is not None:  # over the rate limit: queued all the same, to start at its time
        return (f"{_DOING.get(job.operation, 'Composing')}: {user(job.prompt)} — queued, starts in "
                f"{human_seconds(held)} ({RATE_NOTE}).")
    eta = f", ready in about {human_seconds(eta_s)}" if eta_s else ""
    return f"{_DOING.get(job.operation, 'Composing')}: {user(job.prompt)} — {_where(position)}{eta}."


def result_link(guild_id: str | None, channel_id: str, message_id: str) -> str:
    """A link that opens a posted message (guild messages under the guild, DMs under @me)."""
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def delivered_text(job: Job, link: str) -> str:
    """A status message's last word when the result went out."""
    return f"🎼 **{user(short(job.prompt, 80))}**\n✅ delivered: {link}"


def failed_text(job: Job) -> str:
    """A status message's last word when the job failed or was cancelled."""
    head = f"🎼 **{user(short(job.prompt, 80))}**"
    if job.state is JobState.CANCELLED:
        return f"{head}\n🚫 cancelled"
    return f"{head}\n❌ {job.error or 'failed'}"


def status_text(job: Job, event: JobEvent, now: float | None = None) -> str:
    head = f"🎼 **{user(short(job.prompt, 80))}**"
    if event.kind is EventKind.PROGRESS and event.total:
        left = f" · about {human_seconds(event.eta_s)} left" if event.eta_s else ""
        part = f" · {event.message}" if event.message else ""  # a long extend: "window 2 of 5"
        return f"{head}\n`{progress_bar(event.step, event.total)}` {100 * event.step // event.total}%{part}{left}"
    held = held_s(job, now)
    if event.kind in (EventKind.QUEUED, EventKind.POSITION) and held is not None:
        return f"{head}\n⏳ queued, starts in {human_seconds(held)} ({RATE_NOTE})"
    if event.kind in (EventKind.QUEUED, EventKind.POSITION):
        eta = f" · ready in about {human_seconds(event.eta_s)}" if event.eta_s else ""
        note = f"\n{event.message}" if event.message else ""
        return f"{head}\n⏳ {_where(event.position)}{eta}{note}"
    if event.kind is EventKind.STARTED:
        return f"{head}\n`{progress_bar(0, 1)}` starting…"
    if event.kind is EventKind.DONE:
        return f"{head}\n✅ done — posting it now"
    if event.kind is EventKind.FAILED:
        return f"{head}\n❌ {event.message or 'failed'}"
    if event.kind is EventKind.CANCELLED:
        return f"{head}\n🚫 cancelled"
    if event.kind is EventKind.NOTICE:  # a fault meanwhile: where the job was, and what happens now
        where = (f"`{progress_bar(event.step, event.total)}` {100 * event.step // event.total}%" if event.total
                 else f"⏳ {_where(event.position)}")
        return f"{head}\n{where}\n⚠️ {event.message or 'please wait'}"
    if event.kind is EventKind.REQUEUED:
        return f"{head}\n⏸ {event.message or 'waiting for a restart'}"
    return head


def failure_text(job: Job) -> str:
    return f"❌ **{user(short(job.prompt, 80))}** — {job.error or job.state.value}"


def result_message(job: Job, tracks: list[TrackRecord], absolute: Callable[[str], object],
                   tally: dict[str, int] | None = None, winner: str | None = None,
                   splittable: bool | None = None) -> OutgoingMessage:
    """The posted result: what was made, its files (the MP3s and one waveform) and its buttons. `splittable`: a
    model offered here makes stems, so each track gets 🎚 (None: only ACE-Step's own results)."""
    if job.state is not JobState.DONE:
        return OutgoingMessage(text=failure_text(job), job_id=job.id)
    if job.kind is JobKind.STEMS:
        return vocal_views.stems_message(job, tracks, absolute)
    tally = tally or {}
    first = tracks[0] if tracks else None
    lines = [f"🎵 **{user(short(job.prompt, 150))}**"]
    details = [f"{first.duration_s:.1f} s" if first else "", f"seed {job.seed}", model_name(job.model)]
    if job.operation in _DONE:
        details.insert(0, _DONE[job.operation])
    lines.append(" · ".join(d for d in details if d))
    if job.spec.blended:
        lines.append("Blended in your taste: " + ", ".join(user(t) for t in job.spec.blended))
    if job.spec.sections:
        lines.append("Sections: " + ", ".join(f"{user(n)} {sec:g}s" for n, sec in job.spec.sections))
    lines += vocal_views.detail_lines(job, first)
    if winner is not None:
        number = next((i + 1 for i, t in enumerate(tracks) if t.id == winner), None)
        votes = tally.get(winner, 0)
        counted = f"{votes} vote{'s' if votes != 1 else ''}"
        lines.append(f"🏆 Voting closed: #{number} won with {counted}." if number and len(tracks) > 1
                     else f"🏆 Voting closed with {counted}.")
    files, buttons = [], []
    many = len(tracks) > 1
    for i, track in enumerate(tracks):
        n, row = i + 1, (i if many else 0)
        files.append(FileItem(absolute(track.mp3), f"bandmate-{track.id}.mp3", f"{short(job.prompt, 80)} #{n}",
                              track_id=track.id))
        votes = tally.get(track.id, 0)
        label = (f"#{n}" if many else "Vote") + (f" · {votes}" if votes else "")
        buttons.append(Button(ButtonKind.VOTE, track.id, label, "🏆" if winner == track.id else "🗳", row=row))
        buttons.append(Button(ButtonKind.EXTEND, track.id, f"Extend #{n}" if many else "Extend", "➕", row=row))
        buttons.append(Button(ButtonKind.MORE_LIKE, track.id, f"Like #{n}" if many else "More like this", "❤",
                              row=row))
        buttons += vocal_views.stems_button(job, track, f"Stems #{n}" if many else "Stems", row, splittable)
    if first is not None:
        buttons.append(Button(ButtonKind.VARIATIONS, first.id, "Variations", "🔁", row=len(tracks) if many else 0))
        files.append(FileItem(absolute(first.png), f"bandmate-{first.id}.png", "waveform"))
    return OutgoingMessage(text="\n".join(lines), files=files, buttons=buttons, job_id=job.id,
                           thread_name=short(job.prompt, 90), requester_id=job.user_id,
                           thread_text=vocal_views.thread_text(job, first, THREAD_INVITE))


def top_message(rows: list[tuple[TrackRecord, int]], period: str) -> OutgoingMessage:
    if not rows:
        return OutgoingMessage(text="No votes yet" + (" this week." if period == "week" else "."), ephemeral=True)
    lines = ["🏆 **Top tracks this week**" if period == "week" else "🏆 **Top tracks of all time**"]
    buttons = []
    for i, (track, votes) in enumerate(rows, start=1):
        lines.append(f"{i}. **{user(short(track.prompt, 70))}** — {votes} vote{'s' if votes != 1 else ''} · "
                     f"`{track.id}`")
        if i <= 5:
            buttons += [Button(ButtonKind.EXTEND, track.id, f"Extend #{i}", "➕", row=i - 1),
                        Button(ButtonKind.MORE_LIKE, track.id, f"Like #{i}", "❤", row=i - 1)]
    return OutgoingMessage(text="\n".join(lines), buttons=buttons)


def help_text(models: Iterable[tuple[str, str]]) -> str:
    """The reply grammar, then each offered model with its licence."""
    lines = [HELP_TEXT, "**Models and their licences:**"]
    lines += [f"• `{model_name(model_id)}` — {licence}" for model_id, licence in models]
    return "\n".join(lines)


THREAD_INVITE = ("Reply here to carry on: `continue`, `extend 20s`, `make it jazzier`, `variations`… "
                 "(`help` for more)")
UNKNOWN_REPLY = "I didn't catch that. Try `continue`, `extend 20s`, `make it jazzier`, `variations` or `help`."

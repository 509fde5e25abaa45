"""The conversation core: the one door transports talk through. Requests become jobs (bot/planner.py), jobs become
messages (bot/views.py), and finished jobs go back to the transport that asked.

A transport (Discord, the console, the command line) registers with `connect` and implements `Transport`: post a
result and say where it went, post a failure, show events, announce a vote's winner. It never reaches storage or
the queue itself; everything it needs is a method here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from bot import views
from bot.grammar import HELP_TEXT, IntentKind, parse_reply
from bot.messages import FileItem, FittedFiles, OutgoingMessage
from bot.planner import ComposeOptions, CoreConfig, Plan, Planner
from bot.request import Refusal, Request, Requester, Upload, UploadInfo
from bot.text import user
from bot.upload_fit import fit_files
from bot.vocals import SongOptions, Vocals
from bot.words import human_seconds, short
from generation.events import EventKind, JobEvent
from bot.transport_signals import TransportSignals
from generation.jobs import Job, JobState, Operation, TrackRecord

__all__ = ["Bandmate", "ComposeOptions", "CoreConfig", "Refusal", "ReplyOutcome", "Request", "Requester",
           "SongOptions", "Transport", "Upload", "UploadInfo"]

log = logging.getLogger(__name__)

_REPLY_OPERATIONS = {
    IntentKind.CONTINUE: Operation.CONTINUE,
    IntentKind.EXTEND: Operation.EXTEND,
    IntentKind.VARIATIONS: Operation.VARIATION,
    IntentKind.EDIT: Operation.VARIATION,
    IntentKind.ADD_PART: Operation.VARIATION,  # no model here adds parts: "add strings" edits the prompt
    IntentKind.MORE_LIKE: Operation.MORE_LIKE,
}


class Transport(Protocol):
    """What the core needs from a transport. `name` is the `sink` of the delivery addresses it makes."""

    name: str

    async def post_result(self, job: Job, message: OutgoingMessage) -> None:
        """Post a finished job's result, and tell the core where it went as soon as it knows
        (`Bandmate.record_posted`, e.g. `discord:message:<id>`), so replies there find the job. Must be safe to
        repeat (a restart may resend)."""

    async def post_failure(self, job: Job, message: OutgoingMessage) -> None: ...

    def on_event(self, event: JobEvent) -> None:
        """A job's progress (every job's: ignore those you did not start)."""

    async def announce_winner(self, job: Job, message: OutgoingMessage, refs: list[str]) -> None:
        """A vote closed: `message` is the result with its winner marked; `refs` where the result was posted."""


@dataclass
class ReplyOutcome:
    text: str  # markup
    job: Job | None = None


@dataclass
class Voted:
    message: OutgoingMessage  # the result with its new tally on the buttons
    tally: dict[str, int]  # votes by track id


class _Sink:
    """The scheduler's delivery for one transport: the job becomes its result message, then the transport posts
    it and the core records where it went and opens the vote."""

    def __init__(self, core: "Bandmate", transport: Transport) -> None:
        self.core, self.transport = core, transport

    async def deliver(self, job: Job, tracks: list[TrackRecord]) -> None:
        core = self.core
        if job.state is not JobState.DONE:
            await self.transport.post_failure(job, views.result_message(job, tracks, core.files.absolute))
            return
        await self.transport.post_result(job, await core.result_message(job, tracks))
        if core.leaderboard is not None:
            window = await core.voting_window(job.guild_id)
            await core.leaderboard.open_window(job.id, job.guild_id, core.clock() + window)


class Bandmate:
    def __init__(self, *, planner: Planner, scheduler, store, links, files, leaderboard=None, fingerprints=None,
                 presets=None, server_settings=None, privacy=None, voting_window_s: float = 3600.0,
                 clock: Callable[[], float] = time.time, credentials=None) -> None:
        self.planner = planner
        self.config: CoreConfig = planner.config
        self.scheduler = scheduler
        self.store = store
        self.links = links
        self.files = files
        self.leaderboard = leaderboard
        self.fingerprints = fingerprints
        self.presets = presets
        self.server_settings = server_settings
        self.privacy = privacy
        self.voting_window_s = voting_window_s
        self.clock = clock
        self.credentials = credentials  # bot/verify.py CredentialService: /verify and re-signing refit copies
        self._transports: dict[str, Transport] = {}
        self.vocals = Vocals(planner)  # songs with lyrics, replacing parts, covers, stems (ACE-Step)
        self._unlisten: list[Callable[[], None]] = []
        self.signals = TransportSignals()  # connected? rate limited? for the operator's view (app/metrics.py)

    # -- transports ---------------------------------------------------------------------------------------

    async def connect(self, transport: Transport) -> None:
        """Deliver this transport's jobs to it (and what it has not yet received), and send it every event."""
        self._transports[transport.name] = transport
        self._unlisten.append(self.scheduler.listen(transport.on_event))
        await self.scheduler.add_sink(transport.name, _Sink(self, transport))

    def disconnect_all(self) -> None:
        for stop in self._unlisten:
            stop()
        self._unlisten.clear()

    # -- requests -----------------------------------------------------------------------------------------

    async def plan_compose(self, request: Request, opts: ComposeOptions, upload: UploadInfo | None = None) -> Plan:
        return await self.planner.plan_compose(request, opts, upload)

    async def plan_from_track(self, request: Request, track_id: str, operation: Operation, *,
                              seconds: float | None = None) -> Plan:
        return await self.planner.plan_from_track(request, track_id, operation, seconds=seconds)

    async def plan_extend_to(self, request: Request, track_id: str, total_s: float) -> Plan:
        return await self.planner.plan_extend_to(request, track_id, total_s)

    async def plan_remix(self, request: Request, upload: UploadInfo, style: str, *, duration_s: float | None = None,
                         seed: int | None = None) -> Plan:
        return await self.planner.plan_remix(request, upload, style, duration_s=duration_s, seed=seed)

    async def plan_song(self, request: Request, prompt: str, sections: str, *, seed: int | None = None,
                        chorus: str = "reuse") -> Plan:
        return await self.planner.plan_song(request, prompt, sections, seed=seed, chorus=chorus)

    async def submit(self, plan: Plan, upload: Upload | None = None) -> Job:
        if upload is not None and plan.job is not None and not plan.job.parent_track_id and self.credentials:
            # An upload this server's Bandmate made (remix or continue of a downloaded track) keeps its lineage.
            plan.job.parent_track_id = await self.credentials.own_track_id(upload)
        return await self.planner.submit(plan, upload)

    # ACE-Step: songs with lyrics, a part of a track replaced, covers, stems (bot/vocals.py).

    async def plan_lyric_song(self, request: Request, opts: SongOptions, reference: UploadInfo | None = None) -> Plan:
        return await self.vocals.plan_song(request, opts, reference)

    async def plan_replace(self, request: Request, track_id: str, text: str | None = None, *,
                           start_s: float | None = None, end_s: float | None = None, prompt: str | None = None,
                           lyrics: str | None = None) -> Plan:
        return await self.vocals.plan_replace(request, track_id, text, start_s=start_s, end_s=end_s, prompt=prompt,
                                              lyrics=lyrics)

    async def plan_replace_upload(self, request: Request, upload: UploadInfo, *, start_s: float, end_s: float,
                                  prompt: str = "", lyrics: str | None = None) -> Plan:
        return await self.vocals.plan_replace_upload(request, upload, start_s=start_s, end_s=end_s, prompt=prompt,
                                                     lyrics=lyrics)

    async def plan_cover(self, request: Request, style: str, *, track_id: str | None = None,
                         upload: UploadInfo | None = None, strength: float | None = None) -> Plan:
        return await self.vocals.plan_cover(request, style, track_id=track_id, upload=upload, strength=strength)

    async def plan_stems(self, request: Request, *, track_id: str | None = None,
                         upload: UploadInfo | None = None) -> Plan:
        return await self.vocals.plan_stems(request, track_id=track_id, upload=upload)

    # One call each, for transports that know the delivery up front (the console, the command line, tests).

    async def compose(self, request: Request, opts: ComposeOptions, upload: Upload | None = None) -> Job:
        info = UploadInfo(upload.filename, len(upload.data)) if upload is not None else None
        return await self.submit(await self.plan_compose(request, opts, info), upload)

    async def from_track(self, request: Request, track_id: str, operation: Operation, *,
                         seconds: float | None = None) -> Job:
        return await self.submit(await self.plan_from_track(request, track_id, operation, seconds=seconds))

    async def extend_to(self, request: Request, track_id: str, total_s: float) -> Job:
        return await self.submit(await self.plan_extend_to(request, track_id, total_s))

    async def remix(self, request: Request, upload: Upload, style: str, *, duration_s: float | None = None,
                    seed: int | None = None) -> Job:
        plan = await self.plan_remix(request, UploadInfo(upload.filename, len(upload.data)), style,
                                     duration_s=duration_s, seed=seed)
        return await self.submit(plan, upload)

    async def song(self, request: Request, prompt: str, sections: str, *, seed: int | None = None,
                   chorus: str = "reuse") -> Job:
        return await self.submit(await self.plan_song(request, prompt, sections, seed=seed, chorus=chorus))

    async def reply(self, request: Request, job_id: str, text: str) -> ReplyOutcome:
        """A reply in a result's thread (or to a result message) becomes a request, or a short hint."""
        intent = parse_reply(text)
        if intent.kind is IntentKind.HELP:
            return ReplyOutcome(HELP_TEXT)
        if intent.kind is IntentKind.UNKNOWN:
            return ReplyOutcome(views.UNKNOWN_REPLY)
        if intent.kind is IntentKind.CANCEL:
            return ReplyOutcome(await self.cancel(request.who, None))
        tracks = await self.store.tracks_for_job(job_id)
        if not tracks:
            return ReplyOutcome("That piece isn't finished yet (or was removed); reply again once it is posted.")
        index = (intent.variation or 1) - 1
        if index >= len(tracks):
            return ReplyOutcome(f"There is no variation #{index + 1} here (this one has {len(tracks)}).")
        if intent.kind is IntentKind.REPLACE:  # --- ACE-STEP: "redo the bridge", "replace 0:40-0:55 with ..." ---
            try:
                job = await self.submit(await self.vocals.plan_replace(request, tracks[index].id, intent.text))
            except Refusal as refusal:
                return ReplyOutcome(refusal.user_message)
            return ReplyOutcome(self.queued_text(job), job)
        if intent.kind is IntentKind.ADD_PART and self.vocals.offers("parts"):  # --- ACE-STEP: "add a guitar" ---
            try:
                job = await self.submit(await self.vocals.plan_add_part(request, tracks[index].id, intent.text))
            except Refusal as refusal:
                return ReplyOutcome(refusal.user_message)
            return ReplyOutcome(self.queued_text(job), job)
        try:
            plan = await self.planner.plan_from_track(request, tracks[index].id, _REPLY_OPERATIONS[intent.kind],
                                                      seconds=intent.seconds, edit=intent.edit)
            job = await self.submit(plan)
        except Refusal as refusal:
            return ReplyOutcome(refusal.user_message)
        return ReplyOutcome(self.queued_text(job), job)

    # -- what transports ask ------------------------------------------------------------------------------

    async def track(self, track_id: str) -> TrackRecord:
        return await self.planner.track(track_id)

    async def job(self, job_id: str) -> Job | None:
        return await self.store.get_job(job_id)

    async def tracks(self, job_id: str) -> list[TrackRecord]:
        return await self.store.tracks_for_job(job_id)

    def path(self, rel: str):
        """Where a stored file (a track's mp3, png or flac) is on disk."""
        return self.files.absolute(rel)

    async def record_posted(self, job_id: str, ref: str) -> None:
        """Where a transport posted a job's result (a message, a thread): replies there carry on from this job."""
        await self.links.link(ref, job_id)

    async def job_for_ref(self, *refs: str) -> str | None:
        """The job a posted message or thread belongs to (the first reference that is known)."""
        for ref in refs:
            job_id = await self.links.job_for(ref)
            if job_id:
                return job_id
        return None

    async def check_extend(self, track_id: str) -> None:
        """The instant part of extending a track: it exists and its model can continue audio."""
        self.planner.check_continuation((await self.track(track_id)).model)

    async def vote(self, who: Requester, track_id: str) -> Voted:
        """One vote per user per job, changeable; returns the result message with the new tally."""
        track = await self.track(track_id)
        changed = await self.store.record_vote(track.job_id, track.id, who.user_id)
        if changed and self.fingerprints is not None:
            await self.fingerprints.record(who.user_id, "vote", track)
        job = await self.store.get_job(track.job_id)
        tracks = await self.store.tracks_for_job(track.job_id)
        tally = await self.store.vote_tally(track.job_id)
        return Voted(await self.result_message(job, tracks, tally), tally)

    async def result_message(self, job: Job, tracks: list[TrackRecord], tally: dict[str, int] | None = None,
                             winner: str | None = None) -> OutgoingMessage:
        """A finished job as its message, with the votes so far and 🎚 wherever stems can be made here."""
        if tally is None:
            tally = await self.store.vote_tally(job.id)
        return views.result_message(job, tracks, self.files.absolute, tally, winner, self.vocals.offers("stems"))

    async def track_message(self, track_id: str) -> OutgoingMessage:
        """/track: one track shown again, with its buttons."""
        track = await self.track(track_id)
        job = await self.store.get_job(track.job_id)
        return await self.result_message(job, [track])

    async def remove_track(self, who: Requester, track_id: str) -> str:
        """Admins remove a track and its files."""
        if not who.is_admin:
            raise Refusal("Only admins can remove tracks.")
        paths = await self.store.delete_track(track_id)
        await asyncio.to_thread(lambda: [self.files.remove(rel) for rel in paths])
        return f"Removed track `{track_id}`." if paths else "No such track."

    async def cancel(self, who: Requester, job_id: str | None) -> str:
        if job_id is None:
            mine = [j for j in self.scheduler.running_jobs() + self.scheduler.queued_jobs() if j.user_id == who.user_id]
            if not mine:
                return "You have nothing waiting or being made."
            job_id = self.scheduler.request_id(mine[-1].id)
        job = await self.store.get_job(job_id)
        if job is None:
            return "I can't find that job."
        if job.user_id != who.user_id and not who.is_admin:
            return "That isn't your job to cancel."
        if await self.scheduler.cancel(job_id):
            return f"Cancelled `{job_id}`."
        return f"`{job_id}` has already finished."

    def queue_text(self, who: Requester) -> str:
        running = [j for j in self.scheduler.running_jobs() if j.user_id == who.user_id]
        queued = [j for j in self.scheduler.queued_jobs() if j.user_id == who.user_id]
        if not running and not queued:
            return f"You have nothing in the queue ({self.scheduler.depth} waiting in all)."
        lines = []
        for job in running:
            shown = self.scheduler.request_id(job.id)  # a long extend's window shows as the extend itself
            eta = self.scheduler.eta(shown)
            place = self.scheduler.position(shown)  # handed to the Redis workers, but none has started it yet
            if place is not None:
                lines.append(f"⏳ `{shown}` {user(short(job.prompt, 50))} — #{place} in line"
                             + (f", ready in about {human_seconds(eta)}" if eta else ""))
                continue
            lines.append(f"▶ `{shown}` {user(short(job.prompt, 50))} — being made"
                         + (f", about {human_seconds(eta)} left" if eta else ""))
        for job in queued:
            shown = self.scheduler.request_id(job.id)
            eta = self.scheduler.eta(shown)
            lines.append(f"⏳ `{shown}` {user(short(job.prompt, 50))} — #{self.scheduler.position(shown)} in line"
                         + (f", ready in about {human_seconds(eta)}" if eta else ""))
        return "\n".join(lines)

    def busy(self) -> bool:
        """Anything waiting or being made."""
        return bool(self.scheduler.depth or self.scheduler.running_jobs())

    def queued_text(self, job: Job) -> str:
        return views.queued_text(job, self.scheduler.position(job.id), self.scheduler.eta(job.id), self.clock())

    def first_status(self, job: Job) -> str:
        """The status message of a job just queued: its place in line and when it should be ready."""
        event = JobEvent(EventKind.QUEUED, job.id, job.user_id, position=self.scheduler.position(job.id),
                         eta_s=self.scheduler.eta(job.id))
        return views.status_text(job, event, self.clock())

    def status_text(self, job: Job, event: JobEvent) -> str:
        return views.status_text(job, event, self.clock())

    def delivered_status(self, job: Job, guild_id: str | None, channel_id: str, message_id: str) -> str:
        """A status message's final text once the result is posted: delivered, with a link to it."""
        return views.delivered_text(job, views.result_link(guild_id, channel_id, message_id))

    def failed_status(self, job: Job) -> str:
        """A status message's final text for a failed or cancelled job."""
        return views.failed_text(job)

    async def fit_files(self, items: list[FileItem], limit: int) -> FittedFiles:
        """A result's files within `limit` bytes a message, re-encoded from the masters where needed."""
        flacs, tracks = {}, {}
        for item in items:
            if item.track_id:
                track = await self.store.get_track(item.track_id)
                if track is not None:
                    flacs[item.track_id] = self.files.absolute(track.flac)
                    tracks[item.track_id] = (track, await self.store.get_job(track.job_id) if track.job_id else None)
        resign = headroom = None
        if self.credentials is not None:  # a refit copy is a new encoding: it is signed again, within the limit
            def resign(track_id, path):
                self.credentials.resign(*tracks[track_id], path)

            def headroom(track_id):
                return self.credentials.headroom(tracks[track_id][0])
        return await asyncio.to_thread(fit_files, items, limit, flacs, resign=resign, headroom=headroom)

    # -- Content Credentials (bot/verify.py) ----------------------------------------------------------------

    def check_verify_size(self, size: int) -> None:
        """Before a transport downloads a file to verify: Refusal when it is too large (or empty)."""
        self._verifier().check_size(size)

    async def verify_upload(self, upload: Upload) -> str:
        """What an uploaded file's Content Credentials say (markup; names nobody)."""
        return await self._verifier().verify_upload(upload)

    async def verify_path(self, path) -> str:
        return await self._verifier().verify_path(path)

    def _verifier(self):
        if self.credentials is None:
            raise Refusal("Content Credentials aren't set up on this bot.")
        return self.credentials

    async def top(self, guild_id: str | None, period: str = "week") -> OutgoingMessage:
        """The guild's most voted tracks, with buttons to carry any of them on."""
        since = self.clock() - 7 * 86_400 if period == "week" else 0.0
        rows = await self.leaderboard.top_tracks(guild_id, since, 10) if self.leaderboard else []
        return views.top_message(rows, period)

    def help_text(self) -> str:
        return views.help_text((m, self.planner.model_info(m).license) for m in self.planner.offered_models())

    def offers(self, ability: str) -> bool:
        """Whether an offered model can do `ability` (a `ModelInfo` field: lyrics, repaint, cover, stems...)."""
        return self.vocals.offers(ability)

    def model_name(self, model_id: str) -> str:
        return views.model_name(model_id)

    @property
    def models(self) -> tuple[str, ...]:
        """The models members may pick from (where the server allows choosing)."""
        return self.planner.offered_models()

    # -- votes --------------------------------------------------------------------------------------------

    async def voting_window(self, guild_id: str | None) -> float:
        """Seconds a result's votes stay open (per server through /settings)."""
        if guild_id and self.server_settings is not None:
            window = (await self.server_settings.get(guild_id)).voting_window_s
            if window:
                return float(window)
        return self.voting_window_s

    async def announce_winner(self, job_id: str, winner: str) -> None:
        """Housekeeping closed a vote: every transport that posted the result marks the winner on it."""
        job = await self.store.get_job(job_id)
        tracks = await self.store.tracks_for_job(job_id)
        if job is None or not tracks:
            return
        message = await self.result_message(job, tracks, winner=winner)
        transport = self._transports.get(job.delivery.sink)
        if transport is not None:
            await transport.announce_winner(job, message, await self.links.refs_for(job_id))

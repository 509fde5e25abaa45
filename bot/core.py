"""The conversation core: commands, replies and buttons become jobs; jobs become messages. No transport here.

Every transport (Discord, the console) calls the same methods with a `Requester` and a delivery dict that only it
reads. Refusals raise `Refusal` with a message fit for the user; nothing is stored or queued when one is raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from bot.grammar import HELP_TEXT, IntentKind, PromptEdit, apply_edit, parse_reply
from bot.messages import Button, ButtonKind, FileItem, OutgoingMessage
from generation.jobs import Job, JobKind, JobState, Operation, TrackRecord
from generation.postprocess import write_flac
from generation.scheduler import EventKind, JobEvent, QueueRefused, Scheduler
from generation.types import MAX_VARIATIONS, SamplingParams
from generation.upload import AudioDecodeError, UploadLimits, decode_audio_bytes

log = logging.getLogger(__name__)

MODEL_RATE = 32_000


class Refusal(Exception):
    """A request that cannot be done; `user_message` says why, politely. Nothing changed."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


@dataclass(frozen=True)
class Requester:
    user_id: str
    name: str = ""
    guild_id: str | None = None
    channel_id: str | None = None
    is_admin: bool = False


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class ComposeOptions:
    prompt: str
    duration_s: float | None = None
    variations: int = 1
    seed: int | None = None
    temperature: float | None = None
    guidance: float | None = None
    model: str | None = None


@dataclass(frozen=True)
class CoreConfig:
    default_model: str
    melody_model: str | None = None
    models: tuple[str, ...] = ()  # what may be chosen besides the default (BANDMATE_MODELS)
    default_duration_s: float = 10.0
    max_duration_s: float = 30.0
    max_total_s: float = 300.0
    max_variations: int = MAX_VARIATIONS
    max_prompt_chars: int = 300
    cooldown_s: float = 5.0
    daily_quota: int = 200  # jobs a user may submit in 24 h
    max_upload_bytes: int = 25 * 1024 * 1024
    max_upload_s: float = 300.0


@dataclass
class ReplyOutcome:
    text: str
    job: Job | None = None
    ephemeral: bool = False


def clean_prompt(text: str, limit: int) -> str:
    """Printable text on one line; control and format characters (zero-width tricks, RTL overrides) removed."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(" " if ch in "\r\n\t" else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise Refusal("Tell me what to make, for example: `lo-fi piano, rainy night`.")
    if len(text) > limit:
        raise Refusal(f"That prompt is {len(text)} characters long; please keep it under {limit}.")
    return text


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def progress_bar(step: int, total: int, width: int = 20) -> str:
    filled = int(width * step / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def human_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Bandmate:
    def __init__(self, *, scheduler: Scheduler, store, links, files, config: CoreConfig, fingerprints=None,
                 leaderboard=None, presets=None, privacy=None, model_info=None,
                 clock: Callable[[], float] = time.time) -> None:
        # model_info(model_id) -> ModelInfo: what a model can do, known without loading it (generation.models).
        self.model_info = model_info
        self.presets = presets
        self.privacy = privacy
        self.fingerprints = fingerprints
        self.leaderboard = leaderboard
        self.scheduler = scheduler
        self.store = store
        self.links = links
        self.files = files
        self.config = config
        self.clock = clock
        self._last_compose: dict[str, float] = {}

    # -- limits -------------------------------------------------------------------------------------------

    async def check_quota(self, who: Requester) -> None:
        """Cooldown between requests and a daily quota, each with when the user can go again."""
        now = self.clock()
        last = self._last_compose.get(who.user_id)
        if last is not None and now - last < self.config.cooldown_s:
            wait = self.config.cooldown_s - (now - last)
            raise Refusal(f"Easy there! You can make another piece in {human_seconds(max(1, wait))}.")
        used = await self.links.jobs_since(who.user_id, now - 86_400)
        if used >= self.config.daily_quota:
            raise Refusal(f"You've made {used} pieces in the last 24 hours, the limit here. "
                          f"You can compose again in a few hours (quota frees up 24 h after each piece).")

    def check_compose(self, opts: ComposeOptions) -> ComposeOptions:
        """Everything that can be checked instantly, before a transport acknowledges."""
        prompt = clean_prompt(opts.prompt, self.config.max_prompt_chars)
        duration = opts.duration_s if opts.duration_s is not None else self.config.default_duration_s
        if not 1.0 <= duration <= self.config.max_duration_s:
            raise Refusal(f"Duration must be between 1 and {self.config.max_duration_s:g} seconds "
                          "(reply `extend 30s` to a result to go longer).")
        if not 1 <= opts.variations <= self.config.max_variations:
            raise Refusal(f"Variations must be between 1 and {self.config.max_variations}.")
        if opts.temperature is not None and not 0.05 <= opts.temperature <= 2.0:
            raise Refusal("Temperature must be between 0.05 and 2.")
        if opts.guidance is not None and not 1.0 <= opts.guidance <= 15.0:
            raise Refusal("Guidance must be between 1 and 15.")
        if opts.seed is not None and not 0 <= opts.seed < 2**31:
            raise Refusal("Seed must be between 0 and 2147483647.")
        if opts.model is not None and opts.model not in (self.config.default_model, *self.config.models):
            # Never load a model a user names: only those the operator configured.
            names = ", ".join(f"`{self.model_name(m)}`" for m in (self.config.default_model, *self.config.models))
            raise Refusal(f"That model isn't offered here. Choose one of: {names}.")
        return ComposeOptions(prompt=prompt, duration_s=duration, variations=opts.variations, seed=opts.seed,
                              temperature=opts.temperature, guidance=opts.guidance, model=opts.model)

    def check_upload_meta(self, filename: str, size: int) -> None:
        from generation.upload import ALLOWED_EXTENSIONS

        ext = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if ext not in ALLOWED_EXTENSIONS:
            raise Refusal("I can continue mp3, wav, flac, ogg/opus or m4a files; that one isn't any of those.")
        if size > self.config.max_upload_bytes:
            raise Refusal(f"That file is {size / 1e6:.1f} MB; the limit is {self.config.max_upload_bytes / 1e6:.0f} MB.")

    # -- requests -----------------------------------------------------------------------------------------

    async def prepare(self, who: Requester, opts: ComposeOptions, *, parent_channel_id: str | None = None
                      ) -> ComposeOptions:
        """Presets (`--name`), the server's channel rules, blocklist and defaults, then the instant checks."""
        if self.presets is not None:
            opts = await self.presets.prepare(who, opts, parent_channel_id=parent_channel_id)
        return self.check_compose(opts)

    async def compose(self, who: Requester, opts: ComposeOptions, *, delivery: dict[str, Any],
                      upload: Upload | None = None, idempotency_key: str | None = None,
                      interaction_expires_at: float | None = None) -> Job:
        opts = await self.prepare(who, opts)
        if idempotency_key:
            existing = await self.store.job_by_key(idempotency_key)
            if existing is not None:
                return existing
        await self.check_quota(who)
        sampling = SamplingParams(temperature=opts.temperature or 1.0,
                                  guidance=opts.guidance if opts.guidance is not None else 3.0)
        job = Job(user_id=who.user_id, prompt=opts.prompt, duration_s=opts.duration_s,
                  model=opts.model or self.config.default_model, variations=opts.variations,
                  seed=opts.seed if opts.seed is not None else random.randrange(2**31), sampling=sampling,
                  guild_id=who.guild_id, channel_id=who.channel_id, delivery=delivery,
                  idempotency_key=idempotency_key, interaction_expires_at=interaction_expires_at)
        self._family_spec(job, guidance_given=opts.guidance is not None)
        if upload is not None:
            self.check_upload_meta(upload.filename, len(upload.data))
            self.check_continuation(job.model)
            job.kind, job.operation = JobKind.CONTINUE, Operation.CONTINUE
            job.input_audio, job.spec["source_s"] = await self._store_upload(job.id, upload)
        return await self._submit(who, job)

    def _family(self, model_id: str):
        return self.model_info(model_id) if self.model_info is not None else None

    def check_continuation(self, model_id: str) -> None:
        """Refuse continue/extend/song on a model family that cannot continue audio (Stable Audio, melody)."""
        info = self._family(model_id)
        if info is not None and not info.supports_continuation:
            raise Refusal(f"{self.model_name(model_id)} can't continue audio; ask an admin to use a MusicGen model "
                          "for that (/settings).")

    def _family_spec(self, job: Job, guidance_given: bool) -> None:
        """Stable Audio jobs batch by steps and strength, and want more guidance than MusicGen's default."""
        info = self._family(job.model)
        if info is not None and info.family == "stable-audio":
            job.spec["family"] = info.family
            if not guidance_given:
                job.sampling = SamplingParams(temperature=job.sampling.temperature, top_k=job.sampling.top_k,
                                              top_p=job.sampling.top_p, guidance=info.default_guidance)

    async def _store_upload(self, job_id: str, upload: Upload) -> tuple[str, float]:
        """Decode (guarded) and store an upload as a FLAC master; its path and length in seconds."""
        limits = UploadLimits(max_bytes=self.config.max_upload_bytes, max_duration_s=self.config.max_upload_s)
        try:
            audio = await asyncio.to_thread(decode_audio_bytes, upload.data, target_rate=MODEL_RATE, channels=1,
                                            limits=limits, filename=upload.filename)
        except AudioDecodeError as error:
            raise Refusal(error.user_message) from None
        rel = self.files.path_for(f"{job_id}in", "flac")
        path = self.files.absolute(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_flac, audio.samples, audio.sample_rate, path)
        return rel, audio.samples.shape[-1] / audio.sample_rate

    async def _submit(self, who: Requester, job: Job) -> Job:
        try:
            stored = await self.scheduler.submit(job)
        except QueueRefused as error:
            raise Refusal(error.user_message) from None
        self._last_compose[who.user_id] = self.clock()
        return stored

    async def track(self, track_id: str) -> TrackRecord:
        track = await self.store.get_track(track_id)
        if track is None:
            raise Refusal("I can't find that track; it may have been removed.")
        return track

    async def from_track(self, who: Requester, track_id: str, operation: Operation, *, delivery: dict[str, Any],
                         seconds: float | None = None, edit: PromptEdit | None = None,
                         idempotency_key: str | None = None, prompt: str | None = None,
                         interaction_expires_at: float | None = None) -> Job:
        """A new job derived from a track: variations, continue/extend, an edited prompt, more like this."""
        parent = await self.track(track_id)
        if idempotency_key:
            existing = await self.store.job_by_key(idempotency_key)
            if existing is not None:
                return existing
        await self.check_quota(who)
        parent_job = await self.store.get_job(parent.job_id) if parent.job_id else None
        sampling = parent_job.sampling if parent_job else SamplingParams()
        variations = parent_job.variations if parent_job and operation is not Operation.EXTEND else 1
        job = Job(user_id=who.user_id, prompt=prompt or parent.prompt, duration_s=parent.duration_s, model=parent.model,
                  operation=operation, variations=min(variations, self.config.max_variations),
                  seed=random.randrange(2**31), sampling=sampling, parent_track_id=parent.id, guild_id=who.guild_id,
                  channel_id=who.channel_id, delivery=delivery, idempotency_key=idempotency_key,
                  interaction_expires_at=interaction_expires_at)
        self._family_spec(job, guidance_given=True)
        if job.spec.get("family") == "stable-audio" and operation in (Operation.VARIATION, Operation.MORE_LIKE):
            # Variations of a Stable Audio track start from its audio (audio-to-audio) at a middle strength.
            job.input_audio, job.spec["strength"] = parent.flac, 0.5
        if operation in (Operation.CONTINUE, Operation.EXTEND):
            self.check_continuation(parent.model)
            seconds = seconds or 10.0
            if parent.duration_s + seconds > self.config.max_total_s + 1e-6:
                raise Refusal(f"That would make it {human_seconds(parent.duration_s + seconds)} long; "
                              f"the limit is {human_seconds(self.config.max_total_s)}.")
            if seconds < 1:
                raise Refusal("Add at least 1 second.")
            job.kind, job.duration_s, job.variations = JobKind.CONTINUE, seconds, 1
            job.input_audio = parent.flac
            job.spec["source_s"] = parent.duration_s  # past one model window, the queue runs it window by window
        elif edit is not None:
            edited = clean_prompt(apply_edit(parent.prompt, edit), self.config.max_prompt_chars)
            job.prompt = (await self.prepare(who, ComposeOptions(prompt=edited, duration_s=parent.duration_s))).prompt
        elif operation is Operation.MORE_LIKE and self.fingerprints is not None:
            blended = await self.fingerprints.blend(who.user_id, parent.prompt)
            job.prompt = clean_prompt(blended.prompt, self.config.max_prompt_chars)
            job.spec["blended"] = list(blended.added)
        job = await self._submit(who, job)
        if self.fingerprints is not None:
            await self.fingerprints.record(who.user_id, operation.value, parent)
        return job

    async def check_extend(self, track_id: str) -> None:
        """The instant part of extending a track: it exists and its model can continue audio."""
        self.check_continuation((await self.track(track_id)).model)

    async def extend_to(self, who: Requester, track_id: str, total_s: float, *, delivery: dict[str, Any],
                        idempotency_key: str | None = None, interaction_expires_at: float | None = None) -> Job:
        """/extend: make a track this long in all (up to 5 minutes), window by window, as one file."""
        track = await self.track(track_id)
        if total_s <= track.duration_s + 0.5:
            raise Refusal(f"That track is already {human_seconds(track.duration_s)} long; ask for more than that.")
        return await self.from_track(who, track_id, Operation.EXTEND, delivery=delivery,
                                     seconds=total_s - track.duration_s, idempotency_key=idempotency_key,
                                     interaction_expires_at=interaction_expires_at)

    async def remix(self, who: Requester, upload: Upload, style: str, *, delivery: dict[str, Any],
                    duration_s: float | None = None, seed: int | None = None, idempotency_key: str | None = None,
                    interaction_expires_at: float | None = None) -> Job:
        """Keep an upload's melody, change its style: MusicGen-melody conditioned on the upload's chroma."""
        if not self.config.melody_model:
            raise Refusal("Remix needs a melody model, and none is configured here (BANDMATE_MELODY_MODEL).")
        opts = await self.prepare(who, ComposeOptions(prompt=style, duration_s=duration_s, seed=seed))
        if idempotency_key:
            existing = await self.store.job_by_key(idempotency_key)
            if existing is not None:
                return existing
        self.check_upload_meta(upload.filename, len(upload.data))
        await self.check_quota(who)
        job = Job(user_id=who.user_id, prompt=opts.prompt, duration_s=opts.duration_s, model=self.config.melody_model,
                  kind=JobKind.REMIX, operation=Operation.REMIX,
                  seed=opts.seed if opts.seed is not None else random.randrange(2**31), guild_id=who.guild_id,
                  channel_id=who.channel_id, delivery=delivery, idempotency_key=idempotency_key,
                  interaction_expires_at=interaction_expires_at)
        job.input_audio, _ = await self._store_upload(job.id, upload)
        return await self._submit(who, job)

    async def song(self, who: Requester, prompt: str, sections: str, *, delivery: dict[str, Any],
                   seed: int | None = None, chorus: str = "reuse", idempotency_key: str | None = None,
                   interaction_expires_at: float | None = None) -> Job:
        """/song: sections made one after another by continuation, a chorus that returns, one file with chapters.

        chorus: "reuse" repeats the first chorus's audio; "melody" makes each repeat new, following the first
        chorus's melody through the melody model (BANDMATE_MELODY_MODEL).
        """
        from generation.song import SongError, parse_sections, sections_to_spec

        if chorus not in ("reuse", "melody"):
            raise Refusal("The chorus can return as `reuse` (the same audio) or `melody` (a new take on its melody).")
        if chorus == "melody" and not self.config.melody_model:
            raise Refusal("A chorus that follows its melody needs a melody model, and none is configured here "
                          "(BANDMATE_MELODY_MODEL); leave the chorus option out to repeat the first chorus.")

        prepared = await self.prepare(who, ComposeOptions(prompt=prompt))
        prompt = prepared.prompt
        self.check_continuation(prepared.model or self.config.default_model)
        try:
            parsed = parse_sections(sections)
        except SongError as error:
            raise Refusal(str(error)) from None
        if idempotency_key:
            existing = await self.store.job_by_key(idempotency_key)
            if existing is not None:
                return existing
        await self.check_quota(who)
        job = Job(user_id=who.user_id, prompt=prompt, duration_s=sum(s.seconds for s in parsed),
                  model=prepared.model or self.config.default_model, kind=JobKind.SONG,
                  seed=seed if seed is not None else random.randrange(2**31), guild_id=who.guild_id,
                  channel_id=who.channel_id, delivery=delivery, idempotency_key=idempotency_key,
                  interaction_expires_at=interaction_expires_at, spec={"sections": sections_to_spec(parsed)})
        if chorus == "melody":
            job.spec.update(chorus="melody", melody_model=self.config.melody_model)
        return await self._submit(who, job)

    async def reply(self, who: Requester, job_id: str, text: str, *, delivery: dict[str, Any],
                    idempotency_key: str | None = None) -> ReplyOutcome:
        """A reply in a result's thread (or to a result message) becomes a request, or a short hint."""
        intent = parse_reply(text)
        if intent.kind is IntentKind.HELP:
            return ReplyOutcome(HELP_TEXT)
        if intent.kind is IntentKind.UNKNOWN:
            return ReplyOutcome("I didn't catch that. Try `continue`, `extend 20s`, `make it jazzier`, `variations` "
                                "or `help`.")
        if intent.kind is IntentKind.CANCEL:
            return ReplyOutcome(await self.cancel(who, None))
        tracks = await self.store.tracks_for_job(job_id)
        if not tracks:
            return ReplyOutcome("That piece isn't finished yet (or was removed); reply again once it is posted.")
        index = (intent.variation or 1) - 1
        if index >= len(tracks):
            return ReplyOutcome(f"There is no variation #{index + 1} here (this one has {len(tracks)}).")
        track = tracks[index]
        operation = {
            IntentKind.CONTINUE: Operation.CONTINUE,
            IntentKind.EXTEND: Operation.EXTEND,
            IntentKind.VARIATIONS: Operation.VARIATION,
            IntentKind.EDIT: Operation.VARIATION,
            IntentKind.MORE_LIKE: Operation.MORE_LIKE,
        }[intent.kind]
        try:
            job = await self.from_track(who, track.id, operation, delivery=delivery, seconds=intent.seconds,
                                        edit=intent.edit, idempotency_key=idempotency_key)
        except Refusal as refusal:
            return ReplyOutcome(refusal.user_message)
        return ReplyOutcome(self.queued_text(job), job)

    async def vote(self, who: Requester, track_id: str) -> dict[str, int]:
        """One vote per user per job, changeable; returns the job's tally by track id."""
        track = await self.track(track_id)
        changed = await self.store.record_vote(track.job_id, track.id, who.user_id)
        if changed and self.fingerprints is not None:
            await self.fingerprints.record(who.user_id, "vote", track)
        return await self.store.vote_tally(track.job_id)

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
            lines.append(f"▶ `{shown}` {short(job.prompt, 50)} — being made"
                         + (f", about {human_seconds(eta)} left" if eta else ""))
        for job in queued:
            shown = self.scheduler.request_id(job.id)
            eta = self.scheduler.eta(shown)
            lines.append(f"⏳ `{shown}` {short(job.prompt, 50)} — #{self.scheduler.position(shown)} in line"
                         + (f", ready in about {human_seconds(eta)}" if eta else ""))
        return "\n".join(lines)

    # -- what transports show -----------------------------------------------------------------------------

    def queued_text(self, job: Job) -> str:
        position = self.scheduler.position(job.id)
        eta = self.scheduler.eta(job.id)
        what = {Operation.CONTINUE: "Continuing", Operation.EXTEND: "Extending", Operation.VARIATION: "New take",
                Operation.MORE_LIKE: "More like this", Operation.REMIX: "Remixing"}.get(job.operation, "Composing")
        where = "up next" if position in (None, 1) else f"#{position} in line"
        eta_text = f", ready in about {human_seconds(eta)}" if eta else ""
        return f"{what}: {job.prompt} — {where}{eta_text}."

    def status_text(self, job: Job, event: JobEvent, escape: Callable[[str], str] = str) -> str:
        head = f"🎼 **{escape(short(job.prompt, 80))}**"
        if event.kind is EventKind.PROGRESS and event.total:
            left = f" · about {human_seconds(event.eta_s)} left" if event.eta_s else ""
            part = f" · {event.message}" if event.message else ""  # a long extend: "window 2 of 5"
            return f"{head}\n`{progress_bar(event.step, event.total)}` {100 * event.step // event.total}%{part}{left}"
        if event.kind in (EventKind.QUEUED, EventKind.POSITION):
            where = "up next" if event.position in (None, 1) else f"#{event.position} in line"
            eta = f" · ready in about {human_seconds(event.eta_s)}" if event.eta_s else ""
            note = f"\n{event.message}" if event.message else ""
            return f"{head}\n⏳ {where}{eta}{note}"
        if event.kind is EventKind.STARTED:
            return f"{head}\n`{progress_bar(0, 1)}` starting…"
        if event.kind is EventKind.DONE:
            return f"{head}\n✅ done — posting it now"
        if event.kind is EventKind.FAILED:
            return f"{head}\n❌ {event.message or 'failed'}"
        if event.kind is EventKind.CANCELLED:
            return f"{head}\n🚫 cancelled"
        if event.kind is EventKind.REQUEUED:
            return f"{head}\n⏸ {event.message or 'waiting for a restart'}"
        return head

    def result_message(self, job: Job, tracks: list[TrackRecord], escape: Callable[[str], str] = str,
                       tally: dict[str, int] | None = None, winner: str | None = None) -> OutgoingMessage:
        if job.state is not JobState.DONE:
            text = f"❌ **{escape(short(job.prompt, 80))}** — {job.error or job.state.value}"
            return OutgoingMessage(text=text, job_id=job.id)
        tally = tally or {}
        first = tracks[0] if tracks else None
        what = {Operation.CONTINUE: "continued", Operation.EXTEND: "extended", Operation.VARIATION: "new take",
                Operation.MORE_LIKE: "more like this", Operation.REMIX: "remix"}.get(job.operation)
        lines = [f"🎵 **{escape(short(job.prompt, 150))}**"]
        details = [f"{first.duration_s:.1f} s" if first else "", f"seed {job.seed}", self.model_name(job.model)]
        if what:
            details.insert(0, what)
        lines.append(" · ".join(d for d in details if d))
        if job.spec.get("blended"):
            lines.append("Blended in your taste: " + ", ".join(escape(t) for t in job.spec["blended"]))
        if job.spec.get("sections"):
            lines.append("Sections: " + ", ".join(f"{escape(str(n))} {float(sec):g}s" for n, sec in job.spec["sections"]))
        if winner is not None:
            number = next((i + 1 for i, t in enumerate(tracks) if t.id == winner), None)
            votes = tally.get(winner, 0)
            lines.append(f"🏆 Voting closed: #{number} won with {votes} vote{'s' if votes != 1 else ''}."
                         if number and len(tracks) > 1 else f"🏆 Voting closed with {votes} vote{'s' if votes != 1 else ''}.")
        files, buttons = [], []
        many = len(tracks) > 1
        for i, track in enumerate(tracks):
            n = i + 1
            files.append(FileItem(self.files.absolute(track.mp3), f"bandmate-{track.id}.mp3",
                                  f"{short(job.prompt, 80)} #{n}", track_id=track.id))
            votes = tally.get(track.id, 0)
            label = (f"#{n}" if many else "Vote") + (f" · {votes}" if votes else "")
            emoji = "🏆" if winner == track.id else "🗳"
            buttons.append(Button(ButtonKind.VOTE, track.id, label, emoji, row=i if many else 0))
            buttons.append(Button(ButtonKind.EXTEND, track.id, f"Extend #{n}" if many else "Extend", "➕",
                                  row=i if many else 0))
            buttons.append(Button(ButtonKind.MORE_LIKE, track.id, f"Like #{n}" if many else "More like this", "❤",
                                  row=i if many else 0))
        if first is not None:
            buttons.append(Button(ButtonKind.VARIATIONS, first.id, "Variations", "🔁", row=len(tracks) if many else 0))
            files.append(FileItem(self.files.absolute(first.png), f"bandmate-{first.id}.png", "waveform"))
        return OutgoingMessage(text="\n".join(lines), files=files, buttons=buttons, job_id=job.id,
                               thread_name=short(job.prompt, 90))

    async def top(self, guild_id: str | None, period: str = "week",
                  escape: Callable[[str], str] = str) -> OutgoingMessage:
        """The guild's most voted tracks, with buttons to carry any of them on."""
        since = self.clock() - 7 * 86_400 if period == "week" else 0.0
        rows = await self.leaderboard.top_tracks(guild_id, since, 10) if self.leaderboard else []
        if not rows:
            return OutgoingMessage(text="No votes yet" + (" this week." if period == "week" else "."), ephemeral=True)
        title = "🏆 **Top tracks this week**" if period == "week" else "🏆 **Top tracks of all time**"
        lines = [title]
        buttons = []
        for i, (track, votes) in enumerate(rows, start=1):
            lines.append(f"{i}. **{escape(short(track.prompt, 70))}** — {votes} vote{'s' if votes != 1 else ''} · "
                         f"`{track.id}`")
            if i <= 5:
                buttons += [Button(ButtonKind.EXTEND, track.id, f"Extend #{i}", "➕", row=i - 1),
                            Button(ButtonKind.MORE_LIKE, track.id, f"Like #{i}", "❤", row=i - 1)]
        return OutgoingMessage(text="\n".join(lines), buttons=buttons)

    def model_name(self, model_id: str) -> str:
        return model_id.rstrip("/").split("/")[-1]

    def help_text(self) -> str:
        lines = [HELP_TEXT, "**Models and their licences:**"]
        for model_id in dict.fromkeys((self.config.default_model, *self.config.models)):
            info = self._family(model_id)
            licence = info.license if info is not None else "see the model card"
            lines.append(f"• `{self.model_name(model_id)}` — {licence}")
        return "\n".join(lines)

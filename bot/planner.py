"""Requests become jobs, in two steps: `plan_*` runs every check a transport can wait for (so a refusal can be
private and nothing is stored), then `submit` does what needs the request's delivery: the upload, the queue.

Each check runs once. One helper (`_new_job`) makes the job for every command, so a new command writes only its own
logic: compose, a job from a track, /extend, /remix, /song.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from bot.grammar import PromptEdit, apply_edit
from bot.rate_limit import RateLimit, RateLimiter
from bot.request import Refusal, Request, Requester, Upload, UploadInfo
from bot.words import clean_prompt, human_seconds
from generation.jobs import Job, JobKind, Operation, TrackRecord
from generation.models import ModelInfo
from generation.postprocess import write_flac
from generation.scheduler import QueueRefused, Scheduler
from generation.spec import ChorusMode, JobSpec
from generation.types import MAX_VARIATIONS, SamplingParams
from generation.upload import ALLOWED_EXTENSIONS, AudioDecodeError, UploadLimits, decode_audio_bytes

MODEL_RATE = 32_000


@dataclass(frozen=True)
class ComposeOptions:
    prompt: str
    duration_s: float | None = None
    variations: int = 1
    seed: int | None = None
    temperature: float | None = None
    guidance: float | None = None
    model: str | None = None
    top_k: int | None = None
    top_p: float | None = None


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
    rate_limit: RateLimit = RateLimit()  # per user: a burst, then so many a minute; over it requests wait
    cooldown_s: float | None = None  # deprecated (one release): a flat cooldown, read as a bucket of one
    daily_quota: int = 200  # jobs a user may submit in 24 h
    max_upload_bytes: int = 25 * 1024 * 1024
    max_upload_s: float = 300.0


class UploadUse(str, Enum):
    """What a plan does with its upload on submit."""

    CONTINUE_FROM = "continue"  # the music continues the upload
    MELODY_OF = "melody"  # the music follows the upload's melody (remix)


@dataclass
class Plan:
    """A checked request: `job` as it will be queued once `submit` has the delivery (and the upload, if any)."""

    request: Request
    job: Job | None
    existing: Job | None = None  # the idempotency key already made this job: submit returns it
    upload_use: UploadUse | None = None
    taste: tuple[str, TrackRecord] | None = None  # (operation, parent track): a taste signal once queued
    rate_limited: bool = True  # False for follow-ups on one's own result: they never wait for the rate limit

    def delivered_to(self, delivery) -> "Plan":
        return dataclasses.replace(self, request=self.request.delivered_to(delivery))


class Planner:
    def __init__(self, *, scheduler: Scheduler, store, links, files, config: CoreConfig,
                 model_info: Callable[[str], ModelInfo], presets=None, server_settings=None, fingerprints=None,
                 clock: Callable[[], float] = time.time) -> None:
        self.scheduler = scheduler
        self.store = store
        self.links = links
        self.files = files
        self.config = config
        self.model_info = model_info
        self.presets = presets
        self.server_settings = server_settings
        self.fingerprints = fingerprints
        self.clock = clock
        limit = config.rate_limit if config.cooldown_s is None else RateLimit.from_cooldown(config.cooldown_s)
        self.rate = RateLimiter(limit, clock)

    # -- checks -------------------------------------------------------------------------------------------

    async def check_quota(self, who: Requester) -> None:
        """The daily quota, with when the user can go again. (The rate limit refuses nothing: `submit` holds a
        request over it until its start time.)"""
        now = self.clock()
        used = await self.links.jobs_since(who.user_id, now - 86_400)
        if used >= self.config.daily_quota:
            raise Refusal(f"You've made {used} pieces in the last 24 hours, the limit here. "
                          f"You can compose again in a few hours (quota frees up 24 h after each piece).")

    def offered_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.config.default_model, *self.config.models)))

    def check_options(self, opts: ComposeOptions, *, continuing: bool = False) -> ComposeOptions:
        """Everything about the options themselves that can be checked instantly. `continuing`: the duration is
        what to add to an upload, which may go on window by window up to the longest piece."""
        # A continuation may go on without words: the music itself is the prompt.
        prompt = "" if continuing and not (opts.prompt or "").strip() else \
            clean_prompt(opts.prompt, self.config.max_prompt_chars)
        duration = opts.duration_s if opts.duration_s is not None else self.config.default_duration_s
        longest = self.config.max_total_s if continuing else self.config.max_duration_s
        if not 1.0 <= duration <= longest:
            raise Refusal(f"Duration must be between 1 and {longest:g} seconds"
                          + ("." if continuing else " (reply `extend 30s` to a result to go longer)."))
        if not 1 <= opts.variations <= self.config.max_variations:
            raise Refusal(f"Variations must be between 1 and {self.config.max_variations}.")
        if opts.temperature is not None and not 0.05 <= opts.temperature <= 2.0:
            raise Refusal("Temperature must be between 0.05 and 2.")
        if opts.guidance is not None and not 1.0 <= opts.guidance <= 15.0:
            raise Refusal("Guidance must be between 1 and 15.")
        if opts.seed is not None and not 0 <= opts.seed < 2**31:
            raise Refusal("Seed must be between 0 and 2147483647.")
        if opts.model is not None and opts.model not in self.offered_models():
            # Never load a model a user names: only those the operator configured.
            names = ", ".join(f"`{m.rstrip('/').split('/')[-1]}`" for m in self.offered_models())
            raise Refusal(f"That model isn't offered here. Choose one of: {names}.")
        return dataclasses.replace(opts, prompt=prompt, duration_s=duration)

    def check_upload(self, upload: UploadInfo) -> None:
        ext = "." + upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
        if ext not in ALLOWED_EXTENSIONS:
            raise Refusal("I can continue mp3, wav, flac, ogg/opus or m4a files; that one isn't any of those.")
        if upload.size > self.config.max_upload_bytes:
            raise Refusal(f"That file is {upload.size / 1e6:.1f} MB; the limit is "
                          f"{self.config.max_upload_bytes / 1e6:.0f} MB.")

    def check_continuation(self, model_id: str) -> None:
        """Refuse continue/extend/song on a family that cannot continue audio (Stable Audio, melody)."""
        if not self.model_info(model_id).supports_continuation:
            name = model_id.rstrip("/").split("/")[-1]
            raise Refusal(f"{name} can't continue audio; ask an admin to use a MusicGen model for that (/settings).")

    async def prepare(self, who: Requester, opts: ComposeOptions, *, continuing: bool = False) -> ComposeOptions:
        """Presets (`--name`), then the server's channel rules, blocklist and defaults (which see the expanded
        prompt, so a preset cannot smuggle in a blocked word), then the instant checks."""
        if self.presets is not None:
            opts = dataclasses.replace(opts, prompt=await self.presets.expand(who, opts.prompt))
        if self.server_settings is not None:
            opts = await self.server_settings.apply(who, opts)
        return self.check_options(opts, continuing=continuing)

    async def track(self, track_id: str) -> TrackRecord:
        track = await self.store.get_track(track_id)
        if track is None:
            raise Refusal("I can't find that track; it may have been removed.")
        return track

    # -- plans --------------------------------------------------------------------------------------------

    async def _existing(self, request: Request) -> Job | None:
        return await self.store.job_by_key(request.idempotency_key) if request.idempotency_key else None

    def _new_job(self, request: Request, *, prompt: str, duration_s: float, model: str, seed: int | None = None,
                 sampling: SamplingParams | None = None, **fields) -> Job:
        """Every command's job: who and where from the request, the family's defaults from its model info."""
        info = self.model_info(model)
        sampling = sampling or SamplingParams(guidance=info.default_guidance)
        who = request.who
        return Job(user_id=who.user_id, prompt=prompt, duration_s=duration_s, model=model, sampling=sampling,
                   seed=seed if seed is not None else random.randrange(2**31), guild_id=who.guild_id,
                   channel_id=who.channel_id, idempotency_key=request.idempotency_key, **fields)

    async def plan_compose(self, request: Request, opts: ComposeOptions, upload: UploadInfo | None = None) -> Plan:
        opts = await self.prepare(request.who, opts, continuing=upload is not None)
        existing = await self._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        model = opts.model or self.config.default_model
        if upload is not None:
            self.check_upload(upload)
            self.check_continuation(model)
        await self.check_quota(request.who)
        info = self.model_info(model)
        sampling = SamplingParams(temperature=opts.temperature or 1.0,
                                  top_k=opts.top_k if opts.top_k is not None else SamplingParams.top_k,
                                  top_p=opts.top_p if opts.top_p is not None else SamplingParams.top_p,
                                  guidance=opts.guidance if opts.guidance is not None else info.default_guidance)
        job = self._new_job(request, prompt=opts.prompt, duration_s=opts.duration_s, model=model, seed=opts.seed,
                            sampling=sampling, variations=opts.variations)
        if upload is not None:
            job.kind, job.operation = JobKind.CONTINUE, Operation.CONTINUE
        return Plan(request, job, upload_use=UploadUse.CONTINUE_FROM if upload is not None else None)

    async def plan_from_track(self, request: Request, track_id: str, operation: Operation, *,
                              seconds: float | None = None, edit: PromptEdit | None = None) -> Plan:
        """A new job derived from a track: variations, continue/extend, an edited prompt, more like this."""
        who = request.who
        parent = await self.track(track_id)
        existing = await self._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        parent_job = await self.store.get_job(parent.job_id) if parent.job_id else None
        sampling = parent_job.sampling if parent_job else SamplingParams()
        variations = parent_job.variations if parent_job and operation is not Operation.EXTEND else 1
        info = self.model_info(parent.model)
        job = self._new_job(request, prompt=parent.prompt, duration_s=parent.duration_s, model=parent.model,
                            sampling=sampling, operation=operation, parent_track_id=parent.id,
                            variations=min(variations, self.config.max_variations))
        if info.variation_strength is not None and operation in (Operation.VARIATION, Operation.MORE_LIKE):
            # A diffusion family's variations start from the track's audio (audio-to-audio) at a middle strength.
            job.input_audio, job.spec.strength = parent.flac, info.variation_strength
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
            job.spec.source_s = parent.duration_s  # past one model window, the queue runs it window by window
        elif edit is not None:
            edited = clean_prompt(apply_edit(parent.prompt, edit), self.config.max_prompt_chars)
            job.prompt = (await self.prepare(who, ComposeOptions(prompt=edited, duration_s=parent.duration_s))).prompt
        elif operation is Operation.MORE_LIKE and self.fingerprints is not None:
            blended = await self.fingerprints.blend(who.user_id, parent.prompt)
            job.prompt = clean_prompt(blended.prompt, self.config.max_prompt_chars)
            job.spec.blended = tuple(blended.added)
        await self.check_quota(who)
        own = (parent_job.user_id if parent_job is not None else parent.user_id) == who.user_id
        return Plan(request, job, taste=(operation.value, parent), rate_limited=not own)

    async def plan_extend_to(self, request: Request, track_id: str, total_s: float) -> Plan:
        """/extend: make a track this long in all (up to 5 minutes), window by window, as one file."""
        track = await self.track(track_id)
        self.check_continuation(track.model)
        if total_s <= track.duration_s + 0.5:
            raise Refusal(f"That track is already {human_seconds(track.duration_s)} long; ask for more than that.")
        return await self.plan_from_track(request, track_id, Operation.EXTEND, seconds=total_s - track.duration_s)

    async def plan_remix(self, request: Request, upload: UploadInfo, style: str, *, duration_s: float | None = None,
                         seed: int | None = None) -> Plan:
        """Keep an upload's melody, change its style: MusicGen-melody conditioned on the upload's chroma."""
        if not self.config.melody_model:
            raise Refusal("Remix needs a melody model, and none is configured here (BANDMATE_MELODY_MODEL).")
        self.check_upload(upload)
        opts = await self.prepare(request.who, ComposeOptions(prompt=style, duration_s=duration_s, seed=seed))
        existing = await self._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        await self.check_quota(request.who)
        job = self._new_job(request, prompt=opts.prompt, duration_s=opts.duration_s, model=self.config.melody_model,
                            seed=opts.seed, sampling=SamplingParams(), kind=JobKind.REMIX, operation=Operation.REMIX)
        return Plan(request, job, upload_use=UploadUse.MELODY_OF)

    async def plan_song(self, request: Request, prompt: str, sections: str, *, seed: int | None = None,
                        chorus: str = "reuse") -> Plan:
        """/song: sections made one after another by continuation, a chorus that returns, one file with chapters.

        chorus: "reuse" repeats the first chorus's audio; "melody" makes each repeat new, following the first
        chorus's melody through the melody model (BANDMATE_MELODY_MODEL).
        """
        from generation.song import SongError, parse_sections, sections_to_spec

        try:
            mode = ChorusMode(chorus)
        except ValueError:
            raise Refusal("The chorus can return as `reuse` (the same audio) or `melody` (a new take on its "
                          "melody).") from None
        if mode is ChorusMode.MELODY and not self.config.melody_model:
            raise Refusal("A chorus that follows its melody needs a melody model, and none is configured here "
                          "(BANDMATE_MELODY_MODEL); leave the chorus option out to repeat the first chorus.")
        prepared = await self.prepare(request.who, ComposeOptions(prompt=prompt))
        model = prepared.model or self.config.default_model
        self.check_continuation(model)
        try:
            parsed = parse_sections(sections)
        except SongError as error:
            raise Refusal(str(error)) from None
        existing = await self._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        await self.check_quota(request.who)
        spec = JobSpec(sections=sections_to_spec(parsed), chorus=mode,
                       melody_model=self.config.melody_model if mode is ChorusMode.MELODY else None)
        job = self._new_job(request, prompt=prepared.prompt, duration_s=sum(s.seconds for s in parsed), model=model,
                            seed=seed, sampling=SamplingParams(), kind=JobKind.SONG, spec=spec)
        return Plan(request, job)

    # -- submitting ---------------------------------------------------------------------------------------

    async def submit(self, plan: Plan, upload: Upload | None = None) -> Job:
        """Queue a planned job: its delivery from the request, its upload decoded (guarded) and stored."""
        if plan.existing is not None:
            return plan.existing
        job = plan.job
        job.delivery = plan.request.delivery
        if plan.upload_use is not None:
            if upload is None:
                raise Refusal("I couldn't read that attachment; please try again.")
            self.check_upload(UploadInfo(upload.filename, len(upload.data)))
            job.input_audio, seconds = await self._store_upload(job.id, upload)
            if plan.upload_use is UploadUse.CONTINUE_FROM:
                if seconds + job.duration_s > self.config.max_total_s + 1e-6:
                    raise Refusal(f"That would make it {human_seconds(seconds + job.duration_s)} long; the limit "
                                  f"is {human_seconds(self.config.max_total_s)}.")
                job.spec.source_s = seconds  # long continuations run window by window
        reservation = self.rate.reserve(plan.request.who.user_id) if plan.rate_limited else None
        if reservation is not None and reservation.delay_s > 0:
            job.spec.not_before = reservation.start_at  # stored with the job: a restart keeps the wait
        try:
            stored = await self.scheduler.submit(job)
        except BaseException as error:
            if reservation is not None:
                self.rate.release(reservation)
            if isinstance(error, QueueRefused):
                raise Refusal(error.user_message) from None
            raise
        if reservation is not None and stored.id != job.id:  # the same request again: it took no new slot
            self.rate.release(reservation)
        if plan.taste is not None and self.fingerprints is not None and stored.id == job.id:
            operation, parent = plan.taste
            await self.fingerprints.record(plan.request.who.user_id, operation, parent)
        return stored

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

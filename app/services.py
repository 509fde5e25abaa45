"""Every service of one process, built once from the settings and handed to constructors; opened and closed with
`async with` (as discord.py's advanced_startup example does).

    async with Application(settings) as app:   # database, files, models, queue, core, housekeeping
        await app.core.connect(transport)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from app.settings import Settings
from bot.core import Bandmate
from bot.fingerprint import Fingerprints
from bot.guild_settings import BotLimits, ServerSettings
from bot.housekeeping import Housekeeping
from bot.planner import CoreConfig, Planner
from bot.verify import CredentialService
from bot.presets import PresetService
from bot.rate_limit import RateLimit
from bot.privacy import PrivacyService
from generation.decoder_executor import DecoderExecutor, DecoderOptions
from generation.local_executor import LocalExecutor
from generation.models import ModelRegistry, model_info
from generation.runner import JobRunner
from generation.scheduler import Scheduler, SchedulerConfig
from generation.track_signing import TrackSigner
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import ConversationLinks, Leaderboard, SqliteJobStore
from storage.privacy import PrivacyStore
from storage.settings import SettingsStore
from storage.taste import TasteStore

log = logging.getLogger(__name__)

UNLIMITED = 10**9


def build_models(settings: Settings) -> ModelRegistry:
    """The process's models: one registry (the bot's or a worker's), honouring BANDMATE_TORCH_THREADS."""
    def setting_for(model_id: str) -> str:
        return "BANDMATE_MELODY_MODEL" if model_id == settings.melody_model else "BANDMATE_MODEL"

    return ModelRegistry(device=settings.device, dtype=settings.dtype, compile=settings.compile,
                         threads=settings.torch_threads, setting_for=setting_for, cpu_offload=settings.cpu_offload)


def local_decoder_executor(settings: Settings, runner: JobRunner) -> DecoderExecutor:
    """The decoder executor: S slots from BANDMATE_MAX_BATCH (fewer on a GPU short of memory), CUDA graphs unless
    BANDMATE_CUDA_GRAPHS=0."""
    return DecoderExecutor(runner, DecoderOptions(slots=settings.max_batch,
                                                  cuda_graphs=None if settings.cuda_graphs else False))


def core_config(settings: Settings, *, operator: bool = False) -> CoreConfig:
    """The core's limits from the settings. `operator`: the console and the command line are the operator's own
    tools on their own machine, so the per-member fairness limits (rate limit, daily quota) do not apply there."""
    config = CoreConfig(default_model=settings.model, melody_model=settings.melody_model,
                        models=tuple(settings.extra_models), max_duration_s=settings.max_duration_s,
                        max_upload_bytes=settings.max_upload_mb * 1024 * 1024, daily_quota=settings.daily_quota,
                        max_song_s=settings.max_song_s,
                        rate_limit=RateLimit(settings.rate_burst, settings.rate_per_min))
    if operator:
        config = dataclasses.replace(config, rate_limit=RateLimit.off(), daily_quota=UNLIMITED)
    return config


class StartupError(RuntimeError):
    """A setting cannot be used at start (a signing certificate, the watermark's weights); says what to do."""


def build_credentials(settings: Settings):
    """Content Credentials: the operator's certificate, or this server's own chain under the data directory (made on
    first run, keys 0600). Signs a probe now so a bad certificate fails at start, not on the first track."""
    from generation.credentials import ContentCredentials, CredentialError
    from generation.signing_keys import SigningKeyError

    try:
        credentials = ContentCredentials(settings.key_dir, cert_path=settings.c2pa_cert, key_path=settings.c2pa_key)
        credentials.check()
    except (SigningKeyError, CredentialError) as error:
        raise StartupError(f"Content Credentials: {error}") from None
    return credentials


def watermark_name(trust_anchor_pem: bytes) -> str:
    """What the watermark's 16-bit message names: this server's signing CA (the bot and `bot.py verify` agree)."""
    import hashlib

    return hashlib.sha256(trust_anchor_pem).hexdigest()


def build_watermark(settings: Settings, credentials):
    """BANDMATE_WATERMARK=audioseal: the watermarker, its message naming this server (from its signing CA), or a
    StartupError saying to run `python bot.py download audioseal`. None when off."""
    if settings.watermark != "audioseal":
        return None
    from generation.watermark import WatermarkError, load_watermarker

    try:
        return load_watermarker(settings.watermark_dir, server_name=watermark_name(credentials.chain.trust_anchor_pem))
    except WatermarkError as error:
        raise StartupError(str(error)) from None


class Application:
    def __init__(self, settings: Settings, *, operator: bool = False) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials = build_credentials(settings)  # first: a bad certificate or missing weights fail here
        try:
            self.watermark = build_watermark(settings, self.credentials)
        except BaseException:
            self.credentials.close()
            raise
        self.db = Database(settings.db_path)
        self.files = FileStore(settings.data_dir)
        self.store = SqliteJobStore(self.db)
        self.links = ConversationLinks(self.db)
        self.leaderboard = Leaderboard(self.db)
        self.settings_store = SettingsStore(self.db)
        self.privacy_store = PrivacyStore(self.db, self.files)
        self.models = build_models(settings)
        self.signer = TrackSigner(self.credentials, self.files)
        if settings.redis_url:  # [redis scale-out] workers run the model; this process keeps the fair queue
            from generation.remote import RedisExecutor

            self.executor = RedisExecutor.from_settings(settings, self.files, self.store)
            self.executor.signer = self.signer  # results are signed on receipt (the key stays on this machine)
        elif settings.decoder == "slots":  # the engine's own decoder: text jobs join running ones at the next step
            self.executor = local_decoder_executor(settings, JobRunner(self.models, self.files, signer=self.signer,
                                                                       watermark=self.watermark))
        else:
            self.executor = LocalExecutor(JobRunner(self.models, self.files, signer=self.signer,
                                                    watermark=self.watermark))
        self.scheduler = Scheduler(
            self.store, self.executor,
            SchedulerConfig(max_batch=settings.max_batch, per_user_pending=settings.user_pending,
                            max_depth=settings.queue_depth, job_timeout_s=settings.job_timeout_s,
                            # single jobs join free slots at once: nothing to gather
                            gather_s=0.0 if isinstance(self.executor, DecoderExecutor) else SchedulerConfig.gather_s),
            remove_files=self._remove_files, model_info=model_info)
        config = core_config(settings, operator=operator)
        if self.watermark is not None:
            config = dataclasses.replace(config, watermark_message=self.watermark.message)
        fingerprints = Fingerprints(TasteStore(self.db))
        presets = PresetService(self.settings_store, max_prompt_chars=config.max_prompt_chars)
        server_settings = ServerSettings(self.settings_store, BotLimits(
            max_duration_s=config.max_duration_s, max_song_s=config.max_song_s, max_variations=config.max_variations,
            models=tuple(dict.fromkeys((settings.model, *settings.extra_models)))))
        planner = Planner(scheduler=self.scheduler, store=self.store, links=self.links, files=self.files,
                          config=config, model_info=model_info, presets=presets, server_settings=server_settings,
                          fingerprints=fingerprints)
        self.core = Bandmate(planner=planner, scheduler=self.scheduler, store=self.store, links=self.links,
                             files=self.files, leaderboard=self.leaderboard, fingerprints=fingerprints,
                             presets=presets, server_settings=server_settings,
                             privacy=PrivacyService(self.privacy_store, scheduler=self.scheduler),
                             voting_window_s=settings.voting_window_s,
                             credentials=CredentialService(self.credentials, self.signer, self.store,
                                                           watermark=self.watermark,
                                                           max_bytes=config.max_upload_bytes))
        self.housekeeping = Housekeeping(
            leaderboard=self.leaderboard, server_settings=server_settings, privacy_store=self.privacy_store,
            announce=self.core.announce_winner, voting_every_s=max(0.5, min(15.0, settings.voting_window_s / 4)))
        self.metrics = self.metrics_server = None
        if settings.metrics_addr and not operator:  # [metrics] the operator's view: app/metrics.py
            from app.observability import bot_metrics

            self.metrics, self.metrics_server = bot_metrics(self, require_discord=bool(settings.discord_token))
        self.started = False
        self._closed = False

    async def _remove_files(self, rels: list[str]) -> None:
        """The scheduler's way to delete a finished chain's intermediate audio (generation/chain.py)."""
        await asyncio.to_thread(lambda: [self.files.remove(rel) for rel in rels])

    async def load_model(self):
        """Load the default model in the model thread now, so a bad id fails at start and not on the first job."""
        if self.settings.redis_url:  # [redis scale-out] the workers load the model (`python bot.py worker`)
            return None
        if isinstance(self.executor, DecoderExecutor):  # the model and its decoder's slots, before the first job
            return await self.executor.in_model_thread(self.executor.prepare, self.settings.model)
        return await self.executor.in_model_thread(self.models.get, self.settings.model)

    async def start(self) -> "Application":
        """Leftover temporary files from a crash go, then the queue resumes and housekeeping starts."""
        swept = await asyncio.to_thread(self.files.sweep_temp)
        if swept:
            log.info("removed %d temporary files left by an earlier run", swept)
        await self.scheduler.start()
        self.housekeeping.start()
        self.started = True
        return self

    async def close(self, grace_s: float = 30.0) -> None:
        """Idempotent: housekeeping stops, the queue stops (running jobs finish within grace_s or are requeued),
        then the database closes."""
        if self._closed:
            return
        self._closed = True
        await self.housekeeping.stop()
        await self.scheduler.stop(grace_s)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            log.info("latencies this run: %s", self.metrics.summary())
        self.db.close()
        self.credentials.close()

    async def __aenter__(self) -> "Application":
        try:
            if self.metrics_server is not None:  # first: alive (and saying "not ready") while the model loads
                await self.metrics_server.start()
            await self.load_model()
            return await self.start()
        except BaseException:
            await self.close(grace_s=0.0)
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()

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
from bot.presets import PresetService
from bot.rate_limit import RateLimit
from bot.privacy import PrivacyService
from generation.decoder_executor import DecoderExecutor, DecoderOptions
from generation.local_executor import LocalExecutor
from generation.models import ModelRegistry, model_info
from generation.runner import JobRunner
from generation.scheduler import Scheduler, SchedulerConfig
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
                         threads=settings.torch_threads, setting_for=setting_for)


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
                        rate_limit=RateLimit(settings.rate_burst, settings.rate_per_min))
    if operator:
        config = dataclasses.replace(config, rate_limit=RateLimit.off(), daily_quota=UNLIMITED)
    return config


class Application:
    def __init__(self, settings: Settings, *, operator: bool = False) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.db_path)
        self.files = FileStore(settings.data_dir)
        self.store = SqliteJobStore(self.db)
        self.links = ConversationLinks(self.db)
        self.leaderboard = Leaderboard(self.db)
        self.settings_store = SettingsStore(self.db)
        self.privacy_store = PrivacyStore(self.db, self.files)
        self.models = build_models(settings)
        if settings.redis_url:  # [redis scale-out] workers run the model; this process keeps the fair queue
            from generation.remote import RedisExecutor

            self.executor = RedisExecutor.from_settings(settings, self.files, self.store)
        elif settings.decoder == "slots":  # the engine's own decoder: text jobs join running ones at the next step
            self.executor = local_decoder_executor(settings, JobRunner(self.models, self.files))
        else:
            self.executor = LocalExecutor(JobRunner(self.models, self.files))
        self.scheduler = Scheduler(
            self.store, self.executor,
            SchedulerConfig(max_batch=settings.max_batch, per_user_pending=settings.user_pending,
                            max_depth=settings.queue_depth, job_timeout_s=settings.job_timeout_s,
                            # single jobs join free slots at once: nothing to gather
                            gather_s=0.0 if isinstance(self.executor, DecoderExecutor) else SchedulerConfig.gather_s),
            remove_files=self._remove_files, model_info=model_info)
        config = core_config(settings, operator=operator)
        fingerprints = Fingerprints(TasteStore(self.db))
        presets = PresetService(self.settings_store, max_prompt_chars=config.max_prompt_chars)
        server_settings = ServerSettings(self.settings_store, BotLimits(
            max_duration_s=config.max_duration_s, max_variations=config.max_variations,
            models=tuple(dict.fromkeys((settings.model, *settings.extra_models)))))
        planner = Planner(scheduler=self.scheduler, store=self.store, links=self.links, files=self.files,
                          config=config, model_info=model_info, presets=presets, server_settings=server_settings,
                          fingerprints=fingerprints)
        self.core = Bandmate(planner=planner, scheduler=self.scheduler, store=self.store, links=self.links,
                             files=self.files, leaderboard=self.leaderboard, fingerprints=fingerprints,
                             presets=presets, server_settings=server_settings,
                             privacy=PrivacyService(self.privacy_store, scheduler=self.scheduler),
                             voting_window_s=settings.voting_window_s)
        self.housekeeping = Housekeeping(
            leaderboard=self.leaderboard, server_settings=server_settings, privacy_store=self.privacy_store,
            announce=self.core.announce_winner, voting_every_s=max(0.5, min(15.0, settings.voting_window_s / 4)))
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
        self.db.close()

    async def __aenter__(self) -> "Application":
        try:
            await self.load_model()
            return await self.start()
        except BaseException:
            await self.close(grace_s=0.0)
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()

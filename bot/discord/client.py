"""The Discord client: wiring in `setup_hook`, persistent buttons, command sync only when definitions change."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
from pathlib import Path

import discord
import yarl
from discord.ext import commands

from bot.core import Bandmate, CoreConfig
from bot.fingerprint import Fingerprints
from generation.models import model_info
from bot.discord.actions import ButtonActions, InteractionJobs
from bot.discord.buttons import TrackButton
from bot.discord.cogs.collab import CollabCog
from bot.discord.cogs.compose import ComposeCog
from bot.discord.cogs.conversation import ConversationCog
from bot.discord.cogs.privacy import PrivacyCog
from bot.discord.cogs.settings import SettingsCog
from bot.privacy import PrivacyService
from bot.presets import PresetService
from bot.discord.delivery import DiscordDelivery, Messenger, StatusUpdater
from bot.discord.render import NO_PINGS

log = logging.getLogger(__name__)

# The permissions the bot needs, and no more: send messages, attach files, read message history, create public
# threads, send messages in threads.
PERMISSIONS = discord.Permissions(send_messages=True, attach_files=True, read_message_history=True,
                                  create_public_threads=True, send_messages_in_threads=True)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands"))


def point_at(api_base: str | None, gateway_url: str | None) -> None:
    """Send REST calls and the gateway to another host (an API proxy, or the tests' fake Discord)."""
    if api_base:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class BandmateBot(commands.Bot):
    """The services are built outside and passed in; setup_hook only connects them."""

    def __init__(self, *, engine, core: Bandmate, settings, message_content: bool) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, allowed_mentions=NO_PINGS,
                         help_command=None)
        self.engine = engine
        self.core = core
        self.settings = settings
        self.messenger = Messenger(self)
        self.status_updates = StatusUpdater(self, core, self.messenger)
        self.delivery = DiscordDelivery(self, core, self.messenger, voting_window=self.voting_window)
        self.jobs = InteractionJobs(core, self.status_updates)
        self.buttons = ButtonActions(core, self.jobs)
        self._unlisten = None

    async def setup_hook(self) -> None:
        await self.add_cog(ComposeCog(self, self.jobs))
        await self.add_cog(ConversationCog(self, self.core, self.status_updates))
        await self.add_cog(CollabCog(self, self.jobs, self.messenger, voting_window=self.voting_window))
        if self.core.presets is not None:
            await self.add_cog(SettingsCog(self, self.core.presets))
        if self.core.privacy is not None:
            await self.add_cog(PrivacyCog(self, self.core.privacy))
        self.add_dynamic_items(TrackButton)
        self._unlisten = self.engine.scheduler.listen(self.status_updates.on_event)
        await self.engine.scheduler.add_sink("discord", self.delivery)
        if not self.engine.started:
            await self.engine.start()
        await self.sync_commands()
        if not self.intents.message_content:
            log.warning("Running without the Message Content intent: thread replies must mention the bot "
                        "(slash commands and buttons work as usual). Enable it in the Developer Portal > Bot.")

    async def voting_window(self, guild_id: str | None) -> float:
        """Seconds a result's votes stay open (per guild through /settings; an hour by default)."""
        if guild_id:
            window = (await self.engine.settings_store.guild(guild_id)).voting_window_s
            if window:
                return float(window)
        return self.settings.voting_window_s

    async def sync_commands(self) -> None:
        """Sync slash commands only when their definitions changed since the last sync (syncs are rate limited)."""
        scopes = [discord.Object(id=g) for g in self.settings.discord_guild_ids] or [None]
        for guild in scopes:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            payload = [c.to_dict(self.tree) for c in self.tree.get_commands(guild=guild)]
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            marker = Path(self.settings.data_dir) / f"discord-commands-{guild.id if guild else 'global'}.sha256"
            if marker.exists() and marker.read_text().strip() == f"{self.application_id}:{digest}":
                log.info("slash commands unchanged; not syncing (%s)", guild.id if guild else "global")
                continue
            await self.tree.sync(guild=guild)
            marker.write_text(f"{self.application_id}:{digest}")
            log.info("synced %d slash commands (%s)", len(payload), guild.id if guild else "global")

    async def on_ready(self) -> None:
        log.info("connected as %s (%s) to %d servers; invite: %s", self.user, self.user.id if self.user else "?",
                 len(self.guilds), invite_url(self.application_id) if self.application_id else "?")

    async def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        await super().close()


def build_core(engine, settings) -> Bandmate:
    config = CoreConfig(default_model=settings.model, melody_model=settings.melody_model,
                        models=tuple(settings.extra_models),
                        max_duration_s=settings.max_duration_s,
                        max_upload_bytes=settings.max_upload_mb * 1024 * 1024, cooldown_s=settings.cooldown_s,
                        daily_quota=settings.daily_quota)
    presets = PresetService(engine.settings_store, max_duration_s=config.max_duration_s,
                            max_prompt_chars=config.max_prompt_chars, models=engine.selectable_models)
    return Bandmate(scheduler=engine.scheduler, store=engine.store, links=engine.links, files=engine.files,
                    config=config, fingerprints=Fingerprints(engine.taste), leaderboard=engine.leaderboard,
                    presets=presets, privacy=PrivacyService(engine.privacy_store, scheduler=engine.scheduler),
                    model_info=model_info)


async def run_discord(settings, engine_factory) -> int:
    """Run until SIGTERM/SIGINT: then stop taking jobs, let running ones finish (or requeue them), close."""
    point_at(settings.discord_api_base, settings.discord_gateway_url)
    engine = engine_factory(settings)
    await engine.load_model()
    core = build_core(engine, settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stopping.set)
        except (NotImplementedError, RuntimeError):
            pass
    message_content = True
    try:
        while True:
            bot = BandmateBot(engine=engine, core=core, settings=settings, message_content=message_content)
            runner = asyncio.create_task(bot.start(settings.discord_token))
            stopper = asyncio.create_task(stopping.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                log.info("stopping: finishing running jobs first")
                await engine.close(grace_s=60.0)  # status messages still go out while the bot is connected
                await bot.close()
                await asyncio.gather(runner, return_exceptions=True)
                return 0
            stopper.cancel()
            try:
                runner.result()
            except discord.PrivilegedIntentsRequired:
                if not message_content:
                    raise
                log.warning("The Message Content intent is not enabled for this bot in the Developer Portal; "
                            "reconnecting without it. Thread replies then need to mention the bot.")
                message_content = False
                await bot.close()
                continue
            except discord.LoginFailure:
                log.error("Discord rejected DISCORD_TOKEN. Reset the token in the Developer Portal (Bot > Reset "
                          "Token) and put the new one in .env.")
                await bot.close()
                return 2
            await bot.close()
            return 0
    finally:
        if engine.started:
            await engine.close(grace_s=30.0)

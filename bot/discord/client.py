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

from bot.core import Bandmate
from bot.discord.actions import ButtonActions, InteractionJobs
from bot.discord.buttons import TrackButton
from bot.discord.cogs.collab import CollabCog
from bot.discord.cogs.compose import ComposeCog
from bot.discord.cogs.conversation import ConversationCog
from bot.discord.cogs.privacy import PrivacyCog
from bot.discord.cogs.settings import SettingsCog
from bot.discord.delivery import DiscordTransport, Messenger
from bot.discord.status import StatusUpdater
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
    """The core is built outside (app/services.py) and passed in; setup_hook only connects the cogs to it."""

    def __init__(self, *, core: Bandmate, data_dir: Path, guild_ids: tuple[int, ...], message_content: bool) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, allowed_mentions=NO_PINGS,
                         help_command=None)
        self.core = core
        self.data_dir = data_dir
        self.guild_ids = guild_ids
        self.messenger = Messenger(self)
        self.status_updates = StatusUpdater(core, self.messenger)
        self.transport = DiscordTransport(self, core, self.messenger, self.status_updates)
        self.jobs = InteractionJobs(core, self.status_updates)
        self.buttons = ButtonActions(core, self.jobs)

    async def setup_hook(self) -> None:
        await self.add_cog(ComposeCog(self, self.jobs))
        await self.add_cog(ConversationCog(self, self.core, self.status_updates))
        await self.add_cog(CollabCog(self, self.jobs))
        if self.core.presets is not None and self.core.server_settings is not None:
            await self.add_cog(SettingsCog(self, self.core.presets, self.core.server_settings))
        if self.core.privacy is not None:
            await self.add_cog(PrivacyCog(self, self.core.privacy))
        self.add_dynamic_items(TrackButton)
        await self.core.connect(self.transport)
        await self.sync_commands()
        if not self.intents.message_content:
            log.warning("Running without the Message Content intent: thread replies must mention the bot "
                        "(slash commands and buttons work as usual). Enable it in the Developer Portal > Bot.")

    async def sync_commands(self) -> None:
        """Sync slash commands only when their definitions changed since the last sync (syncs are rate limited)."""
        scopes = [discord.Object(id=g) for g in self.guild_ids] or [None]
        for guild in scopes:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            payload = [c.to_dict(self.tree) for c in self.tree.get_commands(guild=guild)]
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            marker = self.data_dir / f"discord-commands-{guild.id if guild else 'global'}.sha256"
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
        self.core.disconnect_all()
        await super().close()


async def run_discord(app) -> int:
    """Run until SIGTERM/SIGINT: then stop taking jobs, let running ones finish (or requeue them), close.

    `app` is the started application (app/services.py): its core, its settings, and its `close`.
    """
    settings = app.settings
    point_at(settings.discord_api_base, settings.discord_gateway_url)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stopping.set)
        except (NotImplementedError, RuntimeError):
            pass
    message_content = True
    while True:
        bot = BandmateBot(core=app.core, data_dir=Path(settings.data_dir), guild_ids=settings.discord_guild_ids,
                          message_content=message_content)
        runner = asyncio.create_task(bot.start(settings.discord_token))
        stopper = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("stopping: finishing running jobs first")
            await app.close(grace_s=60.0)  # status messages still go out while the bot is connected
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

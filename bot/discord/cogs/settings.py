"""Slash commands: /prefer (a user's prompt presets) and /settings (a server's rules, admins only).

All the logic is in the core's `PresetService` (bot/presets.py) and `ServerSettings` (bot/guild_settings.py); this
cog only turns options into calls and answers privately
(ephemeral, no pings): presets are personal, and settings are nobody else's business in the channel.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import Refusal
from bot.discord.actions import answer, requester
from bot.guild_settings import ServerSettings
from bot.presets import PresetService

log = logging.getLogger(__name__)

RESET_WORDS = {"default", "reset", "none", "0", ""}


async def _answer(interaction: discord.Interaction, work: Awaitable[str]) -> None:
    """Run the service call and show its text, or its refusal; either way only to the person who asked."""
    try:
        text = await work
    except Refusal as refusal:
        text = refusal.user_message
    await answer(interaction, text)


async def _refused(interaction: discord.Interaction, message: str) -> None:
    async def fail() -> str:
        raise Refusal(message)

    await _answer(interaction, fail())


def _music_channel_id(interaction: discord.Interaction) -> str | None:
    """The channel to allow or disallow: a thread stands for its parent channel."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return str(channel.parent_id)
    return str(interaction.channel_id) if interaction.channel_id else None


class SettingsCog(commands.Cog):
    prefer = app_commands.Group(name="prefer", description="Your prompt presets: write --name in a prompt")
    settings = app_commands.guild_only()(app_commands.default_permissions(manage_guild=True)(
        app_commands.Group(name="settings", description="This server's Bandmate settings (admins)")))
    blocklist = app_commands.Group(name="blocklist", description="Words and phrases prompts may not contain",
                                   parent=settings)

    def __init__(self, bot: commands.Bot, presets: PresetService, server: ServerSettings) -> None:
        self.bot = bot
        self.presets = presets
        self.server = server

    # -- /prefer ----------------------------------------------------------------------------------------------

    @prefer.command(name="set")
    @app_commands.describe(name="Short name, used as --name in prompts (letters, digits, - and _)",
                           value="The text it stands for, e.g. soft pads, reverb, slow")
    async def prefer_set(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 34],
                         value: app_commands.Range[str, 1, 200]) -> None:
        """Save a preset: /compose piano --name then means "piano, <value>"."""
        await _answer(interaction, self.presets.set(requester(interaction), name, value))

    @prefer.command(name="remove")
    @app_commands.describe(name="The preset to remove")
    async def prefer_remove(self, interaction: discord.Interaction, name: str) -> None:
        """Remove one of your presets."""
        await _answer(interaction, self.presets.remove(requester(interaction), name))

    @prefer_remove.autocomplete("name")
    async def _preset_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        needle = current.strip().lstrip("-").lower()
        try:
            names = await self.presets.names(requester(interaction))
        except Exception:  # autocomplete must answer quickly or not at all; a failure here is not worth a crash
            log.exception("preset autocomplete failed")
            return []
        return [app_commands.Choice(name=f"--{n}", value=n) for n in names if needle in n][:25]

    @prefer.command(name="list")
    async def prefer_list(self, interaction: discord.Interaction) -> None:
        """Show your presets."""
        await _answer(interaction, self.presets.list(requester(interaction)))

    # -- /settings --------------------------------------------------------------------------------------------

    async def _admin(self, interaction: discord.Interaction) -> bool:
        """Runtime check on top of default_permissions, which a server can override per role or channel."""
        if interaction.guild_id is None:
            await _refused(interaction, "Settings belong to a server; use this command in one.")
            return False
        if not requester(interaction).is_admin:
            await _refused(interaction, "Only server admins (Manage Server) can use /settings.")
            return False
        return True

    @settings.command(name="show")
    async def settings_show(self, interaction: discord.Interaction) -> None:
        """Show this server's Bandmate settings."""
        if await self._admin(interaction):
            await _answer(interaction, self.server.settings_text(interaction.guild_id, lambda cid: f"<#{cid}>"))

    @settings.command(name="set")
    @app_commands.describe(
        duration="Default seconds of music when a prompt gives none (0 = bot default)",
        model="Default model (\"default\" = bot default)",
        max_variations="Most takes one request may ask for (1-4)",
        voting_window_minutes="How long after a result votes decide the winner",
        retention_days="Delete tracks after this many days (0 = keep forever)",
        allow_model_choice="Whether members may pick the model themselves",
        manifest_prompt="Whether the prompt goes into each file's Content Credentials",
        longest_song="Longest ACE-Step song in seconds, up to the bot's own limit (0 = bot default)",
    )
    async def settings_set(
        self, interaction: discord.Interaction,
        duration: app_commands.Range[float, 0.0, 300.0] | None = None,
        model: app_commands.Range[str, 1, 200] | None = None,
        max_variations: app_commands.Range[int, 1, 4] | None = None,
        voting_window_minutes: app_commands.Range[int, 1, 10_080] | None = None,
        retention_days: app_commands.Range[int, 0, 3650] | None = None,
        allow_model_choice: bool | None = None,
        manifest_prompt: bool | None = None,
        longest_song: app_commands.Range[int, 0, 600] | None = None,
    ) -> None:
        """Change this server's settings; options you leave out stay as they are."""
        if not await self._admin(interaction):
            return
        changes: dict[str, Any] = {}
        if duration is not None:
            changes["default_duration_s"] = None if duration == 0 else duration
        if model is not None:
            changes["default_model"] = None if model.strip().lower() in RESET_WORDS else model.strip()
        if max_variations is not None:
            changes["max_variations"] = max_variations
        if voting_window_minutes is not None:
            changes["voting_window_s"] = voting_window_minutes * 60
        if retention_days is not None:
            changes["retention_days"] = None if retention_days == 0 else retention_days
        if allow_model_choice is not None:
            changes["allow_model_choice"] = allow_model_choice
        if manifest_prompt is not None:
            changes["manifest_prompt"] = manifest_prompt
        if longest_song is not None:
            changes["max_song_s"] = None if longest_song == 0 else float(longest_song)
        await _answer(interaction, self.server.update_settings(requester(interaction), interaction.guild_id,
                                                                **changes))

    @settings_set.autocomplete("model")
    async def _models(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        options = ["default", *self.server.models]
        return [app_commands.Choice(name=m, value=m) for m in options if current.lower() in m.lower()][:25]

    @settings.command(name="channels")
    @app_commands.describe(action="add or remove this channel, or clear the list (then every channel works)")
    async def settings_channels(self, interaction: discord.Interaction,
                                action: Literal["add", "remove", "clear"]) -> None:
        """Choose the channels music may be made in (none chosen: every channel)."""
        if not await self._admin(interaction):
            return
        who, guild = requester(interaction), interaction.guild_id
        channel = _music_channel_id(interaction)
        if action == "clear":
            await _answer(interaction, self.server.clear_channels(who, guild))
        elif channel is None:
            await _refused(interaction, "I can't tell which channel this is.")
        elif action == "add":
            await _answer(interaction, self.server.add_channel(who, guild, channel))
        else:
            await _answer(interaction, self.server.remove_channel(who, guild, channel))

    @blocklist.command(name="add")
    @app_commands.describe(phrase="A word or phrase prompts may not contain")
    async def blocklist_add(self, interaction: discord.Interaction, phrase: app_commands.Range[str, 1, 60]) -> None:
        """Block a word or phrase (also caught spaced out, in leetspeak or with accents)."""
        if await self._admin(interaction):
            await _answer(interaction, self.server.block(requester(interaction), interaction.guild_id, phrase))

    @blocklist.command(name="remove")
    @app_commands.describe(phrase="The blocked word or phrase to allow again")
    async def blocklist_remove(self, interaction: discord.Interaction,
                               phrase: app_commands.Range[str, 1, 60]) -> None:
        """Allow a blocked word or phrase again."""
        if await self._admin(interaction):
            await _answer(interaction, self.server.unblock(requester(interaction), interaction.guild_id, phrase))

    @blocklist_remove.autocomplete("phrase")
    async def _blocked(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        try:
            entries = await self.server.blocklist_entries(requester(interaction), interaction.guild_id)
        except Refusal:
            return []
        except Exception:
            log.exception("blocklist autocomplete failed")
            return []
        needle = current.strip().lower()
        return [app_commands.Choice(name=e, value=e) for e in entries if needle in e][:25]

    @blocklist.command(name="list")
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        """Show the blocked words and phrases."""
        if await self._admin(interaction):
            await _answer(interaction, self.server.blocklist_text(requester(interaction), interaction.guild_id))

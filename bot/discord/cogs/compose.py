"""Slash commands: /compose, /queue, /cancel, /track, /help, /remove."""

from __future__ import annotations

import logging
from dataclasses import replace

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import ComposeOptions, Refusal, Request, UploadInfo
from bot.discord.actions import InteractionJobs, answer, download_attachment, requester
from bot.discord.render import NO_PINGS, build_view, render

log = logging.getLogger(__name__)


class ComposeCog(commands.Cog):
    def __init__(self, bot: commands.Bot, jobs: InteractionJobs) -> None:
        self.bot = bot
        self.jobs = jobs
        self.core = jobs.core

    @app_commands.command(name="compose")
    @app_commands.describe(
        prompt="What to make, e.g. lo-fi piano, rainy night",
        duration="Seconds of music (with audio: seconds to add)",
        variations="How many takes to make at once (1-4)",
        seed="Same seed, same music",
        temperature="Higher is wilder (default 1.0)",
        guidance="How closely to follow the prompt (default 3)",
        audio="An audio file to continue (mp3, wav, flac, ogg, m4a)",
        model="Which model makes it (where this server allows choosing)",
    )
    async def compose(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 300],
        duration: app_commands.Range[float, 1.0, 300.0] | None = None, variations: app_commands.Range[int, 1, 4] = 1,
        seed: app_commands.Range[int, 0, 2147483647] | None = None,
        temperature: app_commands.Range[float, 0.05, 2.0] | None = None,
        guidance: app_commands.Range[float, 1.0, 15.0] | None = None, audio: discord.Attachment | None = None,
        model: str | None = None,
    ) -> None:
        """Make music from a prompt, or continue an audio file."""
        opts = ComposeOptions(prompt=prompt, duration_s=duration, variations=variations, seed=seed,
                              temperature=temperature, guidance=guidance, model=model)

        async def plan(request: Request):
            if audio is not None and audio.size > interaction.filesize_limit * 4:
                raise Refusal("That file is too large.")
            info = UploadInfo(audio.filename, audio.size) if audio is not None else None
            return await self.core.plan_compose(request, opts, info)

        download = (lambda: download_attachment(audio)) if audio is not None else None
        await self.jobs.start(interaction, plan, download)

    @compose.autocomplete("model")
    async def _model_autocomplete(self, interaction: discord.Interaction,
                                  current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=self.core.model_name(m)[:100], value=m[:100]) for m in self.core.models
                if current.lower() in m.lower()][:25]

    @app_commands.command(name="queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Your pieces in the queue, their places and when they should be ready."""
        await answer(interaction, self.core.queue_text(requester(interaction)))

    @app_commands.command(name="cancel")
    @app_commands.describe(job="The job id (default: your latest)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        """Cancel a piece that is waiting or being made."""
        await answer(interaction, await self.core.cancel(requester(interaction), job))

    @app_commands.command(name="track")
    @app_commands.describe(id="The track id (in the file name: bandmate-<id>.mp3)")
    async def track(self, interaction: discord.Interaction, id: str) -> None:
        """Show a track again, with its buttons."""
        try:
            message = await self.core.track_message(id)
        except Refusal as refusal:
            await answer(interaction, refusal.user_message)
            return
        files = [discord.File(item.path, filename=item.filename) for item in message.files]
        await interaction.response.send_message(render(message.text), files=files,
                                                view=build_view(message.buttons), allowed_mentions=NO_PINGS)

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction) -> None:
        """How to make music with Bandmate."""
        await answer(interaction, self.core.help_text())

    @app_commands.command(name="remove")
    @app_commands.describe(id="The track id to remove")
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def remove(self, interaction: discord.Interaction, id: str) -> None:
        """Remove a track and its files (admins)."""
        perms = interaction.permissions
        who = requester(interaction)
        if perms.manage_messages and not who.is_admin:  # Manage Messages is enough here
            who = replace(who, is_admin=True)
        try:
            text = await self.core.remove_track(who, id)
        except Refusal as refusal:
            text = refusal.user_message
        await answer(interaction, text)

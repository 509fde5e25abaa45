"""Slash commands: /compose, /queue, /cancel, /track, /help, /remove."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import ComposeOptions, Refusal, Upload
from bot.discord.actions import InteractionJobs, requester
from bot.discord.render import NO_PINGS, build_view, escape

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

        async def precheck() -> None:
            parent = getattr(interaction.channel, "parent_id", None)
            await self.core.prepare(requester(interaction), opts, parent_channel_id=str(parent) if parent else None)
            if audio is not None:
                self.core.check_upload_meta(audio.filename, audio.size)
                if audio.size > interaction.filesize_limit * 4:
                    raise Refusal("That file is too large.")

        async def make(delivery: dict, key: str, expires: float):
            upload = None
            if audio is not None:
                try:
                    upload = Upload(audio.filename, await audio.read())
                except discord.HTTPException:
                    raise Refusal("I couldn't download that attachment; please try again.") from None
            return await self.core.compose(requester(interaction), opts, delivery=delivery, upload=upload,
                                           idempotency_key=key, interaction_expires_at=expires)

        await self.jobs.start(interaction, make, precheck)

    @compose.autocomplete("model")
    async def _model_autocomplete(self, interaction: discord.Interaction,
                                  current: str) -> list[app_commands.Choice[str]]:
        models = self.core.presets.models if self.core.presets is not None else (self.core.config.default_model,)
        return [app_commands.Choice(name=self.core.model_name(m)[:100], value=m[:100]) for m in models
                if current.lower() in m.lower()][:25]

    @app_commands.command(name="queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Your pieces in the queue, their places and when they should be ready."""
        await interaction.response.send_message(self.core.queue_text(requester(interaction)), ephemeral=True,
                                                allowed_mentions=NO_PINGS)

    @app_commands.command(name="cancel")
    @app_commands.describe(job="The job id (default: your latest)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        """Cancel a piece that is waiting or being made."""
        text = await self.core.cancel(requester(interaction), job)
        await interaction.response.send_message(escape(text), ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="track")
    @app_commands.describe(id="The track id (in the file name: bandmate-<id>.mp3)")
    async def track(self, interaction: discord.Interaction, id: str) -> None:
        """Show a track again, with its buttons."""
        try:
            track = await self.core.track(id)
        except Refusal as refusal:
            await interaction.response.send_message(refusal.user_message, ephemeral=True)
            return
        job = await self.core.store.get_job(track.job_id)
        message = self.core.result_message(job, [track], escape, await self.core.store.vote_tally(track.job_id))
        files = [discord.File(item.path, filename=item.filename) for item in message.files]
        await interaction.response.send_message(message.text, files=files, view=build_view(message.buttons),
                                                allowed_mentions=NO_PINGS)

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction) -> None:
        """How to make music with Bandmate."""
        await interaction.response.send_message(self.core.help_text(), ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="remove")
    @app_commands.describe(id="The track id to remove")
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def remove(self, interaction: discord.Interaction, id: str) -> None:
        """Remove a track and its files (admins)."""
        perms = interaction.permissions
        if not (perms.manage_messages or perms.manage_guild or perms.administrator):
            await interaction.response.send_message("Only admins can remove tracks.", ephemeral=True)
            return
        paths = await self.core.store.delete_track(id)
        for rel in paths:
            self.core.files.remove(rel)
        text = f"Removed track `{escape(id)}`." if paths else "No such track."
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)

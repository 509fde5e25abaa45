"""The collaborator: /style, /taste, /top, /remix, /song, /extend, and voting windows that close with a winner."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.core import Refusal, Upload
from bot.discord.actions import InteractionJobs, requester
from bot.discord.render import NO_PINGS, build_view, escape

log = logging.getLogger(__name__)

DEFAULT_VOTING_WINDOW_S = 3600.0


class CollabCog(commands.Cog):
    def __init__(self, bot: commands.Bot, jobs: InteractionJobs, messenger, voting_window=None) -> None:
        self.bot = bot
        self.jobs = jobs
        self.core = jobs.core
        self.messenger = messenger
        self.voting_window = voting_window  # async (guild_id) -> seconds; None: an hour

    async def cog_load(self) -> None:
        default = float(getattr(self.bot.settings, "voting_window_s", DEFAULT_VOTING_WINDOW_S))
        self.close_windows.change_interval(seconds=max(0.5, min(15.0, default / 4)))
        self.close_windows.start()
        self.sweep_retention.start()

    async def cog_unload(self) -> None:
        self.close_windows.cancel()
        self.sweep_retention.cancel()

    @tasks.loop(minutes=30)
    async def sweep_retention(self) -> None:
        """Delete tracks older than each server's retention period (set by its admins with /settings)."""
        presets, privacy = self.core.presets, self.core.privacy
        if presets is None or privacy is None:
            return
        for guild in list(self.bot.guilds):
            rules = await presets.store.guild(str(guild.id))
            if rules.retention_days:
                removed = await privacy.store.sweep_retention(str(guild.id), rules.retention_days * 86_400)
                if removed:
                    log.info("retention: removed %d tracks of server %s", removed, guild.id)

    @sweep_retention.before_loop
    async def _wait_ready_sweep(self) -> None:
        await self.bot.wait_until_ready()

    style = app_commands.Group(name="style", description="Your musical fingerprint: styles to lean towards")

    async def _tag_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = await self.core.fingerprints.suggest(str(interaction.user.id), current)
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    @style.command(name="add")
    @app_commands.describe(tag="A genre, mood, instrument, tempo or era")
    @app_commands.autocomplete(tag=_tag_autocomplete)
    async def style_add(self, interaction: discord.Interaction, tag: str) -> None:
        """Lean your music towards a style."""
        await self._style(interaction, "add", tag)

    @style.command(name="remove")
    @app_commands.describe(tag="A style never to blend in")
    @app_commands.autocomplete(tag=_tag_autocomplete)
    async def style_remove(self, interaction: discord.Interaction, tag: str) -> None:
        """Never blend a style into your music."""
        await self._style(interaction, "remove", tag)

    @style.command(name="list")
    async def style_list(self, interaction: discord.Interaction) -> None:
        """The styles you set."""
        await self._style(interaction, "list")

    async def _style(self, interaction: discord.Interaction, action: str, tag: str | None = None) -> None:
        text = await self.core.fingerprints.style(str(interaction.user.id), action, tag)
        await interaction.response.send_message(escape(text), ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="taste")
    async def taste(self, interaction: discord.Interaction) -> None:
        """Your musical fingerprint: what Bandmate has learnt you like, and why."""
        user = str(interaction.user.id)
        text = await self.core.fingerprints.describe(user)
        with tempfile.TemporaryDirectory() as tmp:
            path = await self.core.fingerprints.chart(user, Path(tmp) / "taste.png")
            await interaction.response.send_message(escape(text)[:2000], file=discord.File(path, "taste.png"),
                                                    ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="top")
    @app_commands.describe(period="This week, or all time")
    @app_commands.choices(period=[app_commands.Choice(name="this week", value="week"),
                                  app_commands.Choice(name="all time", value="all")])
    async def top(self, interaction: discord.Interaction, period: str = "week") -> None:
        """This server's most voted tracks."""
        message = await self.core.top(str(interaction.guild_id) if interaction.guild_id else None, period, escape)
        view = build_view(message.buttons)
        kwargs = {"view": view} if view is not None else {}
        await interaction.response.send_message(message.text, ephemeral=message.ephemeral,
                                                allowed_mentions=NO_PINGS, **kwargs)

    @app_commands.command(name="remix")
    @app_commands.describe(audio="The track to remix (its melody is kept)", style="The new style",
                           duration="Seconds (default 10)", seed="Same seed, same music")
    async def remix(self, interaction: discord.Interaction, audio: discord.Attachment,
                    style: app_commands.Range[str, 1, 300], duration: app_commands.Range[float, 1.0, 30.0] | None = None,
                    seed: app_commands.Range[int, 0, 2147483647] | None = None) -> None:
        """Keep a track's melody and change its style."""

        def precheck() -> None:
            self.core.check_upload_meta(audio.filename, audio.size)
            if not self.core.config.melody_model:
                raise Refusal("Remix needs a melody model, and none is configured here (BANDMATE_MELODY_MODEL).")

        async def make(delivery: dict, key: str, expires: float):
            data = await audio.read()
            return await self.core.remix(requester(interaction), Upload(audio.filename, data), style, delivery=delivery,
                                         duration_s=duration, seed=seed, idempotency_key=key,
                                         interaction_expires_at=expires)

        await self.jobs.start(interaction, make, precheck)

    @app_commands.command(name="song")
    @app_commands.describe(prompt="The song's style", sections="e.g. intro 8, verse 16, chorus 16, verse 16, chorus 16, outro 8",
                           chorus="How a chorus returns: the same audio, or a new take on its melody")
    @app_commands.choices(chorus=[app_commands.Choice(name="the first chorus again", value="reuse"),
                                  app_commands.Choice(name="a new take on its melody", value="melody")])
    async def song(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 300],
                   sections: app_commands.Range[str, 1, 400],
                   seed: app_commands.Range[int, 0, 2147483647] | None = None,
                   chorus: str = "reuse") -> None:
        """A whole song with structure: sections, and a chorus that really returns."""

        def precheck() -> None:
            if chorus == "melody" and not self.core.config.melody_model:
                raise Refusal("A chorus that follows its melody needs a melody model, and none is configured here "
                              "(BANDMATE_MELODY_MODEL).")

        async def make(delivery: dict, key: str, expires: float):
            return await self.core.song(requester(interaction), prompt, sections, delivery=delivery, seed=seed,
                                        chorus=chorus, idempotency_key=key, interaction_expires_at=expires)

        await self.jobs.start(interaction, make, precheck)

    @app_commands.command(name="extend")
    @app_commands.describe(track="The track id (in its file name)", seconds="Total length to reach, up to 300")
    async def extend(self, interaction: discord.Interaction, track: str,
                     seconds: app_commands.Range[float, 2.0, 300.0]) -> None:
        """Make a track longer, up to 5 minutes, as one file."""

        async def make(delivery: dict, key: str, expires: float):
            return await self.core.extend_to(requester(interaction), track, seconds, delivery=delivery,
                                             idempotency_key=key, interaction_expires_at=expires)

        await self.jobs.start(interaction, make, lambda: self.core.check_extend(track))

    # -- voting windows -----------------------------------------------------------------------------------

    async def window_for(self, guild_id: str | None) -> float:
        if self.voting_window is None:
            return DEFAULT_VOTING_WINDOW_S
        return float(await self.voting_window(guild_id))

    @tasks.loop(seconds=15.0)
    async def close_windows(self) -> None:
        """Close due voting windows and mark each winner on its message."""
        board = self.core.leaderboard
        if board is None:
            return
        for job_id, winner in await board.close_due(time.time()):
            try:
                await self.mark_winner(job_id, winner)
            except discord.HTTPException as error:
                log.info("could not mark the winner of job %s: %s", job_id, error)

    @close_windows.before_loop
    async def _wait_ready(self) -> None:
        await self.bot.wait_until_ready()

    async def mark_winner(self, job_id: str, winner: str | None) -> None:
        job = await self.core.store.get_job(job_id)
        tracks = await self.core.store.tracks_for_job(job_id)
        if job is None or not tracks or winner is None:
            return
        message = self.core.result_message(job, tracks, escape, await self.core.store.vote_tally(job_id), winner)
        for ref in await self.core.links.refs_for(job_id):
            if ref.startswith("discord:message:"):
                await self.messenger.edit(job, int(ref.rsplit(":", 1)[1]), message.text + f"\nfor <@{job.user_id}>",
                                          view=build_view(message.buttons))
                return

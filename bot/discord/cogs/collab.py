"""The collaborator: /style, /taste, /top, /remix, /song, /extend. (Voting windows close in the core's
housekeeping; the transport only marks the winner, in `DiscordTransport.announce_winner`.)"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import Request, SongOptions, UploadInfo
from bot.discord.actions import InteractionJobs, answer, download_attachment
from bot.discord.cogs.vocals import read_lyrics_file
from bot.discord.lyrics_form import LyricsForm
from bot.discord.render import NO_PINGS, build_view, render

log = logging.getLogger(__name__)


class CollabCog(commands.Cog):
    def __init__(self, bot: commands.Bot, jobs: InteractionJobs) -> None:
        self.bot = bot
        self.jobs = jobs
        self.core = jobs.core

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
        await answer(interaction, await self.core.fingerprints.style(str(interaction.user.id), action, tag))

    @app_commands.command(name="taste")
    async def taste(self, interaction: discord.Interaction) -> None:
        """Your musical fingerprint: what Bandmate has learnt you like, and why."""
        user = str(interaction.user.id)
        text = await self.core.fingerprints.describe(user)
        with tempfile.TemporaryDirectory() as tmp:
            path = await self.core.fingerprints.chart(user, Path(tmp) / "taste.png")
            await answer(interaction, text, file=discord.File(path, "taste.png"))

    @app_commands.command(name="top")
    @app_commands.describe(period="This week, or all time")
    @app_commands.choices(period=[app_commands.Choice(name="this week", value="week"),
                                  app_commands.Choice(name="all time", value="all")])
    async def top(self, interaction: discord.Interaction, period: str = "week") -> None:
        """This server's most voted tracks."""
        message = await self.core.top(str(interaction.guild_id) if interaction.guild_id else None, period)
        view = build_view(message.buttons)
        kwargs = {"view": view} if view is not None else {}
        await interaction.response.send_message(render(message.text), ephemeral=message.ephemeral,
                                                allowed_mentions=NO_PINGS, **kwargs)

    @app_commands.command(name="remix")
    @app_commands.describe(audio="The track to remix (its melody is kept)", style="The new style",
                           duration="Seconds (default 10)", seed="Same seed, same music")
    async def remix(self, interaction: discord.Interaction, audio: discord.Attachment,
                    style: app_commands.Range[str, 1, 300], duration: app_commands.Range[float, 1.0, 30.0] | None = None,
                    seed: app_commands.Range[int, 0, 2147483647] | None = None) -> None:
        """Keep a track's melody and change its style."""

        async def plan(request: Request):
            return await self.core.plan_remix(request, UploadInfo(audio.filename, audio.size), style,
                                              duration_s=duration, seed=seed)

        await self.jobs.start(interaction, plan, lambda: download_attachment(audio))

    @app_commands.command(name="song")
    @app_commands.describe(prompt="The song's style", sections="e.g. intro 8, verse 16, chorus 16, verse 16, chorus 16, outro 8",
                           chorus="How a chorus returns: the same audio, or a new take on its melody",
                           lyrics="Words to sing: [verse] ... [chorus] ... (\" / \" breaks a line); ACE-Step models",
                           lyrics_file="A .txt file with the lyrics, for long ones",
                           lyrics_form="Type the lyrics in a form, with line breaks",
                           language="The sung language, e.g. en", bpm="Tempo in beats a minute",
                           key="e.g. C major, F# minor", duration="Seconds (default: as long as the lyrics need)",
                           reference="Audio whose sound the song takes (\"sound like this\")")
    @app_commands.choices(chorus=[app_commands.Choice(name="the first chorus again", value="reuse"),
                                  app_commands.Choice(name="a new take on its melody", value="melody")])
    async def song(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 300],
                   sections: app_commands.Range[str, 1, 400] | None = None,
                   seed: app_commands.Range[int, 0, 2147483647] | None = None,
                   chorus: str = "reuse", lyrics: app_commands.Range[str, 1, 4000] | None = None,
                   lyrics_file: discord.Attachment | None = None, lyrics_form: bool = False,
                   language: app_commands.Range[str, 2, 10] | None = None,
                   bpm: app_commands.Range[int, 30, 300] | None = None, key: app_commands.Range[str, 1, 20] | None = None,
                   duration: app_commands.Range[float, 1.0, 600.0] | None = None,
                   reference: discord.Attachment | None = None) -> None:
        """A whole song: sung from lyrics (ACE-Step), or sections with a chorus that really returns."""
        sung = (lyrics is not None or lyrics_file is not None or lyrics_form or reference is not None
                or not sections)

        def planned(typed: str | None = None):
            async def plan(request: Request):
                if not sung:
                    return await self.core.plan_song(request, prompt, sections, seed=seed, chorus=chorus)
                words = typed if typed is not None else lyrics or ""
                if lyrics_file is not None:
                    words = await read_lyrics_file(lyrics_file)
                opts = SongOptions(prompt=prompt, lyrics=words, language=language, bpm=bpm, key=key,
                                   duration_s=duration, seed=seed)
                info = UploadInfo(reference.filename, reference.size) if reference is not None else None
                return await self.core.plan_lyric_song(request, opts, info)
            return plan

        download = (lambda: download_attachment(reference)) if sung and reference is not None else None
        if lyrics_form and lyrics is None and lyrics_file is None:  # the words come from the form's submission
            async def submitted(form_interaction: discord.Interaction, typed: str) -> None:
                await self.jobs.start(form_interaction, planned(typed), download)

            await interaction.response.send_modal(LyricsForm(submitted))
            return
        await self.jobs.start(interaction, planned(), download)

    @app_commands.command(name="extend")
    @app_commands.describe(track="The track id (in its file name)", seconds="Total length to reach, up to 300")
    async def extend(self, interaction: discord.Interaction, track: str,
                     seconds: app_commands.Range[float, 2.0, 300.0]) -> None:
        """Make a track longer, up to 5 minutes, as one file."""

        async def plan(request: Request):
            return await self.core.plan_extend_to(request, track, seconds)

        await self.jobs.start(interaction, plan)

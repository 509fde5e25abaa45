"""ACE-Step's slash commands: /cover (a track or an upload in another style) and /stems (a track split into one
MP3 per stem). /song's lyrics live in the collab cog's /song; the 🎚 button is in bot/discord/actions.py."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import Refusal, Request, UploadInfo
from bot.discord.actions import InteractionJobs, download_attachment

MAX_LYRICS_FILE_BYTES = 64 * 1024


async def read_lyrics_file(attachment: discord.Attachment) -> str:
    """A lyrics .txt attachment as text (UTF-8), refused when it is large or not text."""
    if attachment.size > MAX_LYRICS_FILE_BYTES:
        raise Refusal("That lyrics file is too large; lyrics can be up to 4000 characters.")
    try:
        return (await attachment.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal("The lyrics file must be plain text (UTF-8).") from None
    except discord.HTTPException:
        raise Refusal("I couldn't download that lyrics file; please try again.") from None


class VocalsCog(commands.Cog):
    def __init__(self, bot: commands.Bot, jobs: InteractionJobs) -> None:
        self.bot = bot
        self.jobs = jobs
        self.core = jobs.core

    @app_commands.command(name="cover")
    @app_commands.describe(style="The new style, e.g. acoustic folk with a female singer",
                           track="A track id (in its file name) to cover", audio="Or an audio file to cover",
                           strength="0 to 1: how much of the original's structure stays (default 0.8)")
    async def cover(self, interaction: discord.Interaction, style: app_commands.Range[str, 1, 300],
                    track: str | None = None, audio: discord.Attachment | None = None,
                    strength: app_commands.Range[float, 0.0, 1.0] | None = None) -> None:
        """Remake a track (any model's) or an audio file in another style."""

        async def plan(request: Request):
            info = UploadInfo(audio.filename, audio.size) if audio is not None else None
            return await self.core.plan_cover(request, style, track_id=track, upload=info, strength=strength)

        download = (lambda: download_attachment(audio)) if audio is not None and track is None else None
        await self.jobs.start(interaction, plan, download)

    @app_commands.command(name="stems")
    @app_commands.describe(track="A track id (in its file name)", audio="Or an audio file to split")
    async def stems(self, interaction: discord.Interaction, track: str | None = None,
                    audio: discord.Attachment | None = None) -> None:
        """Split a track into stems: vocals, drums, bass and the rest, one MP3 each."""

        async def plan(request: Request):
            info = UploadInfo(audio.filename, audio.size) if audio is not None else None
            return await self.core.plan_stems(request, track_id=track, upload=info)

        download = (lambda: download_attachment(audio)) if audio is not None and track is None else None
        await self.jobs.start(interaction, plan, download)

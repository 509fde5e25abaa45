"""`/verify FILE`, and a message `verify` with an attachment or replying to one: what its Content Credentials say.

The attachment's announced size is checked before anything is downloaded (a 100 MB file is refused unread).
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import Bandmate, Refusal, Upload
from bot.discord.actions import answer, download_attachment
from bot.discord.render import NO_PINGS, render
from bot.verify import is_verify_request

log = logging.getLogger(__name__)


class VerifyCog(commands.Cog):
    def __init__(self, bot: commands.Bot, core: Bandmate) -> None:
        self.bot = bot
        self.core = core

    async def _check(self, attachment: discord.Attachment) -> str:
        """The answer for one attachment (markup); refusals become the answer."""
        try:
            self.core.check_verify_size(attachment.size)
            upload: Upload = await download_attachment(attachment)
            return await self.core.verify_upload(upload)
        except Refusal as refusal:
            return refusal.user_message

    @app_commands.command(name="verify")
    @app_commands.describe(file="An audio file: did Bandmate make it, with which model, from what?")
    async def verify(self, interaction: discord.Interaction, file: discord.Attachment) -> None:
        """Check a file's Content Credentials (who made it, with which model, from which tracks)."""
        try:
            self.core.check_verify_size(file.size)
        except Refusal as refusal:
            await answer(interaction, refusal.user_message)
            return
        await interaction.response.defer(thinking=True)
        text = await self._check(file)
        await interaction.followup.send(render(text), allowed_mentions=NO_PINGS)

    async def _attachment_of(self, message: discord.Message) -> discord.Attachment | None:
        if message.attachments:
            return message.attachments[0]
        ref = message.reference
        if ref is None or not ref.message_id:
            return None
        target = ref.resolved if isinstance(ref.resolved, discord.Message) else None
        if target is None:
            try:
                target = await message.channel.fetch_message(ref.message_id)
            except discord.HTTPException:
                return None
        return target.attachments[0] if target.attachments else None

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id or not is_verify_request(message.content):
            return
        attachment = await self._attachment_of(message)
        if attachment is None and message.reference is None:
            return  # the word alone in a conversation is not a request
        if attachment is None:
            text = "Attach an audio file to `verify`, or reply `verify` to a message that has one."
        else:
            text = await self._check(attachment)
        await message.reply(render(text), allowed_mentions=NO_PINGS, mention_author=False)

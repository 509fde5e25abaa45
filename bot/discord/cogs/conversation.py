"""Thread replies, and replies to a result message, become continue / extend / edit requests."""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.core import Bandmate, Request, Requester
from bot.discord.delivery import DiscordDelivery
from bot.discord.status import StatusUpdater
from bot.discord.render import NO_PINGS, render

log = logging.getLogger(__name__)

DM_UPLOAD_LIMIT = 10 * 1024 * 1024


class ConversationCog(commands.Cog):
    def __init__(self, bot: commands.Bot, core: Bandmate, status: StatusUpdater) -> None:
        self.bot = bot
        self.core = core
        self.status = status

    async def job_for(self, message: discord.Message) -> str | None:
        refs = []
        if isinstance(message.channel, discord.Thread):
            refs.append(f"discord:thread:{message.channel.id}")
        if message.reference is not None and message.reference.message_id:
            refs.append(f"discord:message:{message.reference.message_id}")
        return await self.core.job_for_ref(*refs) if refs else None

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id:
            return
        job_id = await self.job_for(message)
        if job_id is None:
            return
        text = message.content
        if not text.strip():
            if not self.bot.intents.message_content:
                await message.reply("I can't read messages here unless they mention me: write `@Bandmate continue`, "
                                    "or use the buttons.", allowed_mentions=NO_PINGS, mention_author=False)
            return
        parent = getattr(message.channel, "parent_id", None)
        who = Requester(user_id=str(message.author.id), name=message.author.display_name,
                        guild_id=str(message.guild.id) if message.guild else None, channel_id=str(message.channel.id),
                        parent_channel_id=str(parent) if parent else None)
        status = await message.reply("🎼 …", allowed_mentions=NO_PINGS, mention_author=False)
        delivery = DiscordDelivery(channel_id=str(message.channel.id), guild_id=who.guild_id,
                                   status_message_id=str(status.id),
                                   attachment_size_limit=message.guild.filesize_limit if message.guild
                                   else DM_UPLOAD_LIMIT)
        request = Request(who, f"discord:message:{message.id}", delivery.address())
        outcome = await self.core.reply(request, job_id, text)
        if outcome.job is not None:
            self.status.watch(outcome.job, outcome.text)  # its status message: one ordered stream of edits
        else:
            await status.edit(content=render(outcome.text), allowed_mentions=NO_PINGS)

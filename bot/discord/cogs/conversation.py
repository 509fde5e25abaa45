"""Thread replies, and replies to a result message, become continue / extend / edit requests."""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.core import Bandmate, Requester
from bot.discord.delivery import StatusUpdater
from bot.discord.render import NO_PINGS

log = logging.getLogger(__name__)


class ConversationCog(commands.Cog):
    def __init__(self, bot: commands.Bot, core: Bandmate, status: StatusUpdater) -> None:
        self.bot = bot
        self.core = core
        self.status = status

    async def job_for(self, message: discord.Message) -> str | None:
        if isinstance(message.channel, discord.Thread):
            job_id = await self.core.links.job_for(f"discord:thread:{message.channel.id}")
            if job_id:
                return job_id
        ref = message.reference
        if ref is not None and ref.message_id:
            return await self.core.links.job_for(f"discord:message:{ref.message_id}")
        return None

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
        who = Requester(user_id=str(message.author.id), name=message.author.display_name,
                        guild_id=str(message.guild.id) if message.guild else None, channel_id=str(message.channel.id))
        status = await message.reply("🎼 …", allowed_mentions=NO_PINGS, mention_author=False)
        limit = message.guild.filesize_limit if message.guild else 10 * 1024 * 1024
        delivery = {"sink": "discord", "channel_id": str(message.channel.id), "guild_id": who.guild_id,
                    "status_message_id": str(status.id), "reply_to": str(message.id), "attachment_size_limit": limit}
        outcome = await self.core.reply(who, job_id, text, delivery=delivery,
                                        idempotency_key=f"discord:message:{message.id}")
        if outcome.job is not None:
            self.status.watch(outcome.job)
        await status.edit(content=discord.utils.escape_mentions(outcome.text), allowed_mentions=NO_PINGS)

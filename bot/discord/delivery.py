"""Posting results and keeping status messages current, through the interaction while its token lives, and as
ordinary channel messages after (interaction tokens expire after 15 minutes; a queue can be longer).

Channel messages carry a nonce derived from the job with `enforce_nonce` (discord.py sends it with every nonce),
so a resend after a crash mid-send is folded into the first message by Discord. Webhook follow-ups have no such
guard: see the README for the window that remains.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.core import Bandmate
from bot.discord.render import NO_PINGS, build_view, render
from bot.messages import OutgoingMessage
from bot.text import mention
from bot.views import THREAD_INVITE
from generation.events import JobEvent
from generation.jobs import DeliveryAddress, Job

log = logging.getLogger(__name__)

SINK = "discord"
TOKEN_MARGIN_S = 30.0  # stop using a token this long before Discord's 15 minutes are up


@dataclass(frozen=True)
class DiscordDelivery:
    """Where a job's status and result go on Discord. The transport's own data: the engine carries it opaquely."""

    channel_id: str
    guild_id: str | None = None
    status_message_id: str | None = None
    attachment_size_limit: int = 0
    application_id: str | None = None
    interaction_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # when the interaction token stops working (15 minutes after the command)

    def address(self) -> DeliveryAddress:
        return DeliveryAddress(SINK, {k: v for k, v in dataclasses.asdict(self).items() if v is not None})

    @classmethod
    def of(cls, job: Job) -> "DiscordDelivery":
        known = {f.name for f in dataclasses.fields(cls)}
        data: dict[str, Any] = {k: v for k, v in job.delivery.fields.items() if k in known}
        return cls(**{"channel_id": str(job.channel_id or ""), **data})


def only_user(user_id: str) -> discord.AllowedMentions:
    """Mentions that ping this one user and nobody else (no @everyone, roles or reply pings)."""
    return discord.AllowedMentions(everyone=False, roles=False, replied_user=False,
                                   users=[discord.Object(id=int(user_id))])


def nonce_for(job: Job, part: int = 0) -> str:
    """Discord nonces are at most 25 characters; the same job and part always give the same one."""
    return f"bm{job.id}{part}"[:25]


class Messenger:
    """Sends and edits on behalf of one job: the interaction webhook while usable, else the channel."""

    def __init__(self, bot: discord.Client) -> None:
        self.bot = bot
        self._dead_tokens: set[str] = set()

    def token_usable(self, job: Job, d: DiscordDelivery) -> bool:
        return bool(d.interaction_token and d.expires_at and time.time() < d.expires_at - TOKEN_MARGIN_S
                    and job.id not in self._dead_tokens)

    def webhook(self, d: DiscordDelivery) -> discord.Webhook:
        payload = {"id": int(d.application_id), "type": 3, "token": d.interaction_token}
        return discord.Webhook.from_state(data=payload, state=self.bot._connection)

    def channel(self, channel_id: int) -> discord.abc.Messageable:
        return self.bot.get_channel(channel_id) or self.bot.get_partial_messageable(channel_id)

    def _token_failed(self, job: Job, error: discord.HTTPException) -> bool:
        if error.status in (401, 404) or error.code in (50027, 10015):
            log.info("interaction token of job %s no longer works (%s); using the channel", job.id, error.code)
            self._dead_tokens.add(job.id)
            return True
        return False

    async def send(self, job: Job, content: str, *, files: list[discord.File], view: discord.ui.View | None,
                   part: int, ping: str | None = None) -> discord.Message:
        """`ping`: a user id. A result sent as a channel message (no usable interaction token) pings them, and
        only them, since nothing else tells them it is there; every other message pings nobody."""
        d = DiscordDelivery.of(job)
        kwargs = {"files": files, "allowed_mentions": NO_PINGS}
        if view is not None:
            kwargs["view"] = view
        if self.token_usable(job, d):
            try:
                return await self.webhook(d).send(content, wait=True, **kwargs)
            except discord.HTTPException as error:
                if not self._token_failed(job, error):
                    raise
                for f in files:
                    f.reset()
        if ping is not None and ping.isdigit():
            kwargs["allowed_mentions"] = only_user(ping)
        return await self.channel(int(d.channel_id)).send(content, nonce=nonce_for(job, part), **kwargs)

    async def edit(self, job: Job, message_id: int, content: str, view: discord.ui.View | None = None) -> None:
        d = DiscordDelivery.of(job)
        kwargs = {"view": view} if view is not None else {}
        if self.token_usable(job, d):
            try:
                await self.webhook(d).edit_message(message_id, content=content, allowed_mentions=NO_PINGS, **kwargs)
                return
            except discord.HTTPException as error:
                if not self._token_failed(job, error):
                    raise
        channel = self.channel(int(d.channel_id))
        await channel.get_partial_message(message_id).edit(content=content, allowed_mentions=NO_PINGS, **kwargs)


class DiscordTransport:
    """The core's `Transport` on Discord: results as messages with files and buttons, a thread to carry on in."""

    name = SINK

    def __init__(self, bot: discord.Client, core: Bandmate, messenger: Messenger, status) -> None:
        """status: the StatusUpdater (bot/discord/status.py) that writes each status message's edits in order."""
        self.bot = bot
        self.core = core
        self.messenger = messenger
        self.status = status

    def on_event(self, event: JobEvent) -> None:
        self.status.on_event(event)

    async def post_failure(self, job: Job, message: OutgoingMessage) -> None:
        d = DiscordDelivery.of(job)
        if d.status_message_id:  # the status message's last word: failed (with the reason) or cancelled
            await self.status.finish(job, self.core.failed_status(job))
        else:
            await self.messenger.send(job, render(message.text), files=[], view=None, part=0)

    async def post_result(self, job: Job, message: OutgoingMessage) -> None:
        d = DiscordDelivery.of(job)
        text = render(message.text + f"\nfor {mention(job.user_id)}")
        fitted = await self.core.fit_files(message.files, d.attachment_size_limit)
        first = None
        try:
            for part, batch in enumerate(fitted.batches):
                files = [discord.File(item.path, filename=item.filename, description=item.description[:1000] or None)
                         for item in batch]
                try:
                    content = text if part == 0 else f"(continued, part {part + 1})"
                    view = build_view(message.buttons) if part == 0 else None
                    sent = await self.messenger.send(job, content, files=files, view=view, part=part,
                                                     ping=job.user_id if part == 0 else None)
                finally:
                    for f in files:
                        f.close()
                first = first or sent
        finally:
            fitted.close()
        log.info("posted job %s as message %s", job.id, first.id)
        await self.core.record_posted(job.id, f"discord:message:{first.id}")
        await self._open_thread(job, first, message.thread_name or "bandmate")
        if d.status_message_id:  # last, so the status's final word is "delivered", with a link to the result
            channel_id = str(getattr(first.channel, "id", None) or d.channel_id)
            await self.status.finish(job, self.core.delivered_status(job, d.guild_id, channel_id, str(first.id)))
        log.info("delivered job %s", job.id)

    async def _open_thread(self, job: Job, message: discord.Message, name: str) -> None:
        """A thread on the result to carry on in; where none can be made, replies to the message do the same."""
        channel = self.bot.get_channel(int(DiscordDelivery.of(job).channel_id))
        if isinstance(channel, discord.Thread):
            await self.core.record_posted(job.id, f"discord:thread:{channel.id}")  # replies go to the newest piece
            return
        if not isinstance(channel, discord.TextChannel):
            return
        me = channel.guild.me
        if me is None or not channel.permissions_for(me).create_public_threads:
            log.info("no permission to create threads in %s; replies to the message will do", channel.id)
            return
        try:
            thread = await channel.get_partial_message(message.id).create_thread(name=name[:100],
                                                                                 auto_archive_duration=1440)
        except discord.HTTPException as error:
            log.info("could not create a thread for job %s: %s", job.id, error)
            return
        await self.core.record_posted(job.id, f"discord:thread:{thread.id}")  # before anyone is invited to reply
        await thread.send(render(THREAD_INVITE), allowed_mentions=NO_PINGS)

    async def announce_winner(self, job: Job, message: OutgoingMessage, refs: list[str]) -> None:
        for ref in refs:
            if ref.startswith("discord:message:"):
                await self.messenger.edit(job, int(ref.rsplit(":", 1)[1]),
                                          render(message.text + f"\nfor {mention(job.user_id)}"),
                                          view=build_view(message.buttons))
                return


"""Posting results and keeping status messages current, through the interaction while its token lives, and as
ordinary channel messages after (interaction tokens expire after 15 minutes; a queue can be longer).

Channel messages carry a nonce derived from the job with `enforce_nonce` (discord.py sends it with every nonce),
so a resend after a crash mid-send is folded into the first message by Discord. Webhook follow-ups have no such
guard: see the README for the window that remains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import discord

from bot.core import Bandmate
from bot.discord.render import NO_PINGS, build_view, escape, prepare_files
from generation.jobs import Job, JobState, TrackRecord
from generation.scheduler import EventKind, JobEvent

log = logging.getLogger(__name__)

TOKEN_MARGIN_S = 30.0  # stop using a token this long before Discord's 15 minutes are up
STATUS_INTERVAL_S = 2.0  # at most one edit per status message in this time
FINAL_EVENTS = (EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED)


def nonce_for(job: Job, part: int = 0) -> str:
    """Discord nonces are at most 25 characters; the same job and part always give the same one."""
    return f"bm{job.id}{part}"[:25]


class Messenger:
    """Sends and edits on behalf of one job: the interaction webhook while usable, else the channel."""

    def __init__(self, bot: discord.Client) -> None:
        self.bot = bot
        self._dead_tokens: set[str] = set()

    def token_usable(self, job: Job) -> bool:
        d = job.delivery
        return bool(d.get("interaction_token") and job.interaction_expires_at
                    and time.time() < job.interaction_expires_at - TOKEN_MARGIN_S and job.id not in self._dead_tokens)

    def webhook(self, job: Job) -> discord.Webhook:
        d = job.delivery
        payload = {"id": int(d["application_id"]), "type": 3, "token": d["interaction_token"]}
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
                   part: int) -> discord.Message:
        kwargs = {"files": files, "allowed_mentions": NO_PINGS}
        if view is not None:
            kwargs["view"] = view
        if self.token_usable(job):
            try:
                return await self.webhook(job).send(content, wait=True, **kwargs)
            except discord.HTTPException as error:
                if not self._token_failed(job, error):
                    raise
                for f in files:
                    f.reset()
        return await self.channel(int(job.delivery["channel_id"])).send(content, nonce=nonce_for(job, part), **kwargs)

    async def edit(self, job: Job, message_id: int, content: str, view: discord.ui.View | None = None) -> None:
        kwargs = {"view": view} if view is not None else {}
        if self.token_usable(job):
            try:
                await self.webhook(job).edit_message(message_id, content=content, allowed_mentions=NO_PINGS,
                                                     **kwargs)
                return
            except discord.HTTPException as error:
                if not self._token_failed(job, error):
                    raise
        channel = self.channel(int(job.delivery["channel_id"]))
        await channel.get_partial_message(message_id).edit(content=content, allowed_mentions=NO_PINGS, **kwargs)


@dataclass
class _Status:
    job: Job | None = None
    latest: JobEvent | None = None
    last_edit: float = 0.0
    task: asyncio.Task | None = None
    closed: bool = False
    waiters: list = field(default_factory=list)


class StatusUpdater:
    """Edits each job's status message with its queue position and a progress bar, throttled per message."""

    def __init__(self, bot: discord.Client, core: Bandmate, messenger: Messenger) -> None:
        self.bot = bot
        self.core = core
        self.messenger = messenger
        self._status: dict[str, _Status] = {}

    def watch(self, job: Job) -> None:
        """A job whose status message was just written by the caller: the next edit waits its turn."""
        status = self._status.setdefault(job.id, _Status())
        status.job = job
        status.last_edit = time.monotonic()

    def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED:
            return  # whoever queued the job writes its first status text
        status = self._status.get(event.job_id)
        if status is None:
            status = self._status[event.job_id] = _Status()
        if status.closed:
            return
        status.latest = event
        if status.task is None or status.task.done():
            status.task = asyncio.ensure_future(self._flush(event.job_id))

    async def _flush(self, job_id: str) -> None:
        status = self._status[job_id]
        if status.job is None:
            status.job = await self.core.store.get_job(job_id)
        job = status.job
        if job is None or job.delivery.get("sink") != "discord" or not job.delivery.get("status_message_id"):
            self._status.pop(job_id, None)
            return
        while status.latest is not None:
            event = status.latest
            final = event.kind in FINAL_EVENTS
            wait = status.last_edit + STATUS_INTERVAL_S - time.monotonic()
            if wait > 0 and not final:
                await asyncio.sleep(wait)
                event = status.latest
                final = event.kind in FINAL_EVENTS
            status.latest = None
            try:
                await self.messenger.edit(job, int(job.delivery["status_message_id"]),
                                          self.core.status_text(job, event, escape))
            except discord.HTTPException as error:
                log.info("could not update the status of job %s: %s", job_id, error)
            status.last_edit = time.monotonic()
            if final:
                status.closed = True
                self._status.pop(job_id, None)
                return


class DiscordDelivery:
    """The scheduler's delivery sink for jobs that came from Discord."""

    def __init__(self, bot: discord.Client, core: Bandmate, messenger: Messenger, voting_window=None) -> None:
        self.bot = bot
        self.core = core
        self.messenger = messenger
        self.voting_window = voting_window  # async (guild_id) -> seconds

    async def deliver(self, job: Job, tracks: list[TrackRecord]) -> None:
        if job.state is not JobState.DONE:
            status_id = job.delivery.get("status_message_id")
            text = self.core.result_message(job, tracks, escape).text
            if status_id:
                await self.messenger.edit(job, int(status_id), text)
            else:
                await self.messenger.send(job, text, files=[], view=None, part=0)
            return
        tally = await self.core.store.vote_tally(job.id)
        message = self.core.result_message(job, tracks, escape, tally)
        text = message.text + f"\nfor <@{job.user_id}>"
        flacs = {t.id: self.core.files.absolute(t.flac) for t in tracks}
        limit = int(job.delivery.get("attachment_size_limit") or 0)
        prepared = await asyncio.to_thread(prepare_files, message.files, limit, flacs)
        first = None
        try:
            for part, batch in enumerate(prepared.batches):
                content = text if part == 0 else f"(continued, part {part + 1})"
                view = build_view(message.buttons) if part == 0 else None
                sent = await self.messenger.send(job, content, files=batch, view=view, part=part)
                first = first or sent
        finally:
            prepared.close()
        log.info("posted job %s as message %s", job.id, first.id)
        await self.core.links.link(f"discord:message:{first.id}", job.id)
        if self.core.leaderboard is not None and self.voting_window is not None:
            window = await self.voting_window(job.guild_id)
            await self.core.leaderboard.open_window(job.id, job.guild_id, time.time() + window)
        await self._open_thread(job, first, message.thread_name or "bandmate")
        log.info("delivered job %s", job.id)

    async def _open_thread(self, job: Job, message: discord.Message, name: str) -> None:
        """A thread on the result to carry on in; where none can be made, replies to the message do the same."""
        channel = self.bot.get_channel(int(job.delivery["channel_id"]))
        if isinstance(channel, discord.Thread):
            await self.core.links.link(f"discord:thread:{channel.id}", job.id)  # replies there go to the newest piece
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
        await self.core.links.link(f"discord:thread:{thread.id}", job.id)
        await thread.send("Reply here to carry on: `continue`, `extend 20s`, `make it jazzier`, `variations`… "
                          "(`help` for more)", allowed_mentions=NO_PINGS)

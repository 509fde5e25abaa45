"""Status messages that stay true: one ordered stream of edits per status message.

Each status message has one writer task. Edits go out one at a time in the order their states happened; a state
that is superseded before its turn is never sent (only the newest waits); progress edits are throttled, and the
final state (delivered with a link, failed with the reason, cancelled) goes out as soon as the edit in flight has
landed, and nothing is written after it. So a throttled "done — posting it now" can never land after the result's
"delivered".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import discord

from bot.core import Bandmate
from bot.discord.delivery import SINK, DiscordDelivery, Messenger
from bot.discord.render import render
from generation.events import EventKind, JobEvent
from generation.jobs import Job

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2.0  # at most one progress edit per status message in this time
FINAL_WAIT_S = 30.0  # how long a final state waits for the edits before it (a 429 may hold one)
REMEMBER_FINISHED = 2000  # status messages whose final state was written: a late event must not reopen them


@dataclass
class _Next:
    """The newest state not yet written: an event to render when its turn comes, or a text (markup)."""

    event: JobEvent | None = None
    text: str | None = None
    final: bool = False


@dataclass
class _Stream:
    job: Job | None = None
    first: str | None = None  # the command's own first text (markup): written at once, before any state
    next: _Next | None = None
    seen_event: bool = False
    last_edit: float = 0.0
    task: asyncio.Task | None = None
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    landed: asyncio.Event = field(default_factory=asyncio.Event)  # the final edit went out (or failed)


class StatusUpdater:
    """Keeps each job's status message current: position while waiting, step bar and ETA while running (with
    "window k of n" for chains), then the final state."""

    def __init__(self, core: Bandmate, messenger: Messenger) -> None:
        self.core = core
        self.messenger = messenger
        self._streams: dict[str, _Stream] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def watch(self, job: Job, text: str | None = None) -> None:
        """A job whose status message the caller made: `text` (markup), if any, is its first edit, unless the
        job has already moved on (an event came first: its newer state is written instead)."""
        stream = self._stream(job.id)
        stream.job = job
        if text is not None and not stream.closed and not stream.seen_event:
            stream.first = text
            self._start(job.id, stream)

    def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED:
            return  # whoever queued the job writes its first status text
        if event.job_id in self._finished:
            return
        stream = self._stream(event.job_id)
        if stream.closed:
            return
        stream.seen_event = True
        # Cancelled is final here; a failure's final word comes with its delivery (`finish`), as does a result's.
        self._push(event.job_id, _Next(event=event, final=event.kind is EventKind.CANCELLED))

    async def finish(self, job: Job, text: str) -> None:
        """The final state (markup): written after every edit before it, and nothing after it. Returns once it
        has gone out (or could not be written)."""
        if job.id in self._finished:
            return
        stream = self._stream(job.id)
        if stream.closed:
            if stream.task is not None:
                await asyncio.wait({stream.task}, timeout=FINAL_WAIT_S)
            return
        stream.job = stream.job or job
        self._push(job.id, _Next(text=text, final=True))
        try:
            await asyncio.wait_for(stream.landed.wait(), FINAL_WAIT_S)
        except asyncio.TimeoutError:
            log.info("the final status of job %s is still waiting to be written", job.id)

    # -- the writer ---------------------------------------------------------------------------------------

    def _stream(self, job_id: str) -> _Stream:
        stream = self._streams.get(job_id)
        if stream is None:
            stream = self._streams[job_id] = _Stream()
        return stream

    def _push(self, job_id: str, item: _Next) -> None:
        stream = self._streams[job_id]
        if stream.next is not None and stream.next.final:
            return  # a final state is waiting: nothing replaces it
        stream.closed = stream.closed or item.final
        stream.next = item
        stream.wake.set()
        self._start(job_id, stream)

    def _start(self, job_id: str, stream: _Stream) -> None:
        if stream.task is None or stream.task.done():
            stream.task = asyncio.ensure_future(self._write(job_id, stream))

    async def _write(self, job_id: str, stream: _Stream) -> None:
        try:
            if stream.job is None:
                stream.job = await self.core.job(job_id)
            job = stream.job
            if job is None or job.delivery.sink != SINK or not DiscordDelivery.of(job).status_message_id:
                stream.closed = True  # not a status message of ours
                return
            status_id = int(DiscordDelivery.of(job).status_message_id)
            if stream.first is not None:
                first, stream.first = stream.first, None
                await self._edit(job, status_id, first)
            while stream.next is not None:
                item = stream.next
                wait = stream.last_edit + STATUS_INTERVAL_S - time.monotonic()
                if wait > 0 and not item.final:
                    stream.wake.clear()
                    try:  # woken early only by a newer state (a final one goes at once)
                        await asyncio.wait_for(stream.wake.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                    continue
                stream.next = None
                await self._edit(job, status_id, item.text if item.text is not None
                                 else self.core.status_text(job, item.event))
                if item.final:
                    return
        except Exception:  # noqa: BLE001 - a status edit must never take delivery down
            log.exception("status updates of job %s stopped", job_id)
        finally:
            if stream.closed and stream.next is None:
                stream.landed.set()
                self._streams.pop(job_id, None)
                self._finished[job_id] = None
                while len(self._finished) > REMEMBER_FINISHED:
                    self._finished.popitem(last=False)

    async def _edit(self, job: Job, status_id: int, text: str) -> None:
        try:
            await self.messenger.edit(job, status_id, render(text))
        except discord.HTTPException as error:
            log.info("could not update the status of job %s: %s", job.id, error)
        stream = self._streams.get(job.id)
        if stream is not None:
            stream.last_edit = time.monotonic()

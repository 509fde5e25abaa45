"""The scheduler's bookkeeping of chains (generation/chain.py): which owner waits for which helper window, which
chains were cancelled between windows, and how a window's events read as its chain's.

A holder of its own so the queue (generation/scheduler.py) keeps to queueing; it works through the scheduler it is
given (its store, its queue and its job endings), on the event loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from generation import chain
from generation.events import EventKind, JobEvent
from generation.jobs import DeliveryState, Job, JobState, TrackRecord

if TYPE_CHECKING:
    from generation.scheduler import Scheduler

log = logging.getLogger(__name__)


class ChainRuns:
    def __init__(self, queue: "Scheduler") -> None:
        self.queue = queue
        self.owners: dict[str, Job] = {}  # chains' owners, from submission until they finish
        self.held: dict[str, str] = {}  # owner id -> id of the helper window it waits for
        self.helper_owner: dict[str, str] = {}  # helper window id -> owner id
        self.cancelled: set[str] = set()  # owners cancelled by their user: no further window starts

    async def remove(self, rels: list[str]) -> None:
        """Delete a chain's intermediate audio (the queue's `remove_files`); a failure is logged, never raised."""
        if rels and self.queue.remove_files is not None:
            try:
                await self.queue.remove_files(rels)
            except OSError:
                log.exception("could not remove %d window files", len(rels))

    def request_id(self, job_id: str) -> str:
        """The user's own job that `job_id` works for: a chain's owner for its helper windows, else itself."""
        return self.helper_owner.get(job_id, job_id)

    def owner_waiting_on(self, helper: Job) -> Job | None:
        owner_id = self.helper_owner.pop(helper.id, None)
        if owner_id is None or self.held.get(owner_id) != helper.id:
            return None
        del self.held[owner_id]
        return self.owners.get(owner_id)

    async def advance(self, owner: Job) -> None:
        """Queue the owner's next window: a helper job, or the owner itself once every helper has finished.

        After a restart a helper may already exist (found by its idempotency key): a finished one is used, an
        unfinished one was queued again by start().
        """
        self.owners[owner.id] = owner
        while True:
            if owner.id in self.cancelled:
                self.held.pop(owner.id, None)
                await self.queue._mark_cancelled(owner)
                return
            index = chain.next_window(owner)
            if index >= len(chain.windows_of(owner)):
                self.held.pop(owner.id, None)
                owner.input_audio = chain.outputs_of(owner)[-1]  # in memory only: the row keeps the user's source
                self.queue._enqueue(owner)
                self.queue._wake.set()
                return
            helper = await self.queue.store.add_job(chain.helper_job(owner, index))
            self.held[owner.id] = helper.id
            self.helper_owner[helper.id] = owner.id
            if helper.state is JobState.DONE and helper.spec.window.output:
                await self._record_output(owner, helper.spec.window.output)
                continue
            if helper.state in (JobState.FAILED, JobState.CANCELLED):
                self.held.pop(owner.id, None)
                self.helper_owner.pop(helper.id, None)
                if helper.state is JobState.FAILED:
                    await self.queue._mark_failed(owner, helper.error or "A part of this piece failed.")
                else:
                    await self.queue._mark_cancelled(owner)
                return
            if not any(j.id == helper.id for j in self.queue._fair_order() + self.queue.running_jobs()):
                self.queue._enqueue(helper)
                self.queue._wake.set()
            return

    async def _record_output(self, owner: Job, output: str) -> None:
        owner.spec.chain.outputs.append(output)
        await self.queue.store.record_spec(owner)

    async def helper_done(self, helper: Job, tracks: list[TrackRecord]) -> None:
        """A helper window finished: its unprocessed audio is the next window's input. Nothing to deliver.

        A cancel that arrived after the model call ended is honoured by advance (via `cancelled`)."""
        output = tracks[0].flac if tracks else None
        helper.spec.window.output = output
        await self.queue.store.record_spec(helper)  # first: a helper row that says DONE always names its output
        await self.queue.store.complete_job(helper, [])
        await self.queue.store.set_delivery_state(helper.id, DeliveryState.DELIVERED)
        helper.delivery_state = DeliveryState.DELIVERED
        self.queue._cancelled.discard(helper.id)
        owner = self.owner_waiting_on(helper)
        if owner is None:  # its chain was cancelled meanwhile
            await self.remove([output] if output else [])
            return
        if output is None:
            await self.queue._mark_failed(owner, "A part of this piece came out empty; please try again.")
            return
        try:
            await self._record_output(owner, output)
            await self.advance(owner)
        except Exception:  # noqa: BLE001 - a chain must end, not wait forever for a window that never comes
            log.exception("job %s: could not go on to its next window", owner.id)
            self.held.pop(owner.id, None)
            await self.queue._mark_failed(owner, "Something went wrong between two parts of this piece; please try again.")

    async def end(self, job: Job) -> None:
        """A chain's owner finished (done, failed or cancelled): its intermediate audio goes."""
        if self.owners.pop(job.id, None) is None:
            return
        self.held.pop(job.id, None)
        self.cancelled.discard(job.id)
        await self.remove(chain.outputs_of(job))

    def as_event(self, event: JobEvent) -> JobEvent | None:
        """A window's events are its chain's: progress across all windows, under the owner's id."""
        owner = self.owners.get(self.helper_owner.get(event.job_id, event.job_id))
        if owner is None or event.kind in (EventKind.QUEUED, EventKind.CANCELLED, EventKind.FAILED) \
                and owner.id != event.job_id:
            return None if owner is not None else event  # a helper's end is announced as its owner's
        helper = owner.id != event.job_id
        if event.kind is EventKind.DONE and helper:
            return None
        steps, total = chain.chain_steps(owner)
        index = chain.window_index(owner) if not helper else chain.next_window(owner)
        before = sum(steps[: index - 1])
        note = f"window {index} of {len(steps)}"
        if event.kind in (EventKind.PROGRESS, EventKind.STARTED):
            step = before + (event.step if event.kind is EventKind.PROGRESS else 0)
            eta = (total - step) * self.queue._step_s if self.queue._step_s else None
            return JobEvent(EventKind.PROGRESS, owner.id, owner.user_id, step=step, total=total, eta_s=eta,
                            message=note)
        if event.kind is EventKind.POSITION:
            message = event.message or (f"{note} waits its turn" if index > 1 else None)  # e.g. a restart notice
            return JobEvent(EventKind.POSITION, owner.id, owner.user_id, position=event.position,
                            eta_s=self.queue.eta(owner.id), message=message)
        if helper:
            return JobEvent(event.kind, owner.id, owner.user_id, event.step, event.total, event.position,
                            event.eta_s, event.message)
        return event

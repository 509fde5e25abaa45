"""A worker's decoder slots: stream entries join the running jobs as they arrive (BANDMATE_DECODER=slots).

The fixed-batch worker reads a batch, generates it, publishes it, then reads again. Here the worker keeps reading
while jobs run (a short blocking read while slots are free, none while they are full), and each MusicGen text,
continuation or song entry, or MusicGen-melody remix, that fits the free slots goes to the shared drive loop
(`generation/slot_driver.py`) at once: it draws its first token (or starts its prefill) at the next step. Each
job is rendered and published (result, ack, delete: one transaction) when it leaves its slots, not when the others
end; a cancel frees its slot at the next step.

Entries are started in stream order. One that waits for slots, or one for the plain path (Stable Audio, ACE-Step,
more variations than slots), stops further reads; a plain one runs through the fixed-batch path once the running
jobs have drained, as in the bot's own `DecoderExecutor`.

At-least-once stays as it is: an entry is held (and kept claimed by the heartbeat) from its read until its outcome
is published, so a worker killed mid-run leaves every running entry pending for another worker to take over; the
job's seed alone decides its tokens, so the retry gives the same audio.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from generation.remote.batches import in_stream_order, plan_batches
from generation.remote.keys import _CONNECTION_ERRORS
from generation.slot_driver import SlotDriver

if TYPE_CHECKING:
    from generation.remote.worker import Worker, _Task

log = logging.getLogger(__name__)

POLL_MS = 100  # the blocking read while jobs run and slots are free: it returns as soon as an entry arrives


class WorkerSlots:
    """Admits a worker's stream entries into its decoder slots and publishes each job as it leaves."""

    def __init__(self, worker: "Worker", driver: SlotDriver) -> None:
        self.worker = worker
        self.driver = driver
        self._running: dict[bytes, asyncio.Task] = {}  # entry id -> the task running that job in the slots
        self._rows = 0  # rows the running jobs take
        self._cancelled: set[str] = set()  # job ids the bot asked to stop (polled while they run)
        self._changed = asyncio.Event()  # a job left its slots
        self._watcher: asyncio.Task | None = None
        self.jobs_run = 0  # jobs that left the slots with their audio

    @property
    def free_rows(self) -> int:
        return self.driver.slots - self._rows

    def cancel_seen(self, job_id: str) -> bool:
        """Whether the cancel watcher has seen the bot's cancel of this running job (its slot frees at the next
        step)."""
        return job_id in self._cancelled

    def running_job_ids(self) -> list[str]:
        w = self.worker
        return [w._held[e].job.id for e in self._running if e in w._held]

    def _waiting(self) -> list["_Task"]:
        """Held entries not started yet, in stream order."""
        return in_stream_order(t for e, t in self.worker._held.items() if e not in self._running)

    async def serve_once(self) -> None:
        """Take what fits, start what can start, and wait a little (on a read, or for a job to leave)."""
        w = self.worker
        self._changed.clear()
        room = 0 if self._waiting() else self.free_rows
        claimed = await w._claim(room)
        if claimed is not None and room - claimed > 0:
            await w._read(room - claimed, block=None if claimed else (POLL_MS if self._running else w.block_ms))
        if not await self._start_waiting() and (claimed is None or room == 0) and not w._stopping.is_set():
            try:  # full, or the next entry waits for slots: until a job leaves (or a while, for claims)
                await asyncio.wait_for(self._changed.wait(), w.block_ms / 1000)
            except asyncio.TimeoutError:
                pass

    async def _start_waiting(self) -> bool:
        """Start held entries in stream order while they fit; run plain ones once the slots are empty. Whether
        anything started."""
        w = self.worker
        waiting, started = self._waiting(), False
        for i, task in enumerate(waiting):
            if w._stopping.is_set():
                break
            if task.job.id in self.running_job_ids():
                continue  # a copy the bot resent while this one runs: it waits, and is then most likely redundant
            if await self._in_slots(task):
                if task.job.rows > self.free_rows:
                    break
                self._start(task)
                started = True
                continue
            if self._running:  # a plain job runs once the running ones have left
                break
            plain = [task]
            for later in waiting[i + 1:]:
                if await self._in_slots(later):
                    break
                plain.append(later)
            for batch in plan_batches(plain, w.max_batch):
                if w._stopping.is_set():
                    break  # not started: left in our pending list, others claim it after the idle time
                await w._run_batch(batch)
            return True
        return started

    async def _in_slots(self, task: "_Task") -> bool:
        return await self.driver.ensure_for(task.job)

    def _start(self, task: "_Task") -> None:
        self._rows += task.job.rows
        self._running[task.entry_id] = asyncio.create_task(self._run(task), name=f"bandmate-slot-{task.job.id}")
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(
                self.worker._watch_cancels(lambda: [self.worker._held[e] for e in self._running
                                                    if e in self.worker._held], self._cancelled))

    async def _run(self, task: "_Task") -> None:
        """One job, from its start to its published outcome; its rows are free again as soon as it leaves the
        slots (while it renders). A Redis outage before it reaches the slots leaves it held and not running: it
        starts again at the next turn."""
        w, job = self.worker, task.job
        try:
            try:
                if await w._redundant(task):
                    log.info("worker %s: job %s is done or resent; skipping this copy", w.name, job.id)
                    await w._ack_job(task.entry_id)
                    return
                if await w._cancelled_ids([task]):
                    await w._publish(task, {"type": "cancelled"})
                    return
                await w._say_started([task])
                w._batch_model = job.model
                log.info("worker %s: job %s joins the slots (%d of %d rows taken)", w.name, job.id, self._rows,
                         self.driver.slots)
                inputs = await w._write_inputs([task])
                try:
                    audios = await self.driver.decode(job, w._progress_reporter([job.id]),
                                                      lambda: job.id in self._cancelled)
                finally:
                    w._remove_inputs(inputs)
            finally:
                self._rows -= job.rows
                self._cancelled.discard(job.id)
                self._changed.set()
            self.jobs_run += 1
            w.batches_run += 1
            await w._deliver(task, audios)
        except _CONNECTION_ERRORS as error:
            log.warning("worker %s: Redis unreachable around job %s (%s); it is retried", w.name, job.id, error)
        except Exception as error:  # noqa: BLE001 - this job fails (or was cancelled); the others go on
            await w._report_failure([task], error)
        finally:
            self._running.pop(task.entry_id, None)
            self._changed.set()

    async def finish(self) -> None:
        """Stopping: the running jobs finish and are published; entries not started stay pending for others."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        """Cancel what still runs (the worker task itself was cancelled) and the cancel watcher."""
        self.driver.cancel_all()
        tasks = [*self._running.values(), *([self._watcher] if self._watcher is not None else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

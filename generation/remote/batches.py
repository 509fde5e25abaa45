"""A worker's fixed batches (BANDMATE_DECODER=generate): read a batch, generate it, publish it, read again.

Also the grouping both paths use for model calls of the plain backend (`plan_batches`), and stream order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from generation.batching import batch_compatible
from generation.remote.keys import WORKERS_GROUP, _text
from generation.remote.wire import job_from_json

if TYPE_CHECKING:
    from generation.remote.worker import Worker, _Task


def entry_order(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id as a sortable pair: stream order."""
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def in_stream_order(tasks) -> list["_Task"]:
    return sorted(tasks, key=lambda t: entry_order(t.entry_id))


def plan_batches(tasks: list["_Task"], max_batch: int) -> list[list["_Task"]]:
    """Group held entries into model calls, in stream order, by the scheduler's rules; rows <= max_batch."""
    pending, batches = list(tasks), []
    while pending:
        head = pending.pop(0)
        batch, rows, durations = [head], head.job.rows, [head.job.duration_s]
        for task in list(pending):
            if rows + task.job.rows > max_batch:
                continue
            if batch_compatible(head.job, task.job, durations):
                batch.append(task)
                pending.remove(task)
                rows += task.job.rows
                durations.append(task.job.duration_s)
        batches.append(batch)
    return batches


class WorkerBatches:
    """The fixed-batch loop of a worker: each turn holds one batch's entries and runs what is held."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker

    async def serve_once(self) -> None:
        w = self.worker
        await self._take()
        # Everything held, in stream order: what a Redis error interrupted last time runs now.
        for batch in plan_batches(in_stream_order(w._held.values()), w.max_batch):
            if w._stopping.is_set():
                break  # not started: left in our pending list, others claim it after the idle time
            await w._run_batch(batch)

    async def finish(self) -> None:
        """Nothing runs between turns."""

    async def close(self) -> None:
        """Nothing runs between turns."""

    async def _take(self) -> None:
        """Hold what the next batch will run: dead workers' entries first (idle past claim_idle_ms), else the next
        new one, plus the new ones right behind it that can join its batch. Entries that could not join are left
        to other workers instead of waiting here behind a batch they are not part of."""
        w = self.worker
        if await w._claim(w.max_batch - len(w._held)) is None:
            return
        if not w._held:
            await w._read(1, block=w.block_ms)
        if w._held and not w._stopping.is_set():
            joinable = await self._joinable()
            if joinable:
                await w._read(joinable, block=None)

    async def _joinable(self) -> int:
        """How many of the next undelivered entries fit into the first batch of what is held (by peeking: if
        another worker reads them first, the ones read instead are simply held for a later batch)."""
        w = self.worker
        batch = plan_batches(in_stream_order(w._held.values()), w.max_batch)[0]
        head = batch[0].job
        rows, durations = sum(t.job.rows for t in batch), [t.job.duration_s for t in batch]
        if rows >= w.max_batch:
            return 0
        groups = await w.redis.xinfo_groups(w.keys.jobs)
        last = next((g["last-delivered-id"] for g in groups if _text(g["name"]) == WORKERS_GROUP), None)
        if last is None:
            return 0
        count = 0
        for _entry_id, fields in await w.redis.xrange(w.keys.jobs, min=f"({_text(last)}", max="+",
                                                      count=w.max_batch - rows):
            try:
                job = job_from_json(fields[b"job"])
            except Exception:  # noqa: BLE001 - _accept deals with it when it is read
                break
            if rows + job.rows > w.max_batch or not batch_compatible(head, job, durations):
                break
            rows += job.rows
            durations.append(job.duration_s)
            count += 1
        return count

"""The fair, batching job queue in front of the model.

SQLite (through the `JobStore` protocol) is the truth; the queue in memory is rebuilt from it at start. Jobs are
served round robin across users, so one person's ten jobs never starve another's one, and compatible jobs (same
model, kind and sampling; durations close enough that padding wastes at most ~25%) share one model call. Where the
model runs is the executor's business: in this process (`LocalExecutor`) or on GPU workers over Redis.

Delivery is a recorded step of its own: a finished job is marked SENDING before its transport sends anything
and DELIVERED after; on restart, jobs not yet DELIVERED are handed to their transport again, which uses a nonce
derived from the job so a resend never shows twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from generation import chain
from generation.chain_runs import ChainRuns
from generation.backend import GenerationCancelled, OutOfMemory
from generation.events import EventKind, JobEvent
from generation.executor import DeliverySink, Executor
from generation.handover import Handover
from generation.jobs import DeliveryState, Job, JobState, JobStore, TrackRecord
from generation.batching import ModelInfoFor, batch_compatible, job_steps
from generation.models import model_info
from generation.types import Progress

__all__ = ["EventKind", "JobEvent", "QueueRefused", "Scheduler", "SchedulerConfig", ]

log = logging.getLogger(__name__)


class QueueRefused(Exception):
    """The job was not queued; `user_message` says why, politely."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 4  # sequences per model call; variations count, guidance's doubling does not
    per_user_pending: int = 3
    max_depth: int = 100
    job_timeout_s: float = 900.0
    max_attempts: int = 2
    padding_waste: float = 0.25
    progress_interval_s: float = 0.5
    # When the model is idle and a job arrives, wait this long for others arriving with it, so requests made at
    # the same moment share one model call instead of the first running alone.
    gather_s: float = 0.1
    delivery_retries: int = 5
    delivery_retry_s: float = 2.0
    # Longest model call of a continuation; longer ones become chains of window jobs (generation/chain.py).
    window_s: float = 30.0


@dataclass
class _Batch:
    jobs: list[Job]
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    total: int = 0
    last_event: float = 0.0
    stop_reason: str | None = None  # "timeout" | "shutdown"


class Scheduler:
    def __init__(self, store: JobStore, executor: Executor, config: SchedulerConfig = SchedulerConfig(), *,
                 remove_files: Callable[[list[str]], Awaitable[None]] | None = None,
                 model_info: ModelInfoFor = model_info) -> None:
        """remove_files: deletes files of the media store by relative path (a chain's intermediate audio).
        model_info: a model's family facts (steps per call, what may share a call), known without loading it."""
        self.model_info = model_info
        self.store = store
        self.executor = executor
        self.config = config
        self.remove_files = remove_files
        self._chains = ChainRuns(self)  # long continuations as chains of window jobs
        self._queued: dict[str, deque[Job]] = {}
        self._rotation: deque[str] = deque()
        self._batches: list[_Batch] = []
        self._cancelled: set[str] = set()
        self._sinks: dict[str, DeliverySink] = {}
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._closing = False
        self._step_s: float | None = None  # measured seconds per model step (EMA)
        if hasattr(executor, "on_capacity"):
            executor.on_capacity = self._wake_threadsafe
        # An executor that reports when a job really starts (remote workers) and the faults it sees meanwhile.
        self.handover = Handover(self, bool(getattr(executor, "reports_start", False)))
        # Operators' hooks (app/metrics.py): a batch's progress (its jobs, on the event loop), and each delivery's
        # outcome ("delivered", "retried" or "failed").
        self.on_batch_progress: Callable[[list[Job], Progress], None] = lambda jobs, progress: None
        self.on_delivery: Callable[[Job, str], None] = lambda job, outcome: None
        if hasattr(executor, "on_notice"):
            executor.on_notice = self.handover.relay

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume what a crash or restart left: queued and running jobs run (again); results are delivered."""
        self._loop = asyncio.get_running_loop()
        known = {j.id for q in self._queued.values() for j in q} | set(self._chains.owners)
        owners: list[Job] = []
        for job in await self.store.unfinished_jobs():
            if job.id in known:
                continue
            if job.state is JobState.RUNNING:
                job.state = JobState.QUEUED
                await self.store.update_job(job)
            if chain.is_owner(job):
                owners.append(job)
            else:
                self._enqueue(job)
        for owner in owners:  # after the helpers, which the loop above queued again
            await self._chains.advance(owner)
        if self.depth:
            log.info("resumed %d unfinished jobs", self.depth)
        self._loop_task = asyncio.create_task(self._run(), name="bandmate-scheduler")
        await self.redeliver()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Graceful stop: no new jobs; running ones finish within grace_s or are requeued; nothing half-written."""
        self._closing = True
        self._wake.set()
        for batch in self._batches:
            for job in batch.jobs:
                if job.state.finished:  # made and being delivered: its last status stays true
                    continue
                self._emit(JobEvent(EventKind.POSITION, job.id, job.user_id,
                                    message="The bot is restarting; your piece is finishing first."))
        for queue in self._queued.values():
            for job in queue:
                self._emit(JobEvent(EventKind.REQUEUED, job.id, job.user_id,
                                    message="The bot is restarting; your request is kept and will run when it is back."))
        deadline = time.monotonic() + grace_s
        while self._batches and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for batch in self._batches:
            batch.stop_reason = "shutdown"
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            log.info("waiting for %d deliveries to finish", len(self._tasks))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.executor.close()

    # -- public API ---------------------------------------------------------------------------------------

    def listen(self, callback: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Receive every job event (on the event loop). Returns a function that stops listening."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    async def add_sink(self, name: str, sink: DeliverySink) -> None:
        """Register a transport's delivery, then hand it whatever it has not yet delivered."""
        self._sinks[name] = sink
        if self._loop_task is not None:
            await self.redeliver()

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self._queued.values())

    def pending_for(self, user_id: str) -> int:
        # A finished job stays in its batch while it is delivered: it is not waiting any more (its person may reply).
        running = sum(1 for b in self._batches for j in b.jobs if j.user_id == user_id and j.state is JobState.RUNNING)
        return len(self._queued.get(user_id, ())) + running

    async def submit(self, job: Job) -> Job:
        """Persist then queue a job. Raises QueueRefused with a message for the user when a cap is reached."""
        if self._closing:
            raise QueueRefused("The bot is restarting right now; please try again in a minute.")
        if job.idempotency_key:
            existing = await self.store.job_by_key(job.idempotency_key)
            if existing is not None:
                return existing
        pending = self.pending_for(job.user_id)
        if pending >= self.config.per_user_pending:
            raise QueueRefused(
                f"You already have {pending} pieces waiting (the limit is {self.config.per_user_pending}). "
                "Wait for one to finish, or cancel one with /cancel."
            )
        if self.depth >= self.config.max_depth:
            raise QueueRefused(f"The queue is full ({self.depth} pieces waiting). Please try again in a few minutes.")
        windows = chain.plan_chain(job, self.config.window_s)
        if windows is not None:
            chain.start_chain(job, windows)
        stored = await self.store.add_job(job)
        if stored.id != job.id:  # same idempotency key: the job already exists
            return stored
        if chain.is_owner(stored):
            await self._chains.advance(stored)
            total = chain.chain_steps(stored)[1]
        else:
            self._enqueue(stored)
            total = job_steps(stored, self.model_info)
        position = self.position(stored.id)
        self._emit(JobEvent(EventKind.QUEUED, stored.id, stored.user_id, position=position,
                            eta_s=self.eta(stored.id), total=total))
        self._wake.set()
        return stored

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job. Returns False when it had already finished (or is unknown)."""
        chained = job_id in self._chains.owners
        if chained:  # whichever window it is at, even between two, the chain goes no further
            self._chains.cancelled.add(job_id)
        job_id = self._chains.held.get(job_id, job_id)  # a chain waiting for a helper window: cancel that window
        for user, queue in self._queued.items():
            for job in queue:
                if job.id == job_id:
                    queue.remove(job)
                    await self._mark_cancelled(job)
                    self._emit_positions()
                    return True
        for batch in self._batches:
            if any(j.id == job_id for j in batch.jobs):
                self._cancelled.add(job_id)
                return True
        return chained  # between two windows: _advance_chain ends it

    def queued_jobs(self) -> list[Job]:
        """Queued jobs in the order they will be served."""
        return self._fair_order()

    def running_jobs(self) -> list[Job]:
        return [j for b in self._batches for j in b.jobs]

    def request_id(self, job_id: str) -> str:
        """The user's own job that `job_id` works for: a chain's owner for its helper windows, else itself."""
        return self._chains.request_id(job_id)

    def position(self, job_id: str) -> int | None:
        job_id = self._chains.held.get(job_id, job_id)
        waiting = self.handover.waiting()  # handed to the workers but not started: first in line
        if job_id in waiting:
            return waiting.index(job_id) + 1
        for i, job in enumerate(self._fair_order(), start=1 + len(waiting)):
            if job.id == job_id:
                return i
        return None

    def eta(self, job_id: str) -> float | None:
        """Seconds until the job is done, from the measured speed of the model (None until measured)."""
        if self._step_s is None:
            return None
        if job_id in self._chains.held:  # a chain: its current helper window, then the windows after it
            helper_id = self._chains.held[job_id]
            owner = self._chains.owners[job_id]
            steps, _ = chain.chain_steps(owner)
            current = self.eta(helper_id)
            done = chain.next_window(owner)
            return None if current is None else current + sum(steps[done:]) * self._step_s
        started = [b for b in self._batches if not any(self.handover.is_waiting(j.id) for j in b.jobs)]
        running = max((b.total - b.step for b in started), default=0) * self._step_s
        for batch in started:
            if any(j.id == job_id for j in batch.jobs):
                return (batch.total - batch.step) * self._step_s
        line = self.handover.line()
        lanes = max(1, int(getattr(self.executor, "live_workers", 1) or 1)) if self.handover.reports_start else 1
        ahead = 0.0
        for job in line:
            share = min(1.0, job.rows / max(1, self.config.max_batch))
            ahead += job_steps(job, self.model_info) * self._step_s * share
            if job.id == job_id:
                return running + ahead / lanes
        return None

    # -- queue internals ----------------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        if job.user_id not in self._queued:
            self._queued[job.user_id] = deque()
        if job.user_id not in self._rotation:
            self._rotation.append(job.user_id)
        self._queued[job.user_id].append(job)

    def _queued_rows(self) -> int:
        return sum(job.rows for queue in self._queued.values() for job in queue)

    def _fair_order(self) -> list[Job]:
        """Round robin: each user's oldest job, user by user, then each user's second, and so on."""
        queues = [list(self._queued.get(u, ())) for u in self._rotation]
        order, depth = [], max((len(q) for q in queues), default=0)
        for i in range(depth):
            order.extend(q[i] for q in queues if i < len(q))
        return order

    def _compatible(self, head: Job, other: Job, durations: list[float]) -> bool:
        return batch_compatible(head, other, durations, self.config.padding_waste, self.model_info)

    def _not_before(self, job: Job) -> float | None:
        """When a job may start (its user's rate limit, `JobSpec.not_before`); a chain's windows wait with it."""
        owner = self._chains.owners.get(self._chains.request_id(job.id)) if job.spec.window else None
        return (owner or job).spec.not_before

    def _next_due_in(self) -> float | None:
        """Seconds until the next held job may start (None: none is held)."""
        now = time.time()
        times = [t for t in (self._not_before(j) for q in self._queued.values() for j in q) if t and t > now]
        return min(times) - now if times else None

    def _next_batch(self) -> list[Job]:
        now = time.time()
        order = [j for j in self._fair_order() if (self._not_before(j) or 0.0) <= now]  # held jobs wait their time
        if not order:
            return []
        head = order[0]
        batch, rows, durations = [head], head.rows, [head.duration_s]
        limit = self.executor.batch_limit
        if limit != 1:
            for job in order[1:]:
                if rows + job.rows > self.config.max_batch:
                    continue
                if self._compatible(head, job, durations):
                    batch.append(job)
                    rows += job.rows
                    durations.append(job.duration_s)
                if limit is not None and len(batch) >= limit:
                    break
        for job in batch:
            self._queued[job.user_id].remove(job)
        # The head's user goes to the back of the rotation: the next batch starts with someone else.
        self._rotation.remove(head.user_id)
        self._rotation.append(head.user_id)
        for user in [u for u in self._rotation if not self._queued.get(u)]:
            self._rotation.remove(user)
            self._queued.pop(user, None)
        return batch

    # -- running ------------------------------------------------------------------------------------------

    def _wake_threadsafe(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._closing:
            if (self.config.gather_s > 0 and not self._batches and self.executor.has_capacity()
                    and 0 < self._queued_rows() < self.config.max_batch):
                await asyncio.sleep(self.config.gather_s)
            batch = self._next_batch() if self.executor.has_capacity() else []
            if batch:
                await self._start_batch(batch)
                self._emit_positions()
                await asyncio.sleep(0)  # let the executor take the batch before judging its capacity again
                continue
            if self._closing:  # stop() may have woken us during the gathering sleep
                break
            self._wake.clear()
            due_in = self._next_due_in()
            try:
                await asyncio.wait_for(self._wake.wait(), due_in + 0.01 if due_in is not None else None)
            except asyncio.TimeoutError:  # a held job's time came: it now waits in line like any other
                self._emit_positions()

    async def _start_batch(self, jobs: list[Job]) -> None:
        now = time.time()
        for job in jobs:
            job.state = JobState.RUNNING
            job.started_at = now
            job.attempts += 1
            await self.store.update_job(job)
        batch = _Batch(jobs=jobs, total=max(job_steps(j, self.model_info) for j in jobs))
        self._batches.append(batch)
        log.info("batch of %d jobs (%d sequences, %d steps): %s", len(jobs), sum(j.rows for j in jobs), batch.total,
                 " ".join(j.id for j in jobs))
        for job in jobs:
            if self.handover.reports_start:  # it waits in line at the workers until one says it started
                self.handover.handed(job.id)
                continue
            self._emit(JobEvent(EventKind.STARTED, job.id, job.user_id, total=batch.total,
                                eta_s=self.eta(job.id), message=f"batch of {len(jobs)}"))
        self._spawn(self._run_batch(batch))

    def _spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _should_stop(self, batch: _Batch) -> bool:
        if batch.stop_reason:
            return True
        if all(j.id in self._cancelled for j in batch.jobs):
            return True
        if time.monotonic() - batch.started > self.config.job_timeout_s:
            batch.stop_reason = "timeout"
            return True
        return False

    def _on_progress(self, batch: _Batch, p: Progress) -> None:
        batch.step, batch.total = p.step, p.total
        self._observe(self.on_batch_progress, batch.jobs, p)
        if p.step > 2 and p.elapsed_s > 0:
            # Skip the first steps (prefill, warm-up) when measuring the model's speed.
            rate = p.elapsed_s / p.step
            self._step_s = rate if self._step_s is None else 0.8 * self._step_s + 0.2 * rate
        now = time.monotonic()
        if now - batch.last_event < self.config.progress_interval_s and p.step < p.total:
            return
        batch.last_event = now
        for job in batch.jobs:
            if job.state is not JobState.RUNNING:  # a late report (another thread, a worker) never follows "done"
                continue
            self._emit(JobEvent(EventKind.PROGRESS, job.id, job.user_id, step=p.step, total=p.total,
                                eta_s=(p.total - p.step) * (self._step_s or 0.0),
                                message=self.handover.note(job.id)))

    async def _run_batch(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()

        interval = self.config.progress_interval_s
        sent = [0.0]

        def progress(p: Progress) -> None:
            # Runs in the model thread on every step: wake the event loop only when an event is due (the first
            # steps, then every progress_interval_s, and the last), not hundreds of times a call.
            now = time.monotonic()
            if p.step < p.total and p.step > 3 and now - sent[0] < interval:
                return
            sent[0] = now
            loop.call_soon_threadsafe(self._on_progress, batch, p)

        try:
            results = await self.executor.execute(batch.jobs, progress, lambda: self._should_stop(batch))
        except GenerationCancelled:
            await self._stopped(batch)
        except OutOfMemory:
            await self._split_after_oom(batch)
        except Exception as error:  # noqa: BLE001 - a failed batch must never take the queue down
            log.exception("batch of %d failed", len(batch.jobs))
            await self._failed(batch.jobs, error)
        else:
            log.info("batch %s made in %.1f s", " ".join(j.id for j in batch.jobs), time.monotonic() - batch.started)
            await asyncio.gather(*(self._finish(job, results.get(job.id, [])) for job in batch.jobs))
        finally:
            self._batches.remove(batch)
            for job in batch.jobs:
                self.handover.forget(job.id)
            self._wake.set()

    async def _stopped(self, batch: _Batch) -> None:
        for job in batch.jobs:
            if job.id in self._cancelled:
                await self._mark_cancelled(job)
            elif batch.stop_reason == "timeout":
                await self._mark_failed(job, f"That took longer than {self.config.job_timeout_s:g} s and was stopped.")
            else:  # shutdown: back to the queue, to run after the restart
                job.state = JobState.QUEUED
                job.attempts = max(0, job.attempts - 1)
                await self.store.update_job(job)
                self._emit(JobEvent(EventKind.REQUEUED, job.id, job.user_id,
                                    message="The bot is restarting; your request will run when it is back."))

    async def _split_after_oom(self, batch: _Batch) -> None:
        for job in batch.jobs:
            if job.id in self._cancelled:
                await self._mark_cancelled(job)
        jobs = [j for j in batch.jobs if j.state is not JobState.CANCELLED]
        if len(jobs) <= 1:
            for job in jobs:
                await self._mark_failed(job, "Not enough GPU memory for this request. Try fewer variations or a "
                                             "shorter duration.")
            return
        half = len(jobs) // 2
        log.warning("out of memory with %d jobs; retrying as %d + %d", len(jobs), half, len(jobs) - half)
        for part in (jobs[:half], jobs[half:]):
            for job in part:
                job.attempts = max(0, job.attempts - 1)
            await self._start_batch(part)

    async def _failed(self, jobs: list[Job], error: Exception) -> None:
        """Retry a failed batch once more, unless the error says retrying cannot help (`final`).

        Errors may carry `user_message` (shown as is) and `final` (a dead-lettered job, a model that cannot load,
        a request the model cannot do); the scheduler reads them duck-typed, whatever executor raised them.
        """
        final = bool(getattr(error, "final", False))
        message = getattr(error, "user_message", None)
        for job in jobs:
            if job.id in self._cancelled:
                await self._mark_cancelled(job)
            elif not final and job.attempts < self.config.max_attempts and not self._closing:
                job.state = JobState.QUEUED
                await self.store.update_job(job)
                self._enqueue(job)
            else:
                await self._mark_failed(job, message or "Something went wrong while making this piece; it was not "
                                                        "finished. Please try again.")

    async def _finish(self, job: Job, tracks: list[TrackRecord]) -> None:
        if job.id in self._cancelled:
            if chain.owner_of(job):  # a helper window's audio is nobody's track
                await self._chains.remove([t.flac for t in tracks if t.flac])
            await self._mark_cancelled(job)
            return
        job.state = JobState.DONE
        job.finished_at = time.time()
        job.error = None
        if chain.owner_of(job):
            await self._chains.helper_done(job, tracks)
            return
        await self.store.complete_job(job, tracks)
        self._emit(JobEvent(EventKind.DONE, job.id, job.user_id, step=1, total=1))
        await self._chains.end(job)
        await self._deliver(job, tracks)

    async def _mark_cancelled(self, job: Job) -> None:
        self._cancelled.discard(job.id)
        job.state = JobState.CANCELLED
        job.finished_at = time.time()
        job.error = "Cancelled."
        await self.store.update_job(job)
        self._emit(JobEvent(EventKind.CANCELLED, job.id, job.user_id, message=job.error))
        owner = self._chains.owner_waiting_on(job)
        if owner is not None:  # a helper window: its chain ends with it
            await self._mark_cancelled(owner)
        await self._chains.end(job)

    async def _mark_failed(self, job: Job, message: str) -> None:
        job.state = JobState.FAILED
        job.finished_at = time.time()
        job.error = message
        await self.store.update_job(job)
        self._emit(JobEvent(EventKind.FAILED, job.id, job.user_id, message=message))
        owner = self._chains.owner_waiting_on(job)
        if owner is not None:  # a helper window failed for good: so does the piece it was part of
            await self.store.set_delivery_state(job.id, DeliveryState.DELIVERED)  # nothing of its own to send
            await self._mark_failed(owner, message)
            return
        await self._chains.end(job)
        await self._deliver(job, [])

    # -- delivery -----------------------------------------------------------------------------------------

    async def redeliver(self) -> None:
        for job in await self.store.undelivered_jobs():
            if job.delivery.sink in self._sinks:
                tracks = await self.store.tracks_for_job(job.id) if job.state is JobState.DONE else []
                self._spawn(self._deliver(job, tracks))

    async def _deliver(self, job: Job, tracks: list[TrackRecord]) -> None:
        sink = self._sinks.get(job.delivery.sink)
        if sink is None:
            return  # stays undelivered until its transport registers
        for attempt in range(1, self.config.delivery_retries + 1):
            await self.store.set_delivery_state(job.id, DeliveryState.SENDING)
            job.delivery_state = DeliveryState.SENDING
            try:
                await sink.deliver(job, tracks)
            except Exception:  # noqa: BLE001 - retried; the row stays SENDING so a restart resends
                log.exception("delivery of job %s failed (attempt %d)", job.id, attempt)
                last = attempt == self.config.delivery_retries
                self._observe(self.on_delivery, job, "failed" if last else "retried")
                if not last:
                    await asyncio.sleep(self.config.delivery_retry_s * attempt)
                continue
            await self.store.set_delivery_state(job.id, DeliveryState.DELIVERED)
            job.delivery_state = DeliveryState.DELIVERED
            self._observe(self.on_delivery, job, "delivered")
            return

    @staticmethod
    def _observe(hook: Callable, *args) -> None:
        try:
            hook(*args)
        except Exception:  # noqa: BLE001 - an operator's hook must never stop the queue
            log.exception("scheduler hook failed")

    # -- events -------------------------------------------------------------------------------------------

    def _emit(self, event: JobEvent) -> None:
        event = self._chains.as_event(event)
        if event is None:
            return
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the queue
                log.exception("job event listener failed")

    def _emit_positions(self) -> None:
        for i, job in enumerate(self.handover.line(), start=1):
            self._emit(JobEvent(EventKind.POSITION, job.id, job.user_id, position=i, eta_s=self.eta(job.id),
                                message=self.handover.note(job.id)))

"""The worker side: takes jobs from Redis, runs the model in one thread (in decoder slots that entries join as they
arrive, generation/remote/slots.py, or in fixed batches), publishes results."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from redis.exceptions import ResponseError

from generation.backend import GenerationCancelled, ModelLoadError, OutOfMemory
from generation.continuation import ContinuationError
from generation.jobs import Job
from generation.models import ModelRegistry
from generation.runner import JobRunner
from generation.types import Progress

log = logging.getLogger(__name__)
from generation.remote.keys import CANCEL_POLL_S, DEAD_MAXLEN, FILE_KINDS, GENERIC_FAILURE, MODEL_FAILURE, OOM_FAILURE, PROGRESS_EVERY_S, RedisSettings, StreamKeys, WORKERS_GROUP, connect, ensure_groups
from generation.remote.keys import _CONNECTION_ERRORS, _is_nogroup, _text, drop_idle_connections
from generation.remote.scratch import ScratchStore, make_scratch_dir, sweep_stale_scratch
from generation.remote.wire import job_from_json, track_to_dict
from generation.remote.batches import WorkerBatches
from generation.remote.slots import WorkerSlots
from generation.slot_driver import DecoderOptions, SlotDriver


# -- worker side ----------------------------------------------------------------------------------------------


# Refresh the claim on each id only while this worker still owns it: a worker that was presumed dead must not
# take a job back from the one that took it over. XCLAIM ... JUSTID resets the idle time, not the delivery count.
_HEARTBEAT_LUA = """
local kept = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""


@dataclass
class _Task:
    """One job entry a worker holds."""

    entry_id: bytes
    job: Job
    deliveries: int = 1
    input: bytes | None = None
    input_ext: str = "flac"
    lost: bool = False  # the heartbeat found the entry no longer ours
    publishing: bool = False  # its outcome is being published: the entry leaves the pending list on purpose


class Worker:
    """Takes jobs from Redis, batches them, runs the model in one thread and publishes files and progress."""

    def __init__(self, settings: RedisSettings, *, prefix: str = "bandmate", name: str | None = None,
                 models: ModelRegistry | None = None, watermark=None) -> None:
        """models: the process's model registry, built by the wiring (it honours BANDMATE_TORCH_THREADS)."""
        if not settings.redis_url:
            raise ValueError("a worker needs BANDMATE_REDIS_URL")
        self.settings = settings
        self.keys = StreamKeys(prefix)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.claim_idle_ms = settings.redis_claim_idle_ms
        self.heartbeat_s = settings.redis_heartbeat_s
        self.max_deliveries = settings.redis_max_deliveries
        self.max_batch = settings.max_batch
        self.block_ms = max(10, min(1000, self.claim_idle_ms // 2))
        if self.heartbeat_s * 1000 >= self.claim_idle_ms / 2:
            log.warning("BANDMATE_REDIS_HEARTBEAT_S (%.2fs) should be well under half of BANDMATE_REDIS_CLAIM_IDLE_MS "
                        "(%d ms), or live workers' jobs get taken over", self.heartbeat_s, self.claim_idle_ms)
        self.redis = connect(settings.redis_url)
        self.models = models or ModelRegistry(device=settings.device, dtype=settings.dtype, compile=settings.compile)
        sweep_stale_scratch()  # what SIGKILLed workers on this host left behind
        self._scratch_path = make_scratch_dir()
        self.scratch = ScratchStore(self._scratch_path)
        self.runner = JobRunner(self.models, self.scratch, watermark=watermark)  # the bot signs on receipt
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bandmate-model")
        self._held: dict[bytes, _Task] = {}  # entries this worker holds; the heartbeat keeps them claimed
        self._stopping = asyncio.Event()
        self._beating = False  # the heartbeat's own stop: a cancel that lands inside a Redis call can be swallowed
        self._claim_cursor = "0-0"
        self._heartbeat_script = self.redis.register_script(_HEARTBEAT_LUA)
        self._progress_latest: dict[tuple[str, ...], Progress] = {}  # per batch (or slot job): its latest report
        self._progress_task: asyncio.Task | None = None
        self._next_cleanup = 0.0
        self._need_groups = True
        self._next_outage_log = 0.0
        self._published: OrderedDict[str, bytes] = OrderedDict()  # job id -> its result entry, the latest 1000
        self.batches_run = 0  # model calls finished: fixed batches, and jobs that left the decoder slots
        self._connection_errors = 0  # in a row, in the main loop
        self.ready = False  # its model is loaded and it takes jobs (the readiness endpoint reads it)
        # The operator's hook (app/metrics.py): each progress report (model id, batch's first job id, progress).
        self.on_progress: Callable[[str, str, Progress], None] = lambda model, batch, progress: None
        self._batch_model = settings.model
        # BANDMATE_DECODER: "slots" (the default) admits entries into the engine's own decoder as they arrive;
        # "generate" keeps the fixed batches of transformers' generate.
        self.slots: WorkerSlots | None = None
        if getattr(settings, "decoder", "slots") == "slots":
            options = DecoderOptions(slots=self.max_batch,
                                     cuda_graphs=None if getattr(settings, "cuda_graphs", True) else False)
            self.slots = WorkerSlots(self, SlotDriver(self.runner, options, self._model_thread))
        self.serving: WorkerSlots | WorkerBatches = self.slots or WorkerBatches(self)

    def stop(self) -> None:
        """Finish the batch being generated, then exit; entries not started stay in Redis for others."""
        if not self._stopping.is_set():
            log.info("worker %s stopping after the current batch", self.name)
        self._stopping.set()

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        heartbeat: asyncio.Task | None = None
        try:
            log.info("worker %s loading %s", self.name, self.settings.model)
            load = self.slots.driver.prepare if self.slots is not None else self.models.get
            await self._loop.run_in_executor(self._model_thread, load, self.settings.model)
            self._beating = True
            heartbeat = asyncio.create_task(self._heartbeat(), name="bandmate-worker-heartbeat")
            self.ready = True
            log.info("worker %s ready (%s of up to %d rows)", self.name,
                     "decoder slots" if self.slots is not None else "batches", self.max_batch)
            while not self._stopping.is_set():
                try:
                    await self.serving.serve_once()
                    self._connection_errors = 0
                except asyncio.CancelledError:
                    raise
                except _CONNECTION_ERRORS as error:
                    self._connection_errors += 1
                    if self._connection_errors == 1:  # maybe a dead pooled connection: reconnect, try at once
                        await drop_idle_connections(self.redis)
                        continue
                    now = time.monotonic()
                    if now >= self._next_outage_log:
                        self._next_outage_log = now + 60.0
                        log.warning("worker %s: Redis unreachable (%s); retrying", self.name, error)
                    await self._pause(1.0)
                except ResponseError as error:
                    if _is_nogroup(error):
                        log.warning("worker %s: the streams are gone (Redis restarted empty?); recreating", self.name)
                        self._need_groups = True
                    else:
                        log.exception("worker %s: Redis refused a command", self.name)
                        await self._pause(1.0)
                except Exception:  # noqa: BLE001 - a worker keeps serving; what it holds is retried
                    log.exception("worker %s: unexpected error", self.name)
                    await self._pause(1.0)
            await self.serving.finish()
        finally:
            self.ready = False
            await self.serving.close()
            if heartbeat is not None:
                self._beating = False
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            if self._progress_task is not None:
                await asyncio.gather(self._progress_task, return_exceptions=True)
            await self._safely(self.redis.delete(self.keys.worker(self.name)))
            await self.redis.aclose()
            self._model_thread.shutdown(wait=True)
            shutil.rmtree(self._scratch_path, ignore_errors=True)
            log.info("worker %s stopped after %d batches", self.name, self.batches_run)
        return 0

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _safely(self, awaitable) -> Any:
        try:
            return await awaitable
        except Exception as error:  # noqa: BLE001 - best effort
            log.debug("ignored Redis error: %s", error)
            return None

    # -- taking entries -------------------------------------------------------------------------------------

    async def _claim(self, room: int) -> int | None:
        """Groups and housekeeping, then up to `room` entries of dead workers (idle past claim_idle_ms): how many
        were claimed, or None when there is no room (or the worker is stopping)."""
        if self._need_groups:
            await ensure_groups(self.redis, self.keys)
            self._need_groups = False
        await self._cleanup_consumers()
        if room <= 0 or self._stopping.is_set():
            return None
        cursor, claimed, _deleted = await self.redis.xautoclaim(
            self.keys.jobs, WORKERS_GROUP, self.name, self.claim_idle_ms, self._claim_cursor, count=room)
        self._claim_cursor = _text(cursor) or "0-0"
        for entry_id, fields in claimed:
            if entry_id not in self._held:
                await self._accept(entry_id, fields, was_claimed=True)
        return len(claimed)

    async def _read(self, count: int, *, block: int | None) -> None:
        response = await self.redis.xreadgroup(WORKERS_GROUP, self.name, {self.keys.jobs: ">"}, count=count,
                                               block=block)
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                await self._accept(entry_id, fields, was_claimed=False)

    async def _accept(self, entry_id: bytes, fields: dict | None, was_claimed: bool) -> None:
        if not fields:  # deleted (cancelled or already done) while pending
            await self._ack_job(entry_id)
            return
        deliveries = 1
        if was_claimed:
            pending = await self.redis.xpending_range(self.keys.jobs, WORKERS_GROUP, min=entry_id, max=entry_id,
                                                      count=1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
        try:
            job = job_from_json(fields[b"job"])
        except Exception as error:  # noqa: BLE001 - a malformed entry is set aside, not retried forever
            await self._dead_letter(entry_id, fields, deliveries, f"malformed: {error}")
            return
        if deliveries > self.max_deliveries:
            await self._dead_letter(entry_id, fields, deliveries, "too many deliveries", job_id=job.id)
            return
        if await self._result_waits(job.id):
            log.info("worker %s: job %s is already done, its result waits for the bot; skipping the copy",
                     self.name, job.id)
            await self._ack_job(entry_id)
            return
        task = _Task(entry_id, job, deliveries, fields.get(b"input"), _text(fields.get(b"input_ext")) or "flac")
        if was_claimed:
            log.info("worker %s took over job %s (delivery %d)", self.name, job.id, deliveries)
        self._held[entry_id] = task

    async def _result_waits(self, job_id: str) -> bool:
        """A copy the bot resent (after Redis came back) while our result was on its way: the result still waits
        for the bot, so this copy need not run. Had the result been lost too, it would not be there."""
        published = self._published.get(job_id)
        return published is not None and bool(await self.redis.xrange(self.keys.results, published, published,
                                                                       count=1))

    async def _redundant(self, task: _Task) -> bool:
        """A held copy that need not run now: its result waits for the bot, or its entry is gone from the stream
        (the bot finished the job and deleted the copy, or Redis restarted empty and the bot resends it)."""
        return (await self._result_waits(task.job.id)
                or not await self.redis.xrange(self.keys.jobs, task.entry_id, task.entry_id, count=1))

    async def _dead_letter(self, entry_id: bytes, fields: dict, deliveries: int, reason: str, *,
                           job_id: str | None = None) -> None:
        job_id = job_id or _text(fields.get(b"job_id"))
        log.error("worker %s: job %s set aside in %s (%s, %d deliveries)", self.name, job_id, self.keys.dead,
                  reason, deliveries)
        dead = {k: v for k, v in fields.items() if k != b"input"}
        dead.update({b"reason": reason, b"deliveries": deliveries, b"entry": entry_id, b"worker": self.name,
                     b"at": f"{time.time():.3f}"})
        message = (f"This piece could not be made: it was tried {deliveries - 1} times and each time the music "
                   "worker stopped before finishing it, so it was set aside. Please try a different prompt or a "
                   "shorter duration."
                   if reason == "too many deliveries" else GENERIC_FAILURE)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, dead, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xadd(self.keys.results, {"type": "failed", "job_id": job_id, "message": message, "final": "1",
                                          "worker": self.name})
            pipe.xack(self.keys.jobs, WORKERS_GROUP, entry_id)
            pipe.xdel(self.keys.jobs, entry_id)
            await pipe.execute()
        self._held.pop(entry_id, None)

    async def _ack_job(self, *entry_ids: bytes) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.jobs, WORKERS_GROUP, *entry_ids)
            pipe.xdel(self.keys.jobs, *entry_ids)
            await pipe.execute(raise_on_error=False)
        for entry_id in entry_ids:
            self._held.pop(entry_id, None)

    async def _cleanup_consumers(self) -> None:
        """Forget consumers of long-dead workers (nothing pending, idle for 10 claim periods)."""
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + 60.0
        for consumer in await self.redis.xinfo_consumers(self.keys.jobs, WORKERS_GROUP):
            name = _text(consumer["name"])
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] > 10 * self.claim_idle_ms:
                await self.redis.xgroup_delconsumer(self.keys.jobs, WORKERS_GROUP, name)

    # -- running a batch ------------------------------------------------------------------------------------

    async def _cancelled_ids(self, tasks: list[_Task]) -> set[str]:
        values = await self.redis.mget([self.keys.cancel(t.job.id) for t in tasks])
        return {t.job.id for t, v in zip(tasks, values) if v}

    async def _run_batch(self, tasks: list[_Task]) -> None:
        """Generate one batch, then render and publish each job. Every task leaves `_held` through `_publish`."""
        cancelled = await self._cancelled_ids(tasks)
        for task in [t for t in tasks if t.job.id in cancelled]:
            await self._publish(task, {"type": "cancelled"})
        tasks = [t for t in tasks if t.job.id not in cancelled]
        if not tasks:
            return
        await self._say_started(tasks)
        audios = await self._generate(tasks, cancelled)
        if audios is None:
            return
        for task in tasks:
            if task.job.id in cancelled:
                await self._publish(task, {"type": "cancelled"})
                continue
            await self._deliver(task, audios[task.job.id])

    async def _deliver(self, task: _Task, audios) -> None:
        """Render one job's audio in a thread and publish the files (its result, ack and delete)."""
        try:
            fields = await asyncio.to_thread(self._render, task, audios)
        except Exception:  # noqa: BLE001
            log.exception("worker %s: rendering job %s failed", self.name, task.job.id)
            await self._fail([task], GENERIC_FAILURE, final=False)
            return
        await self._publish(task, fields)

    async def _say_started(self, tasks: list[_Task]) -> None:
        """Tell the bot these jobs leave the line now (a delivery over 1: this worker takes over a dead one's)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for task in tasks:
                    pipe.xadd(self.keys.results, {"type": "started", "job_id": task.job.id, "worker": self.name,
                                                  "deliveries": task.deliveries})
                await pipe.execute()
        except _CONNECTION_ERRORS as error:  # a status only: the job runs anyway
            log.debug("start not announced: %s", error)

    async def _generate(self, tasks: list[_Task], cancelled: set[str]) -> dict[str, list] | None:
        """The model call, in the model thread. None when the outcome is already published (cancelled, failed,
        or split in two after running out of memory)."""
        jobs = [t.job for t in tasks]
        inputs: list[str] = []
        split = False
        watcher = asyncio.create_task(self._watch_cancels(lambda: tasks, cancelled))
        started = time.monotonic()
        self._batch_model = jobs[0].model
        log.info("worker %s: batch of %d (%s)", self.name, len(jobs), ", ".join(j.id for j in jobs))
        try:
            inputs = await self._write_inputs(tasks)
            audios = await self._loop.run_in_executor(
                self._model_thread,
                lambda: self.runner.generate(jobs, progress=self._progress_reporter([j.id for j in jobs]),
                                             should_stop=lambda: len(cancelled) >= len(jobs)),
            )
        except Exception as error:  # noqa: BLE001 - the jobs fail (the scheduler may retry them), the worker goes on
            if not (isinstance(error, OutOfMemory) and len(tasks) > 1):
                await self._report_failure(tasks, error)
                return None
            split = True
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            self._remove_inputs(inputs)
        if split:
            half = len(tasks) // 2
            log.warning("worker %s: out of memory with %d jobs; retrying as %d + %d", self.name, len(tasks), half,
                        len(tasks) - half)
            for part in (tasks[:half], tasks[half:]):
                await self._run_batch(part)
            return None
        self.batches_run += 1
        log.info("worker %s: generated %d jobs in %.2fs", self.name, len(jobs), time.monotonic() - started)
        return audios

    async def _report_failure(self, tasks: list[_Task], error: BaseException) -> None:
        """Publish what a failed model call means for its jobs: the one mapping for batches and slots."""
        if isinstance(error, GenerationCancelled):
            for task in tasks:
                await self._publish(task, {"type": "cancelled"})
        elif isinstance(error, OutOfMemory):
            await self._fail(tasks, OOM_FAILURE, final=True)
        elif isinstance(error, ModelLoadError):
            log.error("worker %s: %s", self.name, error)
            await self._fail(tasks, MODEL_FAILURE, final=True)
        elif isinstance(error, ContinuationError):
            await self._fail(tasks, str(error), final=True)
        else:
            log.error("worker %s: %s failed", self.name, ", ".join(t.job.id for t in tasks), exc_info=error)
            await self._fail(tasks, GENERIC_FAILURE, final=False)

    async def _write_inputs(self, tasks: list[_Task]) -> list[str]:
        """Input audio (continuation, remix): from the entry's bytes to a scratch file the runner reads."""
        inputs = []
        for task in tasks:
            if task.input is not None:
                rel = self.scratch.path_for(f"{task.job.id}in", task.input_ext)
                await asyncio.to_thread(self.scratch.absolute(rel).write_bytes, task.input)
                task.job.input_audio = rel
                inputs.append(rel)
        return inputs

    def _remove_inputs(self, inputs: list[str]) -> None:
        for rel in inputs:
            self.scratch.remove(rel)

    def _render(self, task: _Task, audios) -> dict[str, Any]:
        tracks = self.runner.render(task.job, audios)
        fields: dict[str, Any] = {"type": "result", "deliveries": task.deliveries,
                                  "tracks": json.dumps([track_to_dict(t) for t in tracks])}
        for track in tracks:
            for ext in FILE_KINDS:
                rel = getattr(track, ext)
                if not rel:
                    continue
                fields[f"f{track.variation}.{ext}"] = self.scratch.absolute(rel).read_bytes()
                self.scratch.remove(rel)
        return fields

    async def _fail(self, tasks: list[_Task], message: str, *, final: bool) -> None:
        for task in tasks:
            await self._publish(task, {"type": "failed", "message": message, "final": "1" if final else "0"})

    async def _publish(self, task: _Task, fields: dict[str, Any]) -> None:
        """Add the outcome, acknowledge and delete the job entry: one transaction. Retried while Redis is away;
        if it never comes back in time, the entry stays pending and another worker redoes the job."""
        fields = {**fields, "job_id": task.job.id, "worker": self.name}
        task.publishing = True  # from here the entry leaves our pending list on purpose: the heartbeat knows
        deadline = time.monotonic() + max(30.0, 2 * self.claim_idle_ms / 1000)
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.keys.results, fields)
                    pipe.xack(self.keys.jobs, WORKERS_GROUP, task.entry_id)
                    pipe.xdel(self.keys.jobs, task.entry_id)
                    results = await pipe.execute(raise_on_error=False)
                if isinstance(results[0], Exception):
                    raise results[0]
                if fields["type"] == "result":
                    self._published[task.job.id] = results[0]
                    while len(self._published) > 1000:
                        self._published.popitem(last=False)
                break
            except ResponseError:
                log.exception("worker %s: Redis refused the outcome of job %s; it will be redone", self.name,
                              task.job.id)
                break
            except _CONNECTION_ERRORS as error:
                if time.monotonic() > deadline:
                    log.error("worker %s: could not publish job %s (%s); another worker will redo it", self.name,
                              task.job.id, error)
                    break
                await asyncio.sleep(0.5)
        self._held.pop(task.entry_id, None)

    async def _watch_cancels(self, tasks_of: Callable[[], list[_Task]], cancelled: set[str]) -> None:
        """Add to `cancelled` the jobs the bot wants stopped, among those `tasks_of()` names at each poll."""
        while True:
            tasks = tasks_of()
            try:
                if tasks:
                    cancelled |= await self._cancelled_ids(tasks)
            except _CONNECTION_ERRORS:
                pass
            await asyncio.sleep(CANCEL_POLL_S)

    def _progress_reporter(self, job_ids: list[str]) -> Callable[[Progress], None]:
        """Called in the model thread at every step; forwards at most one update per PROGRESS_EVERY_S."""
        last = [0.0]

        def report(progress: Progress) -> None:
            now = time.monotonic()
            if progress.step > 1 and progress.step < progress.total and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            self._loop.call_soon_threadsafe(self._queue_progress, job_ids, progress)

        return report

    def _queue_progress(self, job_ids: list[str], progress: Progress) -> None:
        try:
            self.on_progress(self._batch_model, job_ids[0], progress)
        except Exception:  # noqa: BLE001 - figures must never stop a batch
            log.exception("progress hook failed")
        self._progress_latest[tuple(job_ids)] = progress
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = asyncio.create_task(self._send_progress())

    async def _send_progress(self) -> None:
        while self._progress_latest:
            latest, self._progress_latest = self._progress_latest, {}
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_ids, p in latest.items():
                        for job_id in job_ids:
                            pipe.xadd(self.keys.results, {"type": "progress", "job_id": job_id, "step": p.step,
                                                          "total": p.total, "elapsed": f"{p.elapsed_s:.3f}",
                                                          "worker": self.name})
                    await pipe.execute()
            except Exception as error:  # noqa: BLE001 - progress is best effort
                log.debug("progress not sent: %s", error)

    async def _warn_lost(self, task: _Task) -> None:
        """Say truly why an entry is no longer ours: we go on, and the bot keeps whichever result comes first."""
        holder = await self._holder_of(task.entry_id)
        why = (f"worker {holder} took it over (this one was silent too long)" if holder
               else "Redis no longer has it (restarted empty?)")
        log.warning("worker %s: job %s (entry %s) is no longer held by this worker: %s. Finishing it anyway; the bot "
                    "uses the first result that reaches it and drops any later one", self.name, task.job.id,
                    _text(task.entry_id), why)

    async def _holder_of(self, entry_id: bytes) -> str | None:
        try:
            return await _holder(self.redis, self.keys, entry_id)
        except Exception:  # noqa: BLE001 - the warning still goes out
            return None

    async def _heartbeat(self) -> None:
        """Keep this worker counted as live, and its held entries from looking idle to other workers."""
        ttl_ms = max(self.claim_idle_ms, int(3000 * self.heartbeat_s))
        while self._beating:
            try:
                await self.redis.set(self.keys.worker(self.name), b"1", px=ttl_ms)
                held = list(self._held)
                if held:
                    kept = await self._heartbeat_script(keys=[self.keys.jobs], args=[WORKERS_GROUP, self.name, *held])
                    for entry_id in set(held) - set(kept or []):
                        task = self._held.get(entry_id)
                        # One being published left the pending list by our own hand (the race this skips).
                        if task is not None and not task.lost and not task.publishing:
                            task.lost = True
                            await self._warn_lost(task)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next one
                log.debug("heartbeat failed: %s", error)
            await asyncio.sleep(self.heartbeat_s)


async def _holder(redis, keys: StreamKeys, entry_id: bytes) -> str | None:
    pending = await redis.xpending_range(keys.jobs, WORKERS_GROUP, min=entry_id, max=entry_id, count=1)
    return _text(pending[0]["consumer"]) if pending else None


async def run_worker(settings: RedisSettings, models: ModelRegistry | None = None, watermark=None, *,
                     observe: Callable[[Worker], None] | None = None) -> int:
    """`python bot.py worker`: one worker until SIGTERM/SIGINT (the batch being generated is finished first).
    watermark: the AudioSeal watermarker (BANDMATE_WATERMARK=audioseal); each job brings the bot's message.
    observe: called with the worker before it starts (the wiring attaches its metrics)."""
    import signal

    worker = Worker(settings, models=models, watermark=watermark)
    if observe is not None:
        observe(worker)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    return await worker.run()


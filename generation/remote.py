"""Scale-out over Redis Streams: the bot keeps the fair queue, GPU workers on any machine run the model.

Why streams: a job handed to a worker must survive that worker dying (its entry stays in the consumer group's
pending list until acknowledged, and another worker takes it over with XAUTOCLAIM), and a result must survive the
bot being down (it waits in the results stream until the bot acknowledges it).

Keys (`prefix` defaults to "bandmate"):

    <prefix>:jobs        stream, consumer group "workers". One entry per dispatched job:
                         job_id, job (JSON of every Job field, sampling and spec included), and for jobs with
                         input audio (continuation, remix) input (its bytes, read from the bot's MediaStore) +
                         input_ext; the worker puts them in a scratch file and points job.input_audio at it.
    <prefix>:results     stream, consumer group "bot" (one consumer). Entries have type and job_id, and
                         progress: step, total, elapsed
                         result:   worker, deliveries, tracks (JSON list of TrackRecord fields) and the rendered
                                   files' bytes as f<variation>.mp3 / .png / .flac
                         failed:   message (fit for the user), final ("1": retrying will not help), worker
                         cancelled: the worker stopped the job because the bot asked it to
    <prefix>:dead        stream: job entries that were delivered more than redis_max_deliveries times (they
                         kill or hang whoever takes them), with reason and deliveries; capped at ~1000.
    <prefix>:entries     hash job_id -> jobs-stream entry id, so the bot can tell whether a job is still queued
                         or held by a worker (and not add it twice after a bot restart).
    <prefix>:cancel:<id> string with a TTL: the bot wants that job stopped. A new dispatch of the job clears it.
    <prefix>:worker:<n>  string with a TTL, refreshed by each live worker's heartbeat; the bot counts them.

Fairness stays at the bot: the scheduler dispatches single jobs (`batch_limit = 1`) in its round-robin order, and
`RedisExecutor` accepts a job only while fewer than `window` jobs are in flight, where
`window = window_per_worker (default 2 * max_batch) * max(1, live workers)`: enough for every worker to fill a batch
and have the next one waiting, never a long backlog in Redis that a newcomer's job would queue behind.
Workers group what they take into batches by the scheduler's own rules (`scheduler.batch_compatible`).

A worker publishes a job's result, acknowledges and deletes its job entry in one MULTI transaction, so "job entry
gone" always means "result already in the results stream"; reconciliation relies on that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generation.backend import GenerationCancelled, ModelLoadError, OutOfMemory
from generation.continuation import ContinuationError
from generation.jobs import DeliveryState, Job, JobKind, JobState, JobStore, Operation, TrackRecord
from generation.models import ModelRegistry
from generation.postprocess import write_atomic
from generation.runner import JobRunner, MediaStore
from generation.scheduler import batch_compatible
from generation.types import Progress, SamplingParams

log = logging.getLogger(__name__)

WORKERS_GROUP = "workers"
BOT_GROUP = "bot"
BOT_CONSUMER = "bot"  # one bot process per prefix
FILE_KINDS = ("mp3", "png", "flac")
DEAD_MAXLEN = 1000
CANCEL_TTL_S = 3600
PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 0.25
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError)

GENERIC_FAILURE = "Something went wrong while making this piece; it was not finished. Please try again."
OOM_FAILURE = "Not enough GPU memory for this request. Try fewer variations or a shorter duration."
MODEL_FAILURE = "The model this piece needs could not be loaded on the music workers. Please tell the bot's operator."


class RemoteJobFailed(RuntimeError):
    """A worker reported the job failed, or it was dead-lettered.

    `user_message` can be shown as is. `final`: retrying will not help (dead-lettered, out of memory alone, bad
    input), so the scheduler should mark the job failed with `user_message` instead of queuing it again.
    """

    def __init__(self, user_message: str, *, final: bool) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.final = final


class RedisSettings(Protocol):
    """The part of bot.Settings this module reads (generation never imports the bot)."""

    redis_url: str | None
    redis_claim_idle_ms: int
    redis_heartbeat_s: float
    redis_max_deliveries: int
    max_batch: int
    model: str
    device: str
    dtype: str
    compile: bool


@dataclass(frozen=True)
class StreamKeys:
    prefix: str = "bandmate"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def entries(self) -> str:
        return f"{self.prefix}:entries"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"


def connect(url: str) -> aioredis.Redis:
    """Bytes in and out (results carry audio). The socket timeout only guards against a silent network; every
    blocking read asks for far less."""
    return aioredis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=5, socket_timeout=30,
                                   health_check_interval=15)


async def ensure_groups(client: aioredis.Redis, keys: StreamKeys) -> None:
    """Create both groups at id 0 (so entries added before the group, e.g. right after Redis restarted empty, are
    still read). Idempotent."""
    for stream, group in ((keys.jobs, WORKERS_GROUP), (keys.results, BOT_GROUP)):
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_nogroup(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and "NOGROUP" in str(error)


# -- wire formats ---------------------------------------------------------------------------------------------


def job_to_json(job: Job) -> str:
    data = dataclasses.asdict(job)
    for name in ("kind", "operation", "state", "delivery_state"):
        data[name] = getattr(job, name).value
    return json.dumps(data, sort_keys=True)


def job_from_json(text: str | bytes) -> Job:
    """Unknown keys are dropped, so a bot and workers of neighbouring versions still understand each other."""
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(Job)}
    data = {k: v for k, v in data.items() if k in known}
    sampling_fields = {f.name for f in dataclasses.fields(SamplingParams)}
    data["sampling"] = SamplingParams(**{k: v for k, v in (data.get("sampling") or {}).items() if k in sampling_fields})
    data["kind"] = JobKind(data.get("kind", JobKind.TEXT.value))
    data["operation"] = Operation(data.get("operation", Operation.COMPOSE.value))
    data["state"] = JobState(data.get("state", JobState.RUNNING.value))
    data["delivery_state"] = DeliveryState(data.get("delivery_state", DeliveryState.PENDING.value))
    return Job(**data)


def track_to_dict(track: TrackRecord) -> dict[str, Any]:
    data = dataclasses.asdict(track)
    data["operation"] = track.operation.value
    return data


def track_from_dict(data: dict[str, Any]) -> TrackRecord:
    known = {f.name for f in dataclasses.fields(TrackRecord)}
    data = {k: v for k, v in data.items() if k in known}
    data["operation"] = Operation(data.get("operation", Operation.COMPOSE.value))
    return TrackRecord(**data)


# -- bot side -------------------------------------------------------------------------------------------------


@dataclass
class _Flight:
    """A job the scheduler handed to us and is awaiting."""

    job: Job
    future: asyncio.Future
    progress: Callable[[Progress], None]
    entry_id: bytes | None = None  # its entry in the jobs stream, once added
    cancelling: bool = False


@dataclass
class _Early:
    """A result (or final failure) that arrived while nobody waited for it; returned at the job's next dispatch."""

    entry_id: bytes
    tracks: list[TrackRecord] | None = None
    error: BaseException | None = None


@dataclass
class _Recent:
    """Job ids that finished here lately: a second result for one of them is a duplicate and is dropped."""

    limit: int = 10_000
    ids: OrderedDict = field(default_factory=OrderedDict)

    def add(self, job_id: str) -> None:
        self.ids[job_id] = None
        self.ids.move_to_end(job_id)
        while len(self.ids) > self.limit:
            self.ids.popitem(last=False)

    def discard(self, job_id: str) -> None:
        self.ids.pop(job_id, None)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.ids


class RedisExecutor:
    """The scheduler's Executor when workers run elsewhere: dispatch over `<prefix>:jobs`, results back over
    `<prefix>:results`. Starts itself (connect, reconcile, read results) on first use, inside the event loop."""

    batch_limit = 1  # workers batch; the bot only keeps the order fair

    def __init__(
        self,
        url: str,
        media: MediaStore,
        store: JobStore | None = None,
        *,
        max_batch: int = 4,
        window_per_worker: int | None = None,
        prefix: str = "bandmate",
        cancel_timeout_s: float = 10.0,
        read_block_ms: int = 500,
        retry_s: float = 0.5,
        maintenance_s: float = 1.0,
    ) -> None:
        self.url = url
        self.media = media
        self.store = store  # to tell a stray result for a finished job from an early one; optional
        self.keys = StreamKeys(prefix)
        self.window_per_worker = window_per_worker or 2 * max_batch
        self.cancel_timeout_s = cancel_timeout_s
        self.read_block_ms = read_block_ms
        self.retry_s = retry_s
        self.maintenance_s = maintenance_s
        self.on_capacity: Callable[[], None] = lambda: None
        self.live_workers = 0
        self.redis = connect(url)
        self._inflight: dict[str, _Flight] = {}
        self._early: dict[str, _Early] = {}
        self._done = _Recent()
        self._dispatch_lock = asyncio.Lock()
        self._supervisor: asyncio.Task | None = None
        self._ready = asyncio.Event()  # connected and reconciled
        self._need_reconcile = True
        self._run_id: str | None = None
        self._next_maintenance = 0.0
        self._next_sweep = 0.0
        self._next_outage_log = 0.0
        self._closed = False

    @classmethod
    def from_settings(cls, settings: RedisSettings, media: MediaStore, store: JobStore | None) -> "RedisExecutor":
        if not settings.redis_url:
            raise ValueError("RedisExecutor needs BANDMATE_REDIS_URL")
        return cls(settings.redis_url, media, store, max_batch=settings.max_batch)

    # -- Executor protocol ---------------------------------------------------------------------------------

    @property
    def window(self) -> int:
        return self.window_per_worker * max(1, self.live_workers)

    def has_capacity(self) -> bool:
        self._ensure_started()
        return self._ready.is_set() and len(self._inflight) < self.window

    async def start(self, timeout_s: float | None = None) -> None:
        """Optional: connect and reconcile now (first use does it anyway); waits until ready."""
        self._ensure_started()
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def execute(self, jobs: list[Job], progress: Callable[[Progress], None],
                      should_stop: Callable[[], bool]) -> dict[str, list[TrackRecord]]:
        self._ensure_started()
        if len(jobs) == 1:
            return {jobs[0].id: await self._execute_one(jobs[0], progress, should_stop)}
        results = await asyncio.gather(*(self._execute_one(j, progress, should_stop) for j in jobs))
        return {job.id: tracks for job, tracks in zip(jobs, results)}

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for flight in list(self._inflight.values()):
            if not flight.future.done():
                flight.future.set_exception(GenerationCancelled("the bot is shutting down"))
        await self.redis.aclose()

    # -- one job --------------------------------------------------------------------------------------------

    async def _execute_one(self, job: Job, progress: Callable[[Progress], None],
                           should_stop: Callable[[], bool]) -> list[TrackRecord]:
        early = self._early.pop(job.id, None)
        if early is not None:  # it finished while the bot was away: no second generation
            log.info("job %s: using the %s that arrived before it was dispatched again", job.id,
                     "failure" if early.error is not None else "result")
            await self._finished_with(job.id, early.entry_id)
            if early.error is not None:
                raise early.error
            return early.tracks or []
        if job.id in self._inflight:
            raise RuntimeError(f"job {job.id} is already running")
        self._done.discard(job.id)
        flight = _Flight(job, asyncio.get_running_loop().create_future(), progress)
        self._inflight[job.id] = flight  # before any await: has_capacity counts it at once
        try:
            await self._dispatch(flight)
            return await self._await_outcome(flight, should_stop)
        finally:
            if self._inflight.get(job.id) is flight:
                del self._inflight[job.id]
            self.on_capacity()

    async def _dispatch(self, flight: _Flight) -> None:
        """Add the job to the jobs stream, or adopt its entry when one is still there (bot restarted)."""
        async with self._dispatch_lock:
            try:
                await self.redis.delete(self.keys.cancel(flight.job.id))
                await self._add_unless_present(flight)
            except _CONNECTION_ERRORS as error:
                log.warning("job %s: Redis unreachable (%s); it is sent when Redis is back", flight.job.id, error)
                self._need_reconcile = True

    async def _add_unless_present(self, flight: _Flight) -> None:
        job = flight.job
        entry = await self.redis.hget(self.keys.entries, job.id)
        if entry and await self.redis.xrange(self.keys.jobs, entry, entry, count=1):
            flight.entry_id = entry
            log.info("job %s: adopting its entry %s, still in the jobs stream", job.id, _text(entry))
            return
        fields: dict[str, Any] = {"job_id": job.id, "job": job_to_json(job)}
        if job.input_audio:  # continuation source or remix melody: workers may be on other machines
            path = self.media.absolute(job.input_audio)
            fields["input"] = await asyncio.to_thread(path.read_bytes)
            fields["input_ext"] = path.suffix.lstrip(".") or "flac"
        entry_id = await self.redis.xadd(self.keys.jobs, fields)
        # Not atomic with the XADD: lost only if the bot dies in between, and then the job is added again after the
        # restart and the second result is dropped as a duplicate.
        await self.redis.hset(self.keys.entries, job.id, entry_id)
        flight.entry_id = entry_id
        log.debug("job %s: dispatched as %s", job.id, _text(entry_id))

    async def _await_outcome(self, flight: _Flight, should_stop: Callable[[], bool]) -> list[TrackRecord]:
        while not flight.future.done():
            if should_stop():
                return await self._cancel(flight)
            await asyncio.wait([flight.future], timeout=CANCEL_POLL_S)
        return flight.future.result()

    async def _cancel(self, flight: _Flight) -> list[TrackRecord]:
        """Ask the worker to stop. A job no worker has taken yet is removed from the stream and ends at once;
        one being generated ends when its worker confirms (or sends its result), or after cancel_timeout_s."""
        job, entry = flight.job, flight.entry_id
        flight.cancelling = True  # a reconcile must not send it again
        if entry is None:
            raise GenerationCancelled("cancelled before it reached Redis")
        try:
            await self.redis.set(self.keys.cancel(job.id), b"1", ex=CANCEL_TTL_S)
            taken = await self.redis.xpending_range(self.keys.jobs, WORKERS_GROUP, min=entry, max=entry, count=1)
            if not taken and await self.redis.xdel(self.keys.jobs, entry):
                await self.redis.hdel(self.keys.entries, job.id)
                raise GenerationCancelled("cancelled before a worker took it")
        except _CONNECTION_ERRORS as error:
            log.warning("job %s: could not send the cancel (%s)", job.id, error)
        try:
            return await asyncio.wait_for(asyncio.shield(flight.future), self.cancel_timeout_s)
        except asyncio.TimeoutError:
            raise GenerationCancelled("the worker did not confirm the cancel in time") from None

    # -- the results reader ---------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._supervisor is None and not self._closed:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="bandmate-redis-bot")

    def _set_ready(self, ready: bool) -> None:
        was = self._ready.is_set()
        if ready:
            self._ready.set()
            if not was:
                self.on_capacity()
        else:
            self._ready.clear()

    async def _supervise(self) -> None:
        """Reconcile when needed, then read results; on any Redis trouble, back off and reconcile again."""
        while not self._closed:
            try:
                if self._need_reconcile:
                    await self._reconcile()
                    if not self._ready.is_set():
                        log.info("Redis ready at the bot: %d jobs in flight, %d results kept", len(self._inflight),
                                 len(self._early))
                    self._set_ready(True)
                    self._next_outage_log = 0.0
                response = await self.redis.xreadgroup(BOT_GROUP, BOT_CONSUMER, {self.keys.results: ">"},
                                                       count=32, block=self.read_block_ms)
                for _stream, entries in response or []:
                    for entry_id, fields in entries:
                        await self._handle(entry_id, fields)
                await self._maintain()
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as error:
                now = time.monotonic()
                if self._ready.is_set() or now >= self._next_outage_log:
                    self._next_outage_log = now + 60.0
                    log.warning("Redis unreachable (%s); jobs wait at the bot, in-flight ones are resent once it is "
                                "back", error)
                self._set_ready(False)
                self._need_reconcile = True
                await asyncio.sleep(self.retry_s)
            except ResponseError as error:
                if _is_nogroup(error):
                    log.warning("Redis lost the streams (restarted empty?); reconciling")
                else:
                    log.exception("Redis refused a command")
                self._need_reconcile = True
                await asyncio.sleep(self.retry_s)
            except Exception:  # noqa: BLE001 - the reader must outlive any one bad entry
                log.exception("results reader failed; retrying")
                await asyncio.sleep(self.retry_s)

    async def _reconcile(self) -> None:
        """Make Redis hold every in-flight job again: after a start, a lost connection or an empty restart."""
        await ensure_groups(self.redis, self.keys)
        self._run_id = await self._server_run_id()
        async with self._dispatch_lock:
            # Check the job entries BEFORE reading results: a worker adds its result and deletes the job entry in
            # one transaction, so an entry missing now has its result already waiting in the results stream.
            missing = []
            for flight in [f for f in self._inflight.values() if not f.cancelling]:
                entry = flight.entry_id or await self.redis.hget(self.keys.entries, flight.job.id)
                if not entry or not await self.redis.xrange(self.keys.jobs, entry, entry, count=1):
                    missing.append(flight)
            await self._drain("0")  # ours, read before (e.g. before a bot restart) but not yet acknowledged
            await self._drain(">")
            for flight in missing:
                if not flight.future.done() and self._inflight.get(flight.job.id) is flight:
                    flight.entry_id = None
                    await self._add_unless_present(flight)
                    log.info("job %s: resent to the workers (it was no longer in Redis)", flight.job.id)
        self._need_reconcile = False

    async def _drain(self, start: str) -> None:
        last = start
        while True:
            response = await self.redis.xreadgroup(BOT_GROUP, BOT_CONSUMER, {self.keys.results: last}, count=64)
            entries = response[0][1] if response else []
            if not entries:
                return
            for entry_id, fields in entries:
                if start == "0":
                    last = _text(entry_id)  # walk our pending list forward
                if fields is None:  # deleted while pending
                    await self._ack(entry_id)
                    continue
                await self._handle(entry_id, fields)

    async def _server_run_id(self) -> str:
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.maintenance_s
        if await self._server_run_id() != self._run_id:
            log.warning("Redis restarted; reconciling")
            self._need_reconcile = True
            return
        live = 0
        async for _key in self.redis.scan_iter(match=self.keys.worker("*"), count=200):
            live += 1
        grew = live > self.live_workers
        self.live_workers = live
        if grew:
            self.on_capacity()
        if self._early and self.store is not None and now >= self._next_sweep:
            self._next_sweep = now + 30.0
            for job_id, early in list(self._early.items()):
                if await self._finished_in_store(job_id):
                    self._early.pop(job_id, None)
                    await self._ack(early.entry_id)

    async def _finished_in_store(self, job_id: str) -> bool:
        if self.store is None:
            return False
        job = await self.store.get_job(job_id)
        return job is None or job.state.finished

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        kind = _text(fields.get(b"type"))
        job_id = _text(fields.get(b"job_id"))
        worker = _text(fields.get(b"worker")) or "?"
        flight = self._inflight.get(job_id)
        if kind == "progress":
            if flight is not None:
                try:
                    flight.progress(Progress(step=int(fields[b"step"]), total=int(fields[b"total"]),
                                             elapsed_s=float(fields[b"elapsed"])))
                except Exception:  # noqa: BLE001
                    log.exception("progress callback failed")
            await self._ack(entry_id)
            return
        if kind not in ("result", "failed", "cancelled"):
            log.warning("dropping results entry %s of unknown type %r", _text(entry_id), kind)
            await self._ack(entry_id)
            return
        if flight is None or flight.future.done():
            await self._handle_unawaited(entry_id, fields, kind, job_id, worker)
            return
        if kind == "cancelled":
            flight.future.set_exception(GenerationCancelled("the worker stopped it"))
        elif kind == "failed":
            error = self._failure(fields)
            log.warning("job %s failed on worker %s: %s", job_id, worker, error)
            flight.future.set_exception(error)
        else:
            try:
                flight.future.set_result(await asyncio.to_thread(self._materialize, fields))
                log.info("job %s done by worker %s (delivery %s)", job_id, worker, _text(fields.get(b"deliveries")))
            except Exception:  # noqa: BLE001 - a bad or unwritable result fails the job, not the reader
                log.exception("job %s: could not store the result from worker %s", job_id, worker)
                flight.future.set_exception(RemoteJobFailed(GENERIC_FAILURE, final=False))
        await self._finished_with(job_id, entry_id)

    async def _handle_unawaited(self, entry_id: bytes, fields: dict[bytes, bytes], kind: str, job_id: str,
                                worker: str) -> None:
        """An outcome nobody waits for: a duplicate or stale one is dropped; a result (or a final failure) for a job
        still unfinished is kept, unacknowledged, for the job's next dispatch (a bot restart reads it again)."""
        early = self._early.get(job_id)
        if early is not None and early.entry_id == entry_id:
            return  # re-read from our pending list during a reconcile; already kept
        keep = kind == "result" or (kind == "failed" and _text(fields.get(b"final")) == "1")
        if not keep or early is not None or job_id in self._done or await self._finished_in_store(job_id):
            log.info("job %s: dropping a duplicate or stale %s from worker %s", job_id, kind, worker)
            await self._ack(entry_id)
            return
        if kind == "failed":
            self._early[job_id] = _Early(entry_id, error=self._failure(fields))
        else:
            try:
                tracks = await asyncio.to_thread(self._materialize, fields)
            except Exception:  # noqa: BLE001 - the next dispatch generates it again
                log.exception("job %s: could not store the result from worker %s", job_id, worker)
                await self._ack(entry_id)
                return
            self._early[job_id] = _Early(entry_id, tracks=tracks)
        log.info("job %s: its %s arrived before its dispatch; kept for when it is dispatched", job_id, kind)

    @staticmethod
    def _failure(fields: dict[bytes, bytes]) -> RemoteJobFailed:
        final = _text(fields.get(b"final")) == "1"
        return RemoteJobFailed(_text(fields.get(b"message")) or GENERIC_FAILURE, final=final)

    def _materialize(self, fields: dict[bytes, bytes]) -> list[TrackRecord]:
        """Write the result's files into the bot's MediaStore (atomically, at the track's own paths)."""
        tracks = []
        for meta in json.loads(fields[b"tracks"]):
            track = track_from_dict(meta)
            for ext in FILE_KINDS:
                worker_rel = getattr(track, ext)
                if not worker_rel:  # a chain's helper window has only its master (a float WAV)
                    continue
                data = fields[f"f{track.variation}.{ext}".encode()]
                rel = self.media.path_for(track.id, PurePosixPath(worker_rel).suffix.lstrip(".") or ext)
                path = self.media.absolute(rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
                setattr(track, ext, rel)
            tracks.append(track)
        return tracks

    async def _finished_with(self, job_id: str, result_entry: bytes) -> None:
        """The job's outcome reached the scheduler: forget it in Redis (result, job entry, index)."""
        self._done.add(job_id)
        try:
            await self._ack(result_entry)
            job_entry = await self.redis.hget(self.keys.entries, job_id)
            async with self.redis.pipeline(transaction=True) as pipe:
                if job_entry:
                    pipe.xdel(self.keys.jobs, job_entry)  # a copy resent during a reconcile need not run again
                pipe.hdel(self.keys.entries, job_id)
                await pipe.execute()
        except _CONNECTION_ERRORS as error:
            log.warning("job %s: could not clean up in Redis (%s); a duplicate will be dropped", job_id, error)

    async def _ack(self, entry_id: bytes) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.results, BOT_GROUP, entry_id)
            pipe.xdel(self.keys.results, entry_id)
            await pipe.execute()


# -- worker side ----------------------------------------------------------------------------------------------

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

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


class ScratchStore:
    """A worker's local MediaStore: renders land here, are read back into the result entry, then deleted."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, track_id: str, ext: str) -> str:
        if not _SAFE.match(track_id) or not re.fullmatch(r"[A-Za-z0-9]+", ext):
            raise ValueError(f"unsafe track id or extension: {track_id!r}, {ext!r}")
        return f"{track_id}.{ext}"

    def absolute(self, rel: str) -> Path:
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
            raise ValueError(f"not a scratch path: {rel!r}")
        return self.root.joinpath(*pure.parts)

    def remove(self, rel: str) -> None:
        try:
            self.absolute(rel).unlink()
        except FileNotFoundError:
            pass


@dataclass
class _Task:
    """One job entry a worker holds."""

    entry_id: bytes
    job: Job
    deliveries: int = 1
    input: bytes | None = None
    input_ext: str = "flac"
    lost: bool = False  # the heartbeat found the entry no longer ours


class Worker:
    """Takes jobs from Redis, batches them, runs the model in one thread and publishes files and progress."""

    def __init__(self, settings: RedisSettings, *, prefix: str = "bandmate", name: str | None = None) -> None:
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
        self.models = ModelRegistry(device=settings.device, dtype=settings.dtype, compile=settings.compile)
        self._scratch_dir = tempfile.TemporaryDirectory(prefix="bandmate-worker-")
        self.scratch = ScratchStore(self._scratch_dir.name)
        self.runner = JobRunner(self.models, self.scratch)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bandmate-model")
        self._held: dict[bytes, _Task] = {}  # entries this worker holds; the heartbeat keeps them claimed
        self._stopping = asyncio.Event()
        self._claim_cursor = "0-0"
        self._heartbeat_script = self.redis.register_script(_HEARTBEAT_LUA)
        self._progress_latest: tuple[list[str], Progress] | None = None
        self._progress_task: asyncio.Task | None = None
        self._next_cleanup = 0.0
        self._need_groups = True
        self._next_outage_log = 0.0
        self._published: OrderedDict[str, bytes] = OrderedDict()  # job id -> its result entry, the latest 1000
        self.batches_run = 0

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
            await self._loop.run_in_executor(self._model_thread, self.models.get, self.settings.model)
            heartbeat = asyncio.create_task(self._heartbeat(), name="bandmate-worker-heartbeat")
            log.info("worker %s ready (batches of up to %d rows)", self.name, self.max_batch)
            while not self._stopping.is_set():
                try:
                    await self._take()
                    # Everything held, in stream order: what a Redis error interrupted last time runs now.
                    held = sorted(self._held.values(), key=lambda t: _entry_order(t.entry_id))
                    for batch in plan_batches(held, self.max_batch):
                        if self._stopping.is_set():
                            break  # not started: left in our pending list, others claim it after the idle time
                        await self._run_batch(batch)
                except asyncio.CancelledError:
                    raise
                except _CONNECTION_ERRORS as error:
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
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            if self._progress_task is not None:
                await asyncio.gather(self._progress_task, return_exceptions=True)
            await self._safely(self.redis.delete(self.keys.worker(self.name)))
            await self.redis.aclose()
            self._model_thread.shutdown(wait=True)
            self._scratch_dir.cleanup()
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

    async def _take(self) -> None:
        """Hold what the next batch will run: dead workers' entries first (idle past claim_idle_ms), else the next
        new one, plus the new ones right behind it that can join its batch. Entries that could not join are left
        to other workers instead of waiting here behind a batch they are not part of."""
        if self._need_groups:
            await ensure_groups(self.redis, self.keys)
            self._need_groups = False
        await self._cleanup_consumers()
        room = self.max_batch - len(self._held)
        if room <= 0 or self._stopping.is_set():
            return
        cursor, claimed, _deleted = await self.redis.xautoclaim(
            self.keys.jobs, WORKERS_GROUP, self.name, self.claim_idle_ms, self._claim_cursor, count=room)
        self._claim_cursor = _text(cursor) or "0-0"
        for entry_id, fields in claimed:
            if entry_id not in self._held:
                await self._accept(entry_id, fields, was_claimed=True)
        if not self._held:
            await self._read(1, block=self.block_ms)
        if self._held and not self._stopping.is_set():
            joinable = await self._joinable()
            if joinable:
                await self._read(joinable, block=None)

    async def _read(self, count: int, *, block: int | None) -> None:
        response = await self.redis.xreadgroup(WORKERS_GROUP, self.name, {self.keys.jobs: ">"}, count=count,
                                               block=block)
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                await self._accept(entry_id, fields, was_claimed=False)

    async def _joinable(self) -> int:
        """How many of the next undelivered entries fit into the first batch of what is held (by peeking: if
        another worker reads them first, the ones read instead are simply held for a later batch)."""
        batch = plan_batches(sorted(self._held.values(), key=lambda t: _entry_order(t.entry_id)), self.max_batch)[0]
        head = batch[0].job
        rows, durations = sum(t.job.rows for t in batch), [t.job.duration_s for t in batch]
        if rows >= self.max_batch:
            return 0
        groups = await self.redis.xinfo_groups(self.keys.jobs)
        last = next((g["last-delivered-id"] for g in groups if _text(g["name"]) == WORKERS_GROUP), None)
        if last is None:
            return 0
        count = 0
        for _entry_id, fields in await self.redis.xrange(self.keys.jobs, min=f"({_text(last)}", max="+",
                                                         count=self.max_batch - rows):
            try:
                job = job_from_json(fields[b"job"])
            except Exception:  # noqa: BLE001 - _accept deals with it when it is read
                break
            if rows + job.rows > self.max_batch or not batch_compatible(head, job, durations):
                break
            rows += job.rows
            durations.append(job.duration_s)
            count += 1
        return count

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
        published = self._published.get(job.id)
        if published is not None and await self.redis.xrange(self.keys.results, published, published, count=1):
            # A copy the bot resent (after Redis came back) while our result was on its way: the result still waits
            # for the bot, so this copy need not run. Had the result been lost too, it would not be there.
            log.info("worker %s: job %s is already done, its result waits for the bot; skipping the copy",
                     self.name, job.id)
            await self._ack_job(entry_id)
            return
        task = _Task(entry_id, job, deliveries, fields.get(b"input"), _text(fields.get(b"input_ext")) or "flac")
        if was_claimed:
            log.info("worker %s took over job %s (delivery %d)", self.name, job.id, deliveries)
        self._held[entry_id] = task

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
        audios = await self._generate(tasks, cancelled)
        if audios is None:
            return
        for task in tasks:
            if task.job.id in cancelled:
                await self._publish(task, {"type": "cancelled"})
                continue
            try:
                fields = await asyncio.to_thread(self._render, task, audios[task.job.id])
            except Exception:  # noqa: BLE001
                log.exception("worker %s: rendering job %s failed", self.name, task.job.id)
                await self._fail([task], GENERIC_FAILURE, final=False)
                continue
            await self._publish(task, fields)

    async def _generate(self, tasks: list[_Task], cancelled: set[str]) -> dict[str, list] | None:
        """The model call, in the model thread. None when the outcome is already published (cancelled, failed,
        or split in two after running out of memory)."""
        jobs = [t.job for t in tasks]
        inputs: list[str] = []
        split = False
        watcher = asyncio.create_task(self._watch_cancels(tasks, cancelled))
        started = time.monotonic()
        log.info("worker %s: batch of %d (%s)", self.name, len(jobs), ", ".join(j.id for j in jobs))
        try:
            for task in tasks:  # continuation input: from the entry's bytes to a scratch file the runner reads
                if task.input is not None:
                    rel = self.scratch.path_for(f"{task.job.id}in", task.input_ext)
                    await asyncio.to_thread(self.scratch.absolute(rel).write_bytes, task.input)
                    task.job.input_audio = rel
                    inputs.append(rel)
            audios = await self._loop.run_in_executor(
                self._model_thread,
                lambda: self.runner.generate(jobs, progress=self._progress_reporter([j.id for j in jobs]),
                                             should_stop=lambda: len(cancelled) >= len(jobs)),
            )
        except GenerationCancelled:
            for task in tasks:
                await self._publish(task, {"type": "cancelled"})
            return None
        except OutOfMemory:
            if len(tasks) == 1:
                await self._fail(tasks, OOM_FAILURE, final=True)
                return None
            split = True
        except ModelLoadError as error:
            log.error("worker %s: %s", self.name, error)
            await self._fail(tasks, MODEL_FAILURE, final=True)
            return None
        except ContinuationError as error:
            await self._fail(tasks, str(error), final=True)
            return None
        except Exception:  # noqa: BLE001 - the jobs fail (the scheduler may retry them), the worker goes on
            log.exception("worker %s: batch failed", self.name)
            await self._fail(tasks, GENERIC_FAILURE, final=False)
            return None
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            for rel in inputs:
                self.scratch.remove(rel)
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

    async def _watch_cancels(self, tasks: list[_Task], cancelled: set[str]) -> None:
        while True:
            try:
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
        self._progress_latest = (job_ids, progress)
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = asyncio.create_task(self._send_progress())

    async def _send_progress(self) -> None:
        while self._progress_latest is not None:
            job_ids, p = self._progress_latest
            self._progress_latest = None
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.xadd(self.keys.results, {"type": "progress", "job_id": job_id, "step": p.step,
                                                      "total": p.total, "elapsed": f"{p.elapsed_s:.3f}",
                                                      "worker": self.name})
                    await pipe.execute()
            except Exception as error:  # noqa: BLE001 - progress is best effort
                log.debug("progress not sent: %s", error)

    async def _heartbeat(self) -> None:
        """Keep this worker counted as live, and its held entries from looking idle to other workers."""
        ttl_ms = max(self.claim_idle_ms, int(3000 * self.heartbeat_s))
        while True:
            try:
                await self.redis.set(self.keys.worker(self.name), b"1", px=ttl_ms)
                held = list(self._held)
                if held:
                    kept = await self._heartbeat_script(keys=[self.keys.jobs], args=[WORKERS_GROUP, self.name, *held])
                    for entry_id in set(held) - set(kept or []):
                        task = self._held.get(entry_id)
                        if task is not None and not task.lost:  # taken over, or Redis restarted: carry on anyway
                            task.lost = True
                            log.warning("worker %s: job %s (entry %s) is no longer ours in Redis; a duplicate "
                                        "result is dropped by the bot", self.name, task.job.id, _text(entry_id))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next one
                log.debug("heartbeat failed: %s", error)
            await asyncio.sleep(self.heartbeat_s)


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def plan_batches(tasks: list[_Task], max_batch: int) -> list[list[_Task]]:
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


async def run_worker(settings: RedisSettings) -> int:
    """`python bot.py worker`: one worker until SIGTERM/SIGINT (the batch being generated is finished first)."""
    import signal

    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    return await worker.run()

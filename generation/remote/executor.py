"""The bot side: dispatches the scheduler's jobs to workers and turns their results back into tracks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable

from redis.exceptions import ResponseError

from generation.backend import GenerationCancelled
from generation.jobs import Job, JobStore, TrackRecord
from generation.atomic import write_atomic
from generation.notices import ExecutorNotice, NoticeKind
from generation.runner import MediaStore
from generation.types import Progress

log = logging.getLogger(__name__)
from generation.remote.keys import BOT_CONSUMER, BOT_GROUP, CANCEL_POLL_S, CANCEL_TTL_S, FILE_KINDS, GENERIC_FAILURE, RedisSettings, RemoteJobFailed, StreamKeys, WORKERS_GROUP, connect, ensure_groups
from generation.remote.keys import _CONNECTION_ERRORS, _is_nogroup, _text
from generation.remote.keys import drop_idle_connections, once_more_on_reconnect
from generation.remote.wire import job_to_json, track_from_dict


# -- bot side -------------------------------------------------------------------------------------------------


@dataclass
class _Flight:
    """A job the scheduler handed to us and is awaiting."""

    job: Job
    future: asyncio.Future
    progress: Callable[[Progress], None]
    entry_id: bytes | None = None  # its entry in the jobs stream, once added
    cancelling: bool = False
    worker: str | None = None  # the worker that said it started the job, once one did


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
    reports_start = True  # a dispatched job waits in line at the workers until on_notice says STARTED

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
        self.signer = None  # generation/track_signing.py TrackSigner: set by the application to sign results
        self.on_notice: Callable[[ExecutorNotice], None] = lambda notice: None  # set by the scheduler
        self._outage = False  # an OUTAGE notice went out and no RECOVERED yet
        self._connection_errors = 0  # in a row, at the results reader
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

    @property
    def connected(self) -> bool:
        """Connected to Redis and reconciled (the bot's readiness with remote workers)."""
        return self._ready.is_set()

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
        if len(jobs) == 1:  # inline, not a task: the flight is counted before the scheduler asks for capacity again
            results = [await self._execute_one(jobs[0], progress, should_stop)]
        else:
            results = await asyncio.gather(*(self._execute_one(j, progress, should_stop) for j in jobs))
        if self.signer is not None:  # signed on receipt: the key stays here, the parents' files are here
            for job, tracks in zip(jobs, results):
                await asyncio.to_thread(self.signer.sign_tracks, job, tracks)
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
            async def send() -> None:
                await self.redis.delete(self.keys.cancel(flight.job.id))
                await self._add_unless_present(flight)

            try:
                await once_more_on_reconnect(self.redis, send)  # a pooled connection may have died with Redis
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
            if self._outage:
                self._outage = False
                self._notify(ExecutorNotice(NoticeKind.RECOVERED))
        else:
            self._ready.clear()

    def _notify(self, notice: ExecutorNotice) -> None:
        try:
            self.on_notice(notice)
        except Exception:  # noqa: BLE001 - a status must never stop the results reader
            log.exception("notice callback failed")

    async def _supervise(self) -> None:
        """Reconcile when needed, then read results; on any Redis trouble, back off and reconcile again."""
        while not self._closed:
            try:
                if self._need_reconcile:
                    await self._reconcile()
                    if not self._ready.is_set():
                        log.info("Redis ready at the bot: %d jobs in flight, %d results kept", len(self._inflight),
                                 len(self._early))
                        await drop_idle_connections(self.redis)  # those opened before an outage are dead
                    self._set_ready(True)
                    self._next_outage_log = 0.0
                response = await self.redis.xreadgroup(BOT_GROUP, BOT_CONSUMER, {self.keys.results: ">"},
                                                       count=32, block=self.read_block_ms)
                for _stream, entries in response or []:
                    for entry_id, fields in entries:
                        await self._handle(entry_id, fields)
                await self._maintain()
                self._connection_errors = 0
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as error:
                self._connection_errors += 1
                if self._connection_errors == 1 and self._ready.is_set():
                    # Maybe only a dead pooled connection (Redis restarted): reconnect and try once more at once.
                    log.debug("Redis connection error (%s); reconnecting once before calling it unreachable", error)
                    await drop_idle_connections(self.redis)
                    continue
                if not self._outage:
                    self._outage = True
                    self._notify(ExecutorNotice(NoticeKind.OUTAGE))
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
        if kind == "started":  # a worker began it: a first start, or a takeover after its worker died
            if flight is not None and not flight.future.done():
                taken_over = flight.worker is not None and int(_text(fields.get(b"deliveries")) or 1) > 1
                flight.worker = worker
                self._notify(ExecutorNotice(NoticeKind.TAKEN_OVER if taken_over else NoticeKind.STARTED, (job_id,)))
            await self._ack(entry_id)
            return
        if kind == "progress":
            if flight is not None and flight.worker is None and not flight.future.done():
                flight.worker = worker  # a worker that does not say "started": its first progress does
                self._notify(ExecutorNotice(NoticeKind.STARTED, (job_id,)))
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



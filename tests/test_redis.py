"""Scale-out over Redis Streams, against a real redis-server and real workers (`python bot.py worker`).

The bot side is the real Scheduler on a real SQLite file with `RedisExecutor`; faults (a worker SIGKILLed, Redis
restarted empty, the bot dying) are triggered by the events they must interrupt, never after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile as sf

from generation.spec import JobSpec
from generation.jobs import DeliveryAddress
from generation.jobs import Job, JobKind, JobState, Operation
from generation.remote import RedisExecutor, RemoteJobFailed, StreamKeys, Worker
from generation.scheduler import EventKind, JobEvent, Scheduler, SchedulerConfig
from generation.types import SamplingParams
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import SqliteJobStore

ROOT = Path(__file__).resolve().parent.parent
KEYS = StreamKeys()
CLAIM_IDLE_MS = 2000  # how long a killed worker's job waits before another worker takes it over
HEARTBEAT_S = 0.25
TIMEOUT_S = 90  # a hang fails the test instead of the CI job

pytestmark = pytest.mark.slow


# -- the bot side ---------------------------------------------------------------------------------------------


class RecordingSink:
    """Counts deliveries per job: "exactly once" is checked here."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.delivered: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def deliver(self, job, tracks) -> None:
        self.calls[job.id] += 1
        self.delivered[job.id].set()


class Events:
    def __init__(self, scheduler: Scheduler) -> None:
        self.seen: dict[tuple[EventKind, str], asyncio.Event] = defaultdict(asyncio.Event)
        self.at: dict[tuple[EventKind, str], float] = {}
        self.hooks: dict[tuple[EventKind, str], list] = defaultdict(list)
        scheduler.listen(self._on)

    def _on(self, event: JobEvent) -> None:
        key = (event.kind, event.job_id)
        if key not in self.at:
            self.at[key] = time.monotonic()
            for hook in self.hooks.pop(key, []):
                hook()
        self.seen[key].set()

    def on_first(self, kind: EventKind, job_id: str, hook) -> None:
        """Run `hook` (sync, on the event loop) the moment the event is emitted."""
        self.hooks[(kind, job_id)].append(hook)

    async def wait(self, kind: EventKind, job_id: str) -> None:
        await asyncio.wait_for(self.seen[(kind, job_id)].wait(), TIMEOUT_S)


@dataclass
class Bot:
    db: Database
    store: SqliteJobStore
    files: FileStore
    executor: RedisExecutor
    scheduler: Scheduler
    sink: RecordingSink
    events: Events

    async def wait_delivered(self, *jobs: Job) -> None:
        await asyncio.wait_for(asyncio.gather(*(self.sink.delivered[j.id].wait() for j in jobs)), TIMEOUT_S)

    async def check_done(self, job: Job, seconds: float) -> None:
        """Done, delivered once, one track per variation whose files are on disk and decode to `seconds`."""
        stored = await self.store.get_job(job.id)
        assert stored.state is JobState.DONE, (stored.state, stored.error)
        assert self.sink.calls[job.id] == 1
        tracks = await self.store.tracks_for_job(job.id)
        assert sorted(t.variation for t in tracks) == list(range(job.variations))
        for track in tracks:
            flac = self.files.absolute(track.flac)
            assert abs(sf.info(str(flac)).duration - seconds) < 0.01, (job.id, sf.info(str(flac)).duration)
            for rel in (track.mp3, track.png):
                assert self.files.absolute(rel).stat().st_size > 0


def make_bot(tmp_path: Path, url: str, db: Database | None = None, *, window_s: float = 30.0,
             **executor_options) -> Bot:
    db = db or Database(tmp_path / "bot" / "bandmate.db")
    store = SqliteJobStore(db)
    files = FileStore(tmp_path / "bot")
    options = {"max_batch": 4, "cancel_timeout_s": 30.0, **executor_options}
    executor = RedisExecutor(url, files, store, **options)
    scheduler = Scheduler(store, executor, SchedulerConfig(max_batch=options["max_batch"], per_user_pending=20,
                                                           job_timeout_s=120.0, window_s=window_s))
    return Bot(db, store, files, executor, scheduler, RecordingSink(), Events(scheduler))


@contextlib.asynccontextmanager
async def running_bot(tmp_path: Path, url: str, **options):
    bot = make_bot(tmp_path, url, **options)
    await bot.scheduler.add_sink("test", bot.sink)
    await bot.scheduler.start()
    try:
        yield bot
    finally:
        await bot.scheduler.stop(grace_s=5.0)
        bot.db.close()


def job(user: str, seconds: float, model: str, *, seed: int = 1, variations: int = 1, **fields) -> Job:
    return Job(user_id=user, prompt=f"test piece for {user}", duration_s=seconds, model=model, seed=seed,
               variations=variations, delivery=DeliveryAddress("test"), **fields)


async def assert_redis_clean(url: str) -> None:
    """Nothing left behind: no job entries (queued or pending), no undelivered outcome, no index rows."""
    client = aioredis.Redis.from_url(url)
    try:
        assert await client.xlen(KEYS.jobs) == 0
        assert (await client.xpending(KEYS.jobs, "workers"))["pending"] == 0
        assert (await client.xpending(KEYS.results, "bot"))["pending"] == 0
        left = [f[b"type"] for _, f in await client.xrange(KEYS.results)]
        assert b"result" not in left and b"failed" not in left, left
        assert await client.hlen(KEYS.entries) == 0
    finally:
        await client.aclose()


# -- workers ----------------------------------------------------------------------------------------------------


class WorkerProcess:
    """`python bot.py worker` with short claim and heartbeat times; its log goes to a file for failure messages."""

    def __init__(self, url: str, model: str, tmp_path: Path, n: int) -> None:
        self.log_path = tmp_path / f"worker{n}.log"
        env = {**os.environ, "BANDMATE_REDIS_URL": url, "BANDMATE_MODEL": model,
               "BANDMATE_DATA": str(tmp_path / f"worker{n}-data"), "BANDMATE_DEVICE": "cpu", "BANDMATE_DTYPE": "fp32",
               "BANDMATE_MAX_BATCH": "4", "BANDMATE_REDIS_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
               "BANDMATE_REDIS_HEARTBEAT_S": str(HEARTBEAT_S), "BANDMATE_REDIS_MAX_DELIVERIES": "3",
               "BANDMATE_LOG_LEVEL": "info", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "bot.py", "worker"], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path, redis_server, tiny_model_path):
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        worker = WorkerProcess(redis_server.url, tiny_model_path, tmp_path, len(started) + 1)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def worker_settings(url: str, model: str, **overrides) -> SimpleNamespace:
    """What an in-process Worker reads from bot.Settings."""
    values = dict(redis_url=url, redis_claim_idle_ms=CLAIM_IDLE_MS, redis_heartbeat_s=HEARTBEAT_S,
                  redis_max_deliveries=3, max_batch=4, model=model, device="cpu", dtype="fp32", compile=False)
    return SimpleNamespace(**{**values, **overrides})


@contextlib.asynccontextmanager
async def in_process_worker(settings: SimpleNamespace):
    """A Worker on the test's own event loop. One torch thread, as the subprocess workers have: spinning intra-op
    threads next to a busy event loop slow a model thread down many times over on a small machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        try:
            assert await asyncio.wait_for(task, TIMEOUT_S) == 0
        finally:
            torch.set_num_threads(threads)


async def holder_of(url: str, job_id: str) -> str:
    """The consumer (worker name) holding a job's entry right now."""
    client = aioredis.Redis.from_url(url)
    try:
        entry = await client.hget(KEYS.entries, job_id)
        pending = await client.xpending_range(KEYS.jobs, "workers", min=entry, max=entry, count=1)
        return pending[0]["consumer"].decode()
    finally:
        await client.aclose()


def continuation_input(files: FileStore, name: str, seconds: float) -> str:
    rel = files.path_for(name, "flac")
    files.absolute(rel).parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 32000)) / 32000
    sf.write(str(files.absolute(rel)), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 32000)
    return rel


# -- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_jobs_run_on_two_workers_and_arrive_once(tmp_path, redis_server, tiny_model_path, start_worker):
    workers = [start_worker(), start_worker()]
    async with running_bot(tmp_path, redis_server.url) as bot:
        model = tiny_model_path
        jobs = [
            job("ana", 1.0, model, seed=1),
            job("ana", 1.2, model, seed=2, variations=2),
            job("ben", 1.0, model, seed=3, sampling=SamplingParams(top_k=50)),
            job("cy", 1.0, model, seed=4, kind=JobKind.CONTINUE, operation=Operation.CONTINUE),
        ]
        jobs[3].input_audio = continuation_input(bot.files, f"{jobs[3].id}in", 1.0)  # travels as bytes
        long = job("dee", 20.0, model, seed=5)
        cancel_sent: list[float] = []

        def cancel_long() -> None:
            cancel_sent.append(time.monotonic())
            asyncio.ensure_future(bot.scheduler.cancel(long.id))

        bot.events.on_first(EventKind.PROGRESS, long.id, cancel_long)
        for j in [long, *jobs]:
            await bot.scheduler.submit(j)
        await bot.wait_delivered(*jobs)
        await bot.events.wait(EventKind.CANCELLED, long.id)

        for j, seconds in zip(jobs, (1.0, 1.2, 1.0, 2.0)):  # the continuation starts with its 1 s input
            await bot.check_done(j, seconds)
        assert (await bot.store.get_job(long.id)).state is JobState.CANCELLED
        # The worker stopped mid-generation and said so: far quicker than the executor's 30 s give-up time.
        assert bot.events.at[(EventKind.CANCELLED, long.id)] - cancel_sent[0] < 5.0
        assert bot.sink.calls[long.id] == 0
    await assert_redis_clean(redis_server.url)
    for worker in workers:  # SIGTERM: a clean exit that takes the worker off the live list
        assert worker.terminate() == 0, worker.output()
    client = aioredis.Redis.from_url(redis_server.url)
    assert [k async for k in client.scan_iter(match=KEYS.worker("*"))] == []
    await client.aclose()


@pytest.mark.asyncio
async def test_a_long_extend_runs_window_by_window_on_a_worker(tmp_path, redis_server, tiny_model_path, start_worker):
    """Each window of a chain (generation/chain.py) goes through Redis; helpers' audio comes back as float WAV."""
    worker = start_worker()
    async with running_bot(tmp_path, redis_server.url, window_s=4.0) as bot:
        owner = job("eve", 6.0, tiny_model_path, seed=6, kind=JobKind.CONTINUE, operation=Operation.EXTEND,
                    spec=JobSpec(source_s=1.0))
        owner.input_audio = continuation_input(bot.files, f"{owner.id}in", 1.0)
        await bot.scheduler.submit(owner)
        await bot.wait_delivered(owner)
        await bot.check_done(owner, 7.0)  # 1 s + 3 + 1 + 1 + 1 s, four windows
        helpers = [await bot.store.job_by_key(f"{owner.id}/window{k}") for k in (1, 2, 3)]
        assert [h.state for h in helpers] == [JobState.DONE] * 3
        for k, helper in enumerate(helpers):
            output = bot.files.absolute(helper.spec.window.output)
            assert output.suffix == ".wav" and sf.info(str(output)).duration == pytest.approx(4.0 + k)
        assert bot.sink.calls == {owner.id: 1}
    await assert_redis_clean(redis_server.url)
    assert worker.terminate() == 0, worker.output()


@pytest.mark.asyncio
async def test_window_keeps_the_queue_fair_at_the_bot(tmp_path, redis_server, tiny_model_path):
    """Without workers, only `window` jobs go to Redis, in round-robin order; the rest wait at the bot."""
    bot = make_bot(tmp_path, redis_server.url, max_batch=2)  # window: 2 * 2 per live worker, at least one
    await bot.scheduler.add_sink("test", bot.sink)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        ana = [job("ana", 1.0, tiny_model_path, seed=i) for i in range(6)]
        ben = job("ben", 1.0, tiny_model_path, seed=10)
        for j in [*ana, ben]:
            await bot.store.add_job(j)  # all queued before the scheduler starts: the order is decided at once
        await bot.scheduler.start()

        async def dispatched(n: int) -> list[str]:
            while len(bot.executor._inflight) < n or await client.xlen(KEYS.jobs) < n:
                await asyncio.sleep(0.01)
            return [f[b"job_id"].decode() for _, f in await client.xrange(KEYS.jobs)]

        order = await asyncio.wait_for(dispatched(4), TIMEOUT_S)
        assert order == [ana[0].id, ben.id, ana[1].id, ana[2].id]  # ben is not stuck behind ana's six
        assert not bot.executor.has_capacity() and bot.scheduler.depth == 3
        # Two live workers (their heartbeat keys) double the window.
        for name in ("box-a:1:abc", "box-b:2:def"):
            await client.set(KEYS.worker(name), b"1", px=60_000)
        order = await asyncio.wait_for(dispatched(7), TIMEOUT_S)
        assert order[4:] == [j.id for j in ana[3:]] and bot.scheduler.depth == 0
        # Stopping: jobs no worker has taken are withdrawn from Redis at once and stay queued in SQLite.
        started = time.monotonic()
        await bot.scheduler.stop(grace_s=0.0)
        assert time.monotonic() - started < 5.0
        assert await client.xlen(KEYS.jobs) == 0 and await client.hlen(KEYS.entries) == 0
        assert {j.state for j in await bot.store.unfinished_jobs()} == {JobState.QUEUED}
    finally:
        await client.aclose()
        bot.db.close()


@pytest.mark.asyncio
async def test_worker_killed_mid_batch_is_taken_over(tmp_path, redis_server, tiny_model_path, start_worker, caplog):
    caplog.set_level(logging.INFO, logger="generation.remote.executor")
    workers = {w.pid: w for w in (start_worker(), start_worker())}
    async with running_bot(tmp_path, redis_server.url) as bot:
        long = job("ana", 20.0, tiny_model_path, seed=7)  # ~2-5 s of generation on one CPU thread
        others = [job(user, 1.0, tiny_model_path, seed=i) for i, user in enumerate(("ben", "cy", "dee"))]
        killed: list[WorkerProcess] = []
        kill_done = asyncio.Event()

        async def kill_holder() -> None:
            name = await holder_of(redis_server.url, long.id)
            victim = workers[int(name.rsplit(":", 2)[1])]  # host:pid:random
            victim.kill()
            killed.append(victim)
            kill_done.set()

        bot.events.on_first(EventKind.PROGRESS, long.id, lambda: asyncio.ensure_future(kill_holder()))
        for j in [long, *others]:
            await bot.scheduler.submit(j)
        await asyncio.wait_for(kill_done.wait(), TIMEOUT_S)
        killed_at = time.monotonic()
        await bot.wait_delivered(long, *others)
        taken_over_s = time.monotonic() - killed_at

        await bot.check_done(long, 20.0)
        for j in others:
            await bot.check_done(j, 1.0)
        assert killed[0].proc.returncode == -signal.SIGKILL
        survivor = next(w for w in workers.values() if w is not killed[0])
        survivor_name = f":{survivor.pid}:"
        done_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {long.id} done")]
        assert len(done_lines) == 1 and survivor_name in done_lines[0] and "(delivery 2)" in done_lines[0], done_lines
        logging.getLogger(__name__).info("kill to delivery: %.1f s", taken_over_s)
    await assert_redis_clean(redis_server.url)
    assert survivor.terminate() == 0, survivor.output()


@pytest.mark.asyncio
async def test_redis_restarted_empty_mid_queue(tmp_path, redis_server, tiny_model_path, start_worker, caplog):
    caplog.set_level(logging.INFO, logger="generation.remote.executor")
    worker = start_worker()
    async with running_bot(tmp_path, redis_server.url) as bot:
        long = job("ana", 10.0, tiny_model_path, seed=1)
        others = [job(user, 1.0, tiny_model_path, seed=i) for i, user in enumerate(("ben", "cy", "dee"))]
        restarted = asyncio.Event()

        async def restart() -> None:
            await asyncio.to_thread(redis_server.restart_empty)
            restarted.set()

        bot.events.on_first(EventKind.PROGRESS, long.id, lambda: asyncio.ensure_future(restart()))
        for j in [long, *others]:
            await bot.scheduler.submit(j)
        await asyncio.wait_for(restarted.wait(), TIMEOUT_S)
        await bot.wait_delivered(long, *others)

        await bot.check_done(long, 10.0)
        for j in others:
            await bot.check_done(j, 1.0)
        assert any("resent to the workers" in r.getMessage() for r in caplog.records)
        assert worker.terminate() == 0, worker.output()  # idle or not: what it holds is finished first
    await assert_redis_clean(redis_server.url)


@pytest.mark.asyncio
async def test_bot_restart_takes_the_result_that_arrived_meanwhile(tmp_path, redis_server, tiny_model_path, caplog):
    """The bot dies while a worker generates; the result waits in the stream and is used, not generated again."""
    caplog.set_level(logging.INFO, logger="generation.remote.executor")
    url = redis_server.url
    async with in_process_worker(worker_settings(url, tiny_model_path)):
        first = make_bot(tmp_path, url)
        await first.scheduler.add_sink("test", first.sink)
        await first.scheduler.start()
        piece = job("ana", 10.0, tiny_model_path, seed=3)
        crashed = asyncio.Event()

        async def crash() -> None:  # like a killed process: tasks vanish, nothing is written anywhere
            first.scheduler._loop_task.cancel()
            for task in list(first.scheduler._tasks):
                task.cancel()
            await asyncio.gather(first.scheduler._loop_task, *first.scheduler._tasks, return_exceptions=True)
            await first.executor.close()
            crashed.set()

        first.events.on_first(EventKind.PROGRESS, piece.id, lambda: asyncio.ensure_future(crash()))
        await first.scheduler.submit(piece)
        await asyncio.wait_for(crashed.wait(), TIMEOUT_S)
        assert (await first.store.get_job(piece.id)).state is JobState.RUNNING

        client = aioredis.Redis.from_url(url)
        try:
            async def result_waiting() -> None:
                last = "0"
                while True:
                    for _, entries in await client.xread({KEYS.results: last}, block=1000):
                        for entry_id, fields in entries:
                            last = entry_id
                            if fields[b"type"] == b"result" and fields[b"job_id"] == piece.id.encode():
                                return

            await asyncio.wait_for(result_waiting(), TIMEOUT_S)

            second = make_bot(tmp_path, url, db=first.db)
            await second.scheduler.add_sink("test", second.sink)
            await second.scheduler.start()
            try:
                await second.wait_delivered(piece)
                await second.check_done(piece, 10.0)
            finally:
                await second.scheduler.stop(grace_s=5.0)
            assert (await client.xinfo_stream(KEYS.jobs))["entries-added"] == 1  # never dispatched twice
            assert any("arrived before it was dispatched again" in r.getMessage() for r in caplog.records)
        finally:
            await client.aclose()
            first.db.close()
    await assert_redis_clean(url)


@pytest.mark.asyncio
async def test_job_that_keeps_killing_workers_is_dead_lettered(tmp_path, redis_server, tiny_model_path):
    url = redis_server.url
    files = FileStore(tmp_path / "bot")
    executor = RedisExecutor(url, files)
    client = aioredis.Redis.from_url(url)
    try:
        piece = job("ana", 1.0, tiny_model_path)
        outcome = asyncio.create_task(executor.execute([piece], lambda p: None, lambda: False))
        while not await client.hget(KEYS.entries, piece.id):
            await asyncio.sleep(0.01)
        entry = await client.hget(KEYS.entries, piece.id)
        # Three workers took it and died holding it (each delivery counts, as with a real crash).
        await client.xreadgroup("workers", "crashed-1", {KEYS.jobs: ">"}, count=1)
        for ghost in ("crashed-2", "crashed-3"):
            await client.xclaim(KEYS.jobs, "workers", ghost, 0, [entry])
        async with in_process_worker(worker_settings(url, tiny_model_path, redis_claim_idle_ms=100)) as worker:
            with pytest.raises(RemoteJobFailed) as failure:
                await asyncio.wait_for(outcome, TIMEOUT_S)
            assert worker.batches_run == 0
        assert failure.value.final
        assert "tried 3 times" in failure.value.user_message and "set aside" in failure.value.user_message
        dead = await client.xrange(KEYS.dead)
        assert len(dead) == 1
        fields = dead[0][1]
        assert fields[b"job_id"] == piece.id.encode() and fields[b"deliveries"] == b"4"
        assert fields[b"reason"] == b"too many deliveries" and fields[b"entry"] == entry
    finally:
        await executor.close()
        await client.aclose()
    await assert_redis_clean(url)

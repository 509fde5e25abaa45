"""What a status message says while Redis workers fail: a worker SIGKILLed mid-job, Redis down then back empty, and
jobs waiting behind the only worker. Real redis-server, real workers; the statuses are the scheduler's events
rendered by the core's own `status_text`, as every transport shows them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections import defaultdict

import pytest
import redis.asyncio as aioredis

from bot.views import status_text
from generation.events import EventKind, JobEvent
from generation.notices import OUTAGE_TEXT, TAKEN_OVER_NOTE, TAKEN_OVER_TEXT
from generation.remote.keys import once_more_on_reconnect
from generation.remote.scratch import OWNER_FILE, PREFIX, STALE_AFTER_S, make_scratch_dir, sweep_stale_scratch
from test_redis import (TIMEOUT_S, WorkerProcess, assert_redis_clean, holder_of, in_process_worker, job, running_bot,
                        start_worker, worker_settings)  # noqa: F401 - start_worker is a fixture

pytestmark = pytest.mark.slow


class Statuses:
    """Every status text each job showed, in order, with the event behind it; and hooks on texts."""

    def __init__(self, scheduler, jobs) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.seen: dict[str, list[tuple[EventKind, str, JobEvent]]] = defaultdict(list)
        self.latest: dict[str, str] = {}
        self.up_next_twice: list[dict[str, str]] = []
        self._waiters: list[tuple[callable, asyncio.Event]] = []
        scheduler.listen(self._on)

    def _on(self, event: JobEvent) -> None:
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        text = status_text(job, event)
        self.seen[job.id].append((event.kind, text, event))
        self.latest[job.id] = text
        if sum("up next" in t for t in self.latest.values()) > 1:
            self.up_next_twice.append(dict(self.latest))
        for check, flag in self._waiters:
            if check():
                flag.set()

    async def until(self, check) -> None:
        """Until check() holds: looked at on each event, and every 50 ms for state that changes without one."""
        flag = asyncio.Event()
        self._waiters.append((check, flag))

        async def poll() -> None:
            while not check():
                await asyncio.sleep(0.05)
            flag.set()

        poller = asyncio.ensure_future(poll())
        try:
            await asyncio.wait_for(flag.wait(), TIMEOUT_S)
        finally:
            poller.cancel()
            self._waiters.remove((check, flag))

    def texts(self, job_id: str) -> list[str]:
        return [t for _, t, _ in self.seen[job_id]]


@pytest.mark.asyncio
async def test_a_killed_workers_job_says_it_starts_again(tmp_path, redis_server, tiny_model_path, start_worker):
    workers = {w.pid: w for w in (start_worker(), start_worker())}
    async with running_bot(tmp_path, redis_server.url) as bot:
        long = job("ana", 20.0, tiny_model_path, seed=7)
        statuses = Statuses(bot.scheduler, [long])
        killed: list[WorkerProcess] = []

        async def kill_holder() -> None:
            name = await holder_of(redis_server.url, long.id)
            victim = workers[int(name.rsplit(":", 2)[1])]
            victim.kill()
            killed.append(victim)

        # Kill once the job is well under way, so its bar has something to lose.
        await bot.scheduler.submit(long)
        await statuses.until(lambda: any(e.kind is EventKind.PROGRESS and e.step * 4 >= e.total > 0
                                         for _, _, e in statuses.seen[long.id]))
        await kill_holder()
        await statuses.until(lambda: any(TAKEN_OVER_TEXT in t for t in statuses.texts(long.id)))
        await bot.wait_delivered(long)
        await bot.check_done(long, 20.0)

    kinds = [k for k, _, _ in statuses.seen[long.id]]
    texts = statuses.texts(long.id)
    notice = next(i for i, t in enumerate(texts) if TAKEN_OVER_TEXT in t)
    assert kinds[notice] is EventKind.NOTICE and kinds[-1] is EventKind.DONE
    # Never a silent jump back: the bar only goes down at the notice, which says why.
    steps = [(i, e.step) for i, (k, _, e) in enumerate(statuses.seen[long.id]) if k is EventKind.PROGRESS]
    for (_, before), (i, after) in zip(steps, steps[1:]):
        assert after >= before or i > notice > 0, (texts, i)
    # After it, the progress keeps saying so until the piece is done.
    after = [t for k, t, _ in statuses.seen[long.id][notice + 1:] if k is EventKind.PROGRESS]
    assert after and all(TAKEN_OVER_NOTE in t for t in after), after
    assert texts[-1].endswith("✅ done — posting it now")
    # The killed worker's scratch folder is swept by the next worker that starts on this host.
    victim = killed[0].pid
    left = [p for p in _scratch_folders() if _owner_pid(p) == victim]
    assert len(left) == 1
    sweep_stale_scratch()
    assert not left[0].exists()
    await assert_redis_clean(redis_server.url)


@pytest.mark.asyncio
async def test_redis_outage_is_said_and_cleared(tmp_path, redis_server, tiny_model_path, start_worker, caplog):
    caplog.set_level(logging.INFO)
    worker = start_worker()
    async with running_bot(tmp_path, redis_server.url) as bot:
        long = job("ana", 10.0, tiny_model_path, seed=1)
        others = [job(user, 1.0, tiny_model_path, seed=i) for i, user in enumerate(("ben", "cy"))]
        statuses = Statuses(bot.scheduler, [long, *others])
        for j in [long, *others]:
            await bot.scheduler.submit(j)
        await statuses.until(lambda: any(k is EventKind.PROGRESS for k, _, _ in statuses.seen[long.id]))
        await asyncio.to_thread(redis_server.stop)
        # Every job says so, running or waiting.
        await statuses.until(lambda: all(OUTAGE_TEXT in statuses.latest.get(j.id, "") for j in (long, *others)))
        during = dict(statuses.latest)
        await asyncio.to_thread(redis_server.start)  # back, and empty
        await bot.wait_delivered(long, *others)
        for j in (long, *others):
            await bot.check_done(j, 10.0 if j is long else 1.0)
        assert worker.terminate() == 0, worker.output()

    assert "%" in during[long.id] and "⚠️" in during[long.id]  # where it was, and why it waits
    for j in others:  # waiting in line, or (a worker's slots take text jobs as they come) already under way
        assert any(where in during[j.id] for where in ("in line", "up next", "%")), during[j.id]
        assert "⚠️" in during[j.id]
    for j in (long, *others):
        texts = statuses.texts(j.id)
        last_outage = max(i for i, t in enumerate(texts) if OUTAGE_TEXT in t)
        cleared = texts[last_outage + 1:]
        assert cleared and all(OUTAGE_TEXT not in t for t in cleared), texts  # once back, the notice goes
        assert texts[-1].endswith("✅ done — posting it now")
    outages = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert outages  # the real outage is logged...
    await assert_redis_clean(redis_server.url)


@pytest.mark.asyncio
async def test_jobs_behind_the_only_worker_show_their_place(tmp_path, redis_server, tiny_model_path, caplog):
    """Dispatched to Redis is not started: until a worker takes a job it shows its place in line, one 'up next'."""
    caplog.set_level(logging.INFO, logger="generation.remote.worker")
    async with running_bot(tmp_path, redis_server.url) as bot:
        jobs = [job(user, 1.0, tiny_model_path, seed=i) for i, user in enumerate(("ana", "ben", "cy"))]
        jobs[1].duration_s = 3.0  # not batchable with the others: the worker runs more than one batch
        statuses = Statuses(bot.scheduler, jobs)
        for j in jobs:
            await bot.scheduler.submit(j)
        await statuses.until(lambda: len(bot.executor._inflight) == 3)  # all three are in Redis
        assert [bot.scheduler.position(j.id) for j in jobs] == [1, 2, 3]
        assert not any(k is EventKind.STARTED for j in jobs for k, _, _ in statuses.seen[j.id])
        assert "up next" in statuses.latest[jobs[0].id] and "#3 in line" in statuses.latest[jobs[2].id]
        # A fast heartbeat beside every publish: its race with them must not cry "no longer ours".
        async with in_process_worker(worker_settings(redis_server.url, tiny_model_path, redis_heartbeat_s=0.02)):
            await bot.wait_delivered(*jobs)
    for j in jobs:
        kinds = [k for k, _, _ in statuses.seen[j.id]]
        assert EventKind.STARTED in kinds and kinds[-1] is EventKind.DONE
        assert "starting…" not in " ".join(t for k, t, _ in statuses.seen[j.id] if k is not EventKind.STARTED)
    assert statuses.up_next_twice == []
    assert not [r for r in caplog.records if "no longer held" in r.getMessage()]
    await assert_redis_clean(redis_server.url)


@pytest.mark.asyncio
async def test_a_dead_pooled_connection_is_retried_once(redis_server):
    client = aioredis.Redis.from_url(redis_server.url, retry_on_error=[], retry=None)
    try:
        await client.set("k", b"1")  # the pool now holds a connection...
        await asyncio.to_thread(redis_server.restart_empty)  # ...that died with the server
        assert await once_more_on_reconnect(client, lambda: client.set("k", b"2"))
        assert await client.get("k") == b"2"
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(Exception):  # really unreachable: the second error propagates
            await once_more_on_reconnect(client, lambda: client.get("k"))
    finally:
        await client.aclose()


def test_sweep_removes_only_dead_workers_scratch(tmp_path):
    mine = make_scratch_dir(tmp_path)
    dead = make_scratch_dir(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (dead / OWNER_FILE).write_text(f"{os.uname().nodename} {gone.pid}\n")
    other_host = make_scratch_dir(tmp_path)
    (other_host / OWNER_FILE).write_text(f"some-other-host {gone.pid}\n")
    old, fresh = tmp_path / f"{PREFIX}old", tmp_path / f"{PREFIX}fresh"
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (time.time() - STALE_AFTER_S - 60,) * 2)
    assert sweep_stale_scratch(tmp_path) == 2
    assert mine.exists() and other_host.exists() and fresh.exists()
    assert not dead.exists() and not old.exists()


def _scratch_folders():
    import tempfile
    from pathlib import Path

    return [p for p in Path(tempfile.gettempdir()).glob(f"{PREFIX}*") if (p / OWNER_FILE).exists()]


def _owner_pid(folder) -> int:
    return int((folder / OWNER_FILE).read_text().split()[1])

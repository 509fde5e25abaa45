"""Redis workers run the engine's own decoder (generation/remote/slots.py): an entry that arrives while others run
joins them at the next step, each job is published when it leaves, a cancel frees its slot, a killed worker's
running entries are taken over and give the same audio, and plain-path jobs still run beside them.

A real redis-server, the real Scheduler and RedisExecutor at the bot, real workers on the tiny fixture in fp32.
Steps and event order, never wall time: a hook in the model thread records each drive-loop step and can hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import numpy as np
import pytest
import soundfile as sf

from generation.jobs import JobKind, JobState, Operation
from generation.remote import Worker
from generation.scheduler import EventKind
from generation.types import tokens_for
from test_redis import (TIMEOUT_S, assert_redis_clean, continuation_input, job, running_bot, start_worker,  # noqa: F401
                        worker_settings)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


class StepLog:
    """After every drive-loop step (model thread): the tokens each active job has drawn; `hold` stops the model
    thread at the first step a condition holds, until the test opens it (never longer than 60 s)."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self.rows: list[tuple[int, dict[str, int]]] = []
        self._holds: list[Hold] = []
        driver.on_step = self

    def hold(self, when) -> "Hold":
        hold = Hold(when)
        self._holds.append(hold)
        return hold

    def __call__(self, step: int) -> None:
        drawn = self.driver.drawn()
        self.rows.append((step, drawn))
        for hold in self._holds:
            if not hold.reached.is_set() and hold.when(step, drawn):
                hold.reached.set()
                hold.open.wait(60)

    def first_step(self, job_id: str) -> int:
        return min(step for step, drawn in self.rows if drawn.get(job_id, 0) > 0)

    def last_step(self, job_id: str) -> int:
        return max(step for step, drawn in self.rows if job_id in drawn)

    def overlap(self, a: str, b: str) -> bool:
        return any(a in drawn and b in drawn for _, drawn in self.rows)


class Hold:
    def __init__(self, when) -> None:
        self.when, self.reached, self.open = when, threading.Event(), threading.Event()

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 60)


async def until(predicate) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT_S)


@contextlib.asynccontextmanager
async def slot_worker(url: str, model: str, models, **overrides):
    """A Worker on the test's event loop, sharing the session's loaded tiny model."""
    worker = Worker(worker_settings(url, model, **overrides), models=models)
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.ready or task.done())
        yield worker
    finally:
        worker.stop()
        assert await asyncio.wait_for(task, TIMEOUT_S) == 0


async def flac_of(bot, job_id: str) -> np.ndarray:
    (track,) = await bot.store.tracks_for_job(job_id)
    return sf.read(str(bot.files.absolute(track.flac)), dtype="float32")[0]


async def alone(bot, user: str, seconds: float, model: str, seed: int) -> np.ndarray:
    """The same request as a new job, with nothing else running."""
    again = job(user, seconds, model, seed=seed)
    await bot.scheduler.submit(again)
    await bot.wait_delivered(again)
    return await flac_of(bot, again.id)


async def test_an_entry_arriving_mid_run_joins_at_the_next_step_and_each_job_is_published_as_it_leaves(
        tmp_path, redis_server, models, tiny_model_path):
    url = redis_server.url
    async with running_bot(tmp_path, url) as bot, slot_worker(url, tiny_model_path, models) as worker:
        driver = worker.slots.driver
        log = StepLog(driver)
        first, second = job("ana", 1.0, tiny_model_path, seed=7), job("ben", 0.5, tiny_model_path, seed=3)
        joined = log.hold(lambda step, drawn: step == 5)
        left = log.hold(lambda step, drawn: second.id not in drawn and any(second.id in d for _, d in log.rows))
        await bot.scheduler.submit(first)
        await joined.wait_reached()  # the first job has drawn 5 tokens; the model thread waits
        await bot.scheduler.submit(second)
        await until(lambda: second.id in driver.active_job_ids())  # read from the stream and queued in the decoder
        joined.open.set()
        await left.wait_reached()  # the second job left its slot; the first is still mid-run and held there
        await bot.wait_delivered(second)  # rendered, published and acknowledged while the first is running
        assert (await bot.store.get_job(first.id)).state is JobState.RUNNING
        left.open.set()
        await bot.wait_delivered(first)
        await bot.check_done(first, 1.0)
        await bot.check_done(second, 0.5)

        assert log.first_step(second.id) == 6  # its first token at the very next step ...
        assert log.last_step(second.id) == 5 + tokens_for(0.5) < log.last_step(first.id)  # ... and out after its own
        assert driver.steps_run == tokens_for(1.0)  # one drive loop: the longer job's steps, not the sum
        assert worker.slots.jobs_run == 2
        a, b = await flac_of(bot, first.id), await flac_of(bot, second.id)
        assert np.array_equal(a, await alone(bot, "ana", 1.0, tiny_model_path, 7))
        assert np.array_equal(b, await alone(bot, "ben", 0.5, tiny_model_path, 3))
    await assert_redis_clean(url)


async def test_a_cancel_frees_the_slot_and_the_next_entry_is_unaffected(tmp_path, redis_server, models,
                                                                        tiny_model_path):
    url = redis_server.url
    async with running_bot(tmp_path, url) as bot, slot_worker(url, tiny_model_path, models, max_batch=1) as worker:
        log = StepLog(worker.slots.driver)
        first, second = job("ana", 2.0, tiny_model_path, seed=7), job("ben", 0.5, tiny_model_path, seed=3)
        held = log.hold(lambda step, drawn: step == 5)
        await bot.scheduler.submit(first)
        await held.wait_reached()
        await bot.scheduler.submit(second)  # one slot, taken: it waits in Redis
        assert await bot.scheduler.cancel(first.id)
        await until(lambda: worker.slots.cancel_seen(first.id))
        held.open.set()
        await bot.wait_delivered(second)
        await bot.events.wait(EventKind.CANCELLED, first.id)

        assert (await bot.store.get_job(first.id)).state is JobState.CANCELLED and bot.sink.calls[first.id] == 0
        await bot.check_done(second, 0.5)
        assert log.last_step(first.id) <= 6  # it left at the next step ...
        assert not log.overlap(first.id, second.id)  # ... and the next entry took its slot only then
        assert worker.slots.driver.steps_run <= 6 + tokens_for(0.5)
        b = await flac_of(bot, second.id)
        assert np.array_equal(b, await alone(bot, "ben", 0.5, tiny_model_path, 3))
    await assert_redis_clean(url)


async def test_a_killed_workers_running_entries_are_taken_over_and_give_the_same_audio(
        tmp_path, redis_server, models, tiny_model_path, start_worker, caplog):
    caplog.set_level(logging.INFO, logger="generation.remote.executor")
    url = redis_server.url
    doomed = start_worker()  # `python bot.py worker`: the decoder's slots by default
    async with running_bot(tmp_path, url) as bot:
        first, second = job("ana", 4.0, tiny_model_path, seed=7), job("ben", 3.0, tiny_model_path, seed=3)
        both_running = asyncio.Event()
        bot.events.on_first(EventKind.PROGRESS, second.id, both_running.set)  # the first started before it
        for j in (first, second):
            await bot.scheduler.submit(j)
        await asyncio.wait_for(both_running.wait(), TIMEOUT_S)
        doomed.kill()
        assert not bot.sink.calls  # killed mid-run: neither was finished

        async with slot_worker(url, tiny_model_path, models) as survivor:
            await bot.wait_delivered(first, second)
            await bot.check_done(first, 4.0)
            await bot.check_done(second, 3.0)
            done = [r.getMessage() for r in caplog.records if " done by worker " in r.getMessage()]
            for j in (first, second):
                (line,) = [m for m in done if m.startswith(f"job {j.id} done")]
                assert survivor.name in line and "(delivery 2)" in line, line
            a, b = await flac_of(bot, first.id), await flac_of(bot, second.id)
            assert np.array_equal(a, await alone(bot, "ana", 4.0, tiny_model_path, 7))
            assert np.array_equal(b, await alone(bot, "ben", 3.0, tiny_model_path, 3))
    await assert_redis_clean(url)


async def test_a_mixed_queue_of_text_and_continuation_completes(tmp_path, redis_server, models, tiny_model_path):
    url = redis_server.url
    async with running_bot(tmp_path, url) as bot, slot_worker(url, tiny_model_path, models) as worker:
        text = job("ana", 1.0, tiny_model_path, seed=1)
        cont = job("ben", 1.0, tiny_model_path, seed=2, kind=JobKind.CONTINUE, operation=Operation.CONTINUE)
        cont.input_audio = continuation_input(bot.files, f"{cont.id}in", 1.0)  # travels as bytes
        pair = job("cy", 0.5, tiny_model_path, seed=3, variations=2)
        for j in (text, cont, pair):
            await bot.scheduler.submit(j)
        await bot.wait_delivered(text, cont, pair)
        for j, seconds in ((text, 1.0), (cont, 2.0), (pair, 0.5)):  # the continuation starts with its 1 s input
            await bot.check_done(j, seconds)
        assert worker.slots.jobs_run == 3 and worker.batches_run == 3  # the continuation ran in the slots too
    await assert_redis_clean(url)


async def test_decoder_generate_keeps_the_fixed_batches(tmp_path, redis_server, models, tiny_model_path):
    url = redis_server.url
    async with running_bot(tmp_path, url) as bot, slot_worker(url, tiny_model_path, models,
                                                              decoder="generate") as worker:
        piece = job("ana", 0.5, tiny_model_path, seed=1)
        await bot.scheduler.submit(piece)
        await bot.wait_delivered(piece)
        await bot.check_done(piece, 0.5)
        assert worker.slots is None and worker.batches_run == 1
    await assert_redis_clean(url)

"""Continuations, songs (a chorus that follows the first one's melody too) and remixes run in the decoder's shared
slots (generation/slot_jobs.py): the same audio as the plain `generate` path, sample for sample, and they join a
running job instead of waiting for it to end. The tiny fixtures in fp32; steps and event order, never wall time."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from generation.backend import GenerationCancelled
from generation.jobs import DeliveryAddress, Job, JobKind, Operation
from generation.postprocess import write_flac
from generation.runner import JobRunner
from generation.slot_driver import DecoderOptions, SlotDriver
from generation.song import parse_sections, sections_to_spec
from generation.spec import ChorusMode, JobSpec
from storage.files import FileStore

TINY_MELODY = str(Path(__file__).resolve().parent / "fixtures" / "tiny-musicgen-melody")
RATE = 32_000


class Steps(list):
    """After every drive-loop step (model thread): the tokens each active job has drawn. `hold(at, until)` keeps
    the model thread at step `at` until `until()` holds (never over 60 s), so what a test does meanwhile lands
    between two known steps, however fast or loaded the machine is."""

    def __init__(self, driver: SlotDriver) -> None:
        super().__init__()
        self.driver = driver
        self.holds: list[tuple[int, object]] = []
        driver.on_step = self.stepped

    def hold(self, at: int, until) -> None:
        self.holds.append((at, until))

    def stepped(self, step: int) -> None:
        self.append(self.driver.drawn())
        for at, until in self.holds:
            deadline = time.monotonic() + 60
            while step == at and not until() and time.monotonic() < deadline:
                time.sleep(0.005)

    async def reach(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert len(self) >= count


@pytest.fixture
def world(tmp_path, models):
    files = FileStore(tmp_path)
    runner = JobRunner(models, files)
    pool = ThreadPoolExecutor(max_workers=1)
    driver = SlotDriver(runner, DecoderOptions(slots=4), pool)
    yield files, runner, pool, driver, Steps(driver)
    driver.cancel_all()
    pool.shutdown(wait=True)


def stored(files: FileStore, name: str, seconds: float) -> str:
    t = np.arange(int(seconds * RATE)) / RATE
    rel = files.path_for(name, "flac")
    files.absolute(rel).parent.mkdir(parents=True, exist_ok=True)
    write_flac((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None], RATE, files.absolute(rel))
    return rel


def make(kind: str, files: FileStore, model: str, sections: str = "verse 2, chorus 2, verse 2, chorus 2",
         variations: int = 2) -> Job:
    base = dict(user_id="u", delivery=DeliveryAddress("test"), model=model)
    if kind == "continue":
        return Job(prompt="lo-fi piano", duration_s=1.0, seed=11, kind=JobKind.CONTINUE, operation=Operation.EXTEND,
                   input_audio=stored(files, "source", 1.0), spec=JobSpec(source_s=1.0), **base)
    if kind == "song":
        spans = sections_to_spec(parse_sections(sections))
        return Job(prompt="synth pop", duration_s=sum(s for _, s in spans), seed=5, kind=JobKind.SONG,
                   variations=variations,
                   spec=JobSpec(sections=spans, chorus=ChorusMode.MELODY, melody_model=TINY_MELODY), **base)
    assert kind == "remix"
    return Job(prompt="brass band", duration_s=1.0, seed=3, kind=JobKind.REMIX, operation=Operation.REMIX,
               input_audio=stored(files, "tune", 1.5), **{**base, "model": TINY_MELODY})


async def plain(pool, runner: JobRunner, job: Job):
    return (await asyncio.get_running_loop().run_in_executor(pool, runner.generate, [job]))[job.id]


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x.samples, y.samples) for x, y in zip(a, b))


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["continue", "song", "remix"])
async def test_a_job_in_the_slots_sounds_as_the_plain_generate_path_makes_it(world, tiny_model_path, kind):
    files, runner, pool, driver, drawn = world
    job = make(kind, files, tiny_model_path)
    assert driver.decodable(job)
    slotted = await driver.decode(job, lambda p: None, lambda: False)
    assert driver.steps_run > 0 and drawn and all(job.id in step for step in drawn)  # it ran in the drive loop
    assert same(slotted, await plain(pool, runner, job))


@pytest.mark.asyncio
async def test_a_continuation_and_a_song_join_a_running_job_and_leave_before_it(world, tiny_model_path):
    files, runner, pool, driver, drawn = world
    long = Job(user_id="u", prompt="jazz drums", duration_s=12.0, model=tiny_model_path, seed=1,
               delivery=DeliveryAddress("test"))
    cont = make("continue", files, tiny_model_path)
    song = make("song", files, tiny_model_path, sections="verse 2, chorus 2", variations=1)
    assert await driver.ensure_for(cont) and await driver.ensure_for(song)  # decoders built before any hold
    # the long job runs 5 steps, then the model thread waits there until both newcomers are in the slots
    drawn.hold(at=5, until=lambda: {cont.id, song.id} <= set(driver.active_job_ids()))
    running = asyncio.create_task(driver.decode(long, lambda p: None, lambda: False))
    await drawn.reach(5)
    joined_at = len(drawn)
    assert drawn[-1][long.id] == 5
    cont_audio, song_audio = await asyncio.gather(driver.decode(cont, lambda p: None, lambda: False),
                                                  driver.decode(song, lambda p: None, lambda: False))
    assert not running.done()  # both were made while the long job ran on
    beside = [step for step in drawn[joined_at:] if long.id in step]
    assert any(cont.id in step for step in beside) and any(song.id in step for step in beside)
    long_audio = await running
    assert same(cont_audio, await plain(pool, runner, cont))
    assert same(song_audio, await plain(pool, runner, song))
    assert same(long_audio, await plain(pool, runner, long))  # and it is unchanged by them


@pytest.mark.asyncio
async def test_a_song_stopped_mid_run_is_cancelled_and_frees_its_slots(world, tiny_model_path):
    files, runner, pool, driver, drawn = world
    song = make("song", files, tiny_model_path)
    stop = asyncio.Event()
    drawn.hold(at=60, until=stop.is_set)  # past its first section's start, until the test says stop
    task = asyncio.create_task(driver.decode(song, lambda p: None, stop.is_set))
    await drawn.reach(60)
    stop.set()
    with pytest.raises(GenerationCancelled):
        await task
    assert driver.active_job_ids() == []
    after = make("continue", files, tiny_model_path)  # the slots serve the next job as before
    assert same(await driver.decode(after, lambda p: None, lambda: False), await plain(pool, runner, after))


@pytest.mark.asyncio
async def test_closing_while_the_drive_loop_waits_behind_other_work_settles_every_job(tmp_path, models,
                                                                                     tiny_model_path):
    """The model thread is busy (a plain job, a model loading) when a continuation submits its first call; then the
    bot closes and the queued drive loop never runs. The job still ends, as cancelled, and its job thread exits."""
    import threading

    files = FileStore(tmp_path)
    runner = JobRunner(models, files)
    pool = ThreadPoolExecutor(max_workers=1)
    driver = SlotDriver(runner, DecoderOptions(slots=2), pool)
    await driver.ensure_for(make("continue", files, tiny_model_path))  # the decoder is built
    busy, release = threading.Event(), threading.Event()
    pool.submit(lambda: (busy.set(), release.wait(30)))
    assert busy.wait(30)
    job = make("continue", files, tiny_model_path)
    task = asyncio.create_task(driver.decode(job, lambda p: None, lambda: False))
    deadline = time.monotonic() + 30
    while not driver._driving and time.monotonic() < deadline:  # its first call is queued behind the busy thread
        await asyncio.sleep(0.01)
    assert driver._driving and not driver.active_job_ids() == []
    driver.cancel_all()
    pool.shutdown(wait=False, cancel_futures=True)  # as DecoderExecutor.close does: the queued loop never starts
    release.set()
    with pytest.raises(GenerationCancelled):
        await asyncio.wait_for(task, 30)
    assert driver.active_job_ids() == [] and not driver._driving
    with pytest.raises(GenerationCancelled):  # and nothing new waits for a loop that cannot start
        await driver.decode(make("continue", files, tiny_model_path), lambda p: None, lambda: False)
    pool.shutdown(wait=True)


@pytest.mark.asyncio
async def test_a_prompt_longer_than_a_slot_holds_goes_the_plain_path_instead_of_failing(world, tiny_model_path):
    files, runner, pool, driver, drawn = world
    odd = "".join("aB3xQ9zK"[(i * 5) % 8] + "7mW"[i % 3] for i in range(150))  # 300 characters, a token each
    job = Job(user_id="u", prompt=odd, duration_s=0.5, model=tiny_model_path, seed=1, delivery=DeliveryAddress("t"))
    assert driver.decodable(job) and not await driver.ensure_for(job)
    ordinary = Job(user_id="u", prompt="lo-fi piano, rainy night " * 12, duration_s=0.5, model=tiny_model_path,
                   seed=1, delivery=DeliveryAddress("t"))
    assert await driver.ensure_for(ordinary)
    assert (await plain(pool, runner, job))[0].samples.shape[-1] == RATE // 2  # the plain path makes it

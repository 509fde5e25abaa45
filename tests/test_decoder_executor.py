"""The decoder behind the queue (generation/decoder_executor.py) through the real Scheduler and SQLite on the tiny
fixture in fp32: a job submitted while another runs joins it at the next step, and each gives the same audio as
alone (and as the `generate` path); a cancel frees the slot; mixed queues complete; a restart gives the same audio.
Steps, not wall time: a hook in the model thread holds the drive loop at a chosen step."""

from __future__ import annotations

import asyncio
import functools
import threading

import numpy as np
import pytest
import soundfile as sf

from app.settings import Settings
from generation.decoder_executor import DecoderExecutor, DecoderOptions
from generation.jobs import JobKind, JobState, Operation
from generation.local_executor import LocalExecutor
from generation.scheduler import EventKind, SchedulerConfig
from generation.song import parse_sections, sections_to_spec
from generation.spec import JobSpec
from generation.types import tokens_for
from queue_harness import Harness
from test_chain import source_audio

pytestmark = pytest.mark.asyncio

CONFIG = SchedulerConfig(max_batch=4, per_user_pending=10, progress_interval_s=0.0, gather_s=0.0)


def decoder_executor(slots: int = 4):
    return functools.partial(DecoderExecutor, options=DecoderOptions(slots=slots))


class Gate:
    """Holds the model thread after drive-loop step `at` until released (never longer than 60 s)."""

    def __init__(self, executor: DecoderExecutor, at: int) -> None:
        self.at, self.reached, self.open = at, threading.Event(), threading.Event()
        executor.on_step = self

    def __call__(self, step: int) -> None:
        if step == self.at:
            self.reached.set()
            self.open.wait(60)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 60)


def make(tmp_path, models, model, name: str, executor=None, config: SchedulerConfig = CONFIG) -> Harness:
    return Harness(tmp_path / name, models, config, model=model, executor=executor or decoder_executor())


async def flac_of(h: Harness, job_id: str) -> np.ndarray:
    (track,) = await h.store.tracks_for_job(job_id)
    return sf.read(str(h.files.absolute(track.flac)), dtype="float32")[0]


async def alone(tmp_path, models, model, name: str, executor=None, **job) -> np.ndarray:
    h = make(tmp_path, models, model, name, executor)
    await h.start()
    try:
        made = await h.scheduler.submit(h.job("solo", **job))
        await h.wait_delivered(1)
        return await flac_of(h, made.id)
    finally:
        await h.close()


def index_of(events, job_id: str, predicate) -> int:
    return next(i for i, e in enumerate(events) if e.job_id == job_id and predicate(e))


A = dict(prompt="lo-fi piano rainy night", duration=1.0, seed=7)
B = dict(prompt="jazz drums", duration=0.5, seed=3)


async def test_a_job_submitted_mid_run_joins_at_the_next_step_and_both_sound_as_alone(tmp_path, models,
                                                                                      tiny_model_path):
    h = make(tmp_path, models, tiny_model_path, "joined")
    gate = Gate(h.executor, at=5)
    await h.start()
    try:
        first = await h.scheduler.submit(h.job("alice", **A))
        await gate.wait_reached()  # the first job has drawn 5 tokens; the model thread waits
        second = await h.scheduler.submit(h.job("bob", **B))
        await h.wait_for(lambda: second.id in h.executor.active_job_ids())
        gate.open.set()
        await h.wait_delivered(2)
        events = h.events
        last_a = index_of(events, first.id, lambda e: e.kind is EventKind.PROGRESS and e.step == e.total)
        first_b = index_of(events, second.id, lambda e: e.kind is EventKind.PROGRESS)
        last_b = index_of(events, second.id, lambda e: e.kind is EventKind.PROGRESS and e.step == e.total)
        assert first_b < last_a  # joined while the first was running ...
        assert last_b < last_a  # ... and, shorter, left first, after its own steps
        assert h.executor.steps_run == tokens_for(1.0)  # one drive loop: the longer job's steps, not the sum
        a, b = await flac_of(h, first.id), await flac_of(h, second.id)
    finally:
        await h.close()
    assert np.array_equal(a, await alone(tmp_path, models, tiny_model_path, "a", **A))
    assert np.array_equal(b, await alone(tmp_path, models, tiny_model_path, "b", **B))
    # the decoder alone gives the generate path's audio (fp32)
    assert np.array_equal(a, await alone(tmp_path, models, tiny_model_path, "a-generate", LocalExecutor, **A))


async def test_a_cancel_mid_run_frees_the_slot_and_the_next_job_is_unaffected(tmp_path, models, tiny_model_path):
    h = make(tmp_path, models, tiny_model_path, "cancel", decoder_executor(slots=1))
    gate = Gate(h.executor, at=5)
    await h.start()
    try:
        first = await h.scheduler.submit(h.job("alice", **A))
        await gate.wait_reached()
        second = await h.scheduler.submit(h.job("bob", **B))
        assert not h.executor.has_capacity() and h.scheduler.position(second.id) == 1  # waits for the one slot
        assert await h.scheduler.cancel(first.id)
        gate.open.set()
        await h.wait_delivered(1)  # a cancelled job has nothing to deliver
        assert [call[0] for call in h.sink.calls] == [second.id]
        assert (await h.store.get_job(first.id)).state is JobState.CANCELLED
        assert (await h.store.get_job(second.id)).state is JobState.DONE
        cancelled = index_of(h.events, first.id, lambda e: e.kind is EventKind.CANCELLED)
        assert index_of(h.events, second.id, lambda e: e.kind is EventKind.STARTED) > cancelled
        assert h.executor.steps_run <= 5 + 2 + tokens_for(0.5)  # the cancelled job left within a step or two
        b = await flac_of(h, second.id)
        assert h.executor.has_capacity()
    finally:
        await h.close()
    assert np.array_equal(b, await alone(tmp_path, models, tiny_model_path, "b", decoder_executor(slots=1), **B))


async def test_a_mixed_queue_of_text_continuation_and_song_all_complete(tmp_path, models, tiny_model_path):
    h = make(tmp_path, models, tiny_model_path, "mixed")
    await h.start()
    try:
        jobs = [
            h.job("alice", **A),
            h.job("bob", "lo-fi piano", duration=1.0, kind=JobKind.CONTINUE, operation=Operation.EXTEND, seed=11,
                  input_audio=source_audio(h, 1.0), spec=JobSpec(source_s=1.0)),
            h.job("carol", "synth pop", duration=4.0, kind=JobKind.SONG, seed=5,
                  spec=JobSpec(sections=sections_to_spec(parse_sections("verse 2, chorus 2")))),
            h.job("dave", **B),
            h.job("erin", "calm ambient", duration=0.5, seed=1, variations=2),
        ]
        made = [await h.scheduler.submit(j) for j in jobs]
        await h.wait_delivered(len(made), timeout=180)
        for job in made:
            stored = await h.store.get_job(job.id)
            assert stored.state is JobState.DONE, (stored.kind, stored.error)
            assert len(await h.store.tracks_for_job(job.id)) == job.variations
        assert h.executor.has_capacity()
    finally:
        await h.close()


async def test_a_job_requeued_by_a_restart_gives_the_audio_of_its_first_attempt(tmp_path, models, tiny_model_path):
    first_run = make(tmp_path, models, tiny_model_path, "restart")
    gate = Gate(first_run.executor, at=10)
    await first_run.start()
    job = await first_run.scheduler.submit(first_run.job("alice", **A))
    await gate.wait_reached()
    stopping = asyncio.create_task(first_run.scheduler.stop(grace_s=0.0))
    await first_run.wait_for(lambda: any(b.stop_reason for b in first_run.scheduler._batches))
    gate.open.set()
    await stopping
    first_run.db.close()
    assert any(e.kind is EventKind.REQUEUED and e.job_id == job.id for e in first_run.events)

    second_run = make(tmp_path, models, tiny_model_path, "restart")  # the same database: the job resumes
    await second_run.start()
    try:
        await second_run.wait_delivered(1)
        resumed = await second_run.store.get_job(job.id)
        assert resumed.state is JobState.DONE and resumed.attempts == 1
        audio = await flac_of(second_run, job.id)
    finally:
        await second_run.close()
    assert np.array_equal(audio, await alone(tmp_path, models, tiny_model_path, "solo", **A))


async def test_other_families_and_large_jobs_take_the_generate_path(tmp_path, models, tiny_model_path):
    h = make(tmp_path, models, tiny_model_path, "big", decoder_executor(slots=1))
    await h.start()
    try:
        big = await h.scheduler.submit(h.job("alice", "calm", duration=0.5, seed=2, variations=2))
        await h.wait_delivered(1)
        assert (await h.store.get_job(big.id)).state is JobState.DONE
        assert h.executor.steps_run == 0  # more variations than slots: one generate call, no drive loop
    finally:
        await h.close()


async def test_settings_choose_the_decoder_and_cuda_graphs():
    assert Settings.from_env({}).decoder == "slots" and Settings.from_env({}).cuda_graphs is True
    settings = Settings.from_env({"BANDMATE_DECODER": "generate", "BANDMATE_CUDA_GRAPHS": "0"})
    assert settings.decoder == "generate" and settings.cuda_graphs is False


async def test_the_application_runs_the_decoder_executor_by_default(tmp_path, tiny_model_path):
    from app.services import Application

    app = Application(Settings(data_dir=tmp_path / "a", model=tiny_model_path, device="cpu", dtype="fp32"))
    assert isinstance(app.executor, DecoderExecutor) and app.executor.options.slots == 4
    assert app.scheduler.config.gather_s == 0.0
    await app.close(grace_s=0)
    plain = Application(Settings(data_dir=tmp_path / "b", model=tiny_model_path, decoder="generate"))
    assert isinstance(plain.executor, LocalExecutor)
    await plain.close(grace_s=0)

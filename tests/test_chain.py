"""Long continuations as chains of window jobs (generation/chain.py) through the real queue, store and tiny model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from generation.spec import JobSpec
from generation.chain import helper_key, plan_chain
from generation.jobs import DeliveryState, JobKind, JobState, Operation
from generation.postprocess import write_flac
from generation.scheduler import EventKind, SchedulerConfig
from queue_harness import Harness
from storage.backup import backup

pytestmark = pytest.mark.asyncio

RATE = 32_000
# Windows of at most 4 s keep the tiny model quick: 2 s + 6 s is made as 2 + 1 + 1 + 1 + 1 s, five windows.
WINDOW = SchedulerConfig(window_s=4.0, max_batch=1, per_user_pending=10)


def source_audio(h: Harness, seconds: float = 2.0) -> str:
    t = np.arange(int(seconds * RATE)) / RATE
    rel = h.files.path_for("source", "flac")
    h.files.absolute(rel).parent.mkdir(parents=True, exist_ok=True)
    write_flac((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None], RATE, h.files.absolute(rel))
    return rel


def extend_job(h: Harness, user: str = "alice", add_s: float = 6.0, source_s: float = 2.0):
    return h.job(user, "lo-fi piano", duration=add_s, kind=JobKind.CONTINUE, operation=Operation.EXTEND, seed=11,
                 input_audio=source_audio(h, source_s), spec=JobSpec(source_s=source_s))


async def helpers_of(h: Harness, owner_id: str, count: int):
    owner = await h.store.get_job(owner_id)
    return [await h.store.job_by_key(helper_key(owner, k)) for k in range(1, count + 1)]


async def test_only_long_single_continuations_are_chained(tmp_path, models, tiny_model_path):
    h = Harness(tmp_path, models, WINDOW, model=tiny_model_path)
    assert plan_chain(extend_job(h), 4.0) == [(2.0, 2.0), (3.0, 1.0), (3.0, 1.0), (3.0, 1.0), (3.0, 1.0)]
    assert plan_chain(extend_job(h, add_s=1.5), 4.0) is None  # one window
    assert plan_chain(extend_job(h), 30.0) is None
    several = extend_job(h)
    several.variations = 2
    assert plan_chain(several, 4.0) is None  # variations continue inside one job
    assert plan_chain(h.job("bob", duration=20.0), 4.0) is None  # not a continuation
    h.db.close()


async def test_each_window_is_a_job_and_the_piece_is_one_file(harness):
    h = harness(WINDOW)
    h.scheduler.remove_files = None  # keep the windows' audio to look at the joins
    owner = extend_job(h)
    source = owner.input_audio
    await h.start()
    await h.scheduler.submit(owner)
    await h.wait_delivered(1)

    assert h.sink.calls == [(owner.id, "done", 1)]
    helpers = await helpers_of(h, owner.id, 4)
    assert all(j.state is JobState.DONE and j.delivery_state is DeliveryState.DELIVERED for j in helpers)
    assert [await h.store.tracks_for_job(j.id) for j in helpers] == [[]] * 4  # no track anyone sees
    # Each window continues the previous one's audio untouched: every output starts with the one before.
    outputs = [h.files.absolute(j.spec.window.output) for j in helpers]
    previous = sf.read(str(h.files.absolute(source)), dtype="float32")[0]
    for k, path in enumerate(outputs, start=1):
        audio, rate = sf.read(str(path), dtype="float32")
        assert rate == RATE and len(audio) == RATE * (3 + k)  # 2 s, then 2 + 1 + 1 + 1 s
        np.testing.assert_array_equal(audio[: len(previous) - int(0.04 * RATE)],
                                      previous[: len(previous) - int(0.04 * RATE)])
        previous = audio
    [track] = await h.store.tracks_for_job(owner.id)
    master, rate = sf.read(str(h.files.absolute(track.flac)))
    assert len(master) == 8 * RATE and track.duration_s == pytest.approx(8.0)
    stored = await h.store.get_job(owner.id)
    assert stored.input_audio == source  # the row keeps the user's source for lineage

    # Progress is the owner's, across all windows; no event names a helper.
    ids = {e.job_id for e in h.events}
    assert ids == {owner.id}
    progress = [e for e in h.events if e.kind is EventKind.PROGRESS]
    assert {e.message for e in progress} == {f"window {k} of 5" for k in range(1, 6)}
    steps = [e.step for e in progress]
    assert steps == sorted(steps) and steps[-1] == progress[-1].total == 103 + 4 * 53
    await h.close()


async def test_other_peoples_jobs_run_between_windows_and_windows_are_removed(harness, tmp_path):
    h = harness(WINDOW)
    owner = extend_job(h)
    await h.scheduler.submit(owner)
    other = h.job("bob", duration=1.0)
    await h.scheduler.submit(other)
    await h.start()
    await h.wait_delivered(2)
    helpers = await helpers_of(h, owner.id, 4)
    bob = await h.store.get_job(other.id)
    # Alice's first window ran first; Bob's job did not wait for her whole piece.
    assert helpers[0].started_at <= bob.started_at <= helpers[1].started_at
    assert sorted(h.removed) == sorted(j.spec.window.output for j in helpers)
    assert not any(h.files.absolute(rel).exists() for rel in h.removed)
    # A backup does not miss the deleted window files: finished windows' inputs are not referenced.
    made = await asyncio.to_thread(backup, h.db.path, h.files.root, tmp_path / "backup")
    assert made.missing == [] and len(made.files) == 3 + 3 + 1  # two tracks (mp3, png, flac) and the source
    await h.close()


async def test_cancelling_the_piece_cancels_its_current_window(harness):
    h = harness(WINDOW)
    owner = extend_job(h, add_s=12.0)
    await h.start()
    await h.scheduler.submit(owner)
    await h.wait_for(lambda: any(e.message == "window 2 of 11" for e in h.events))
    [window] = h.scheduler.running_jobs()
    assert h.scheduler.request_id(window.id) == owner.id != window.id  # /queue shows the user's own job
    assert h.scheduler.eta(owner.id) > h.scheduler.eta(window.id) > 0  # nine more windows after this one
    assert await h.scheduler.cancel(owner.id)
    await h.wait_for(lambda: any(e.kind is EventKind.CANCELLED for e in h.events))
    await h.wait_for(lambda: not h.scheduler.running_jobs())
    assert (await h.store.get_job(owner.id)).state is JobState.CANCELLED
    first, second, third = await helpers_of(h, owner.id, 3)
    assert first.state is JobState.DONE and second.state is JobState.CANCELLED and third is None
    assert h.removed == [first.spec.window.output] and not h.files.absolute(first.spec.window.output).exists()
    assert not any(c[1] == "done" for c in h.sink.calls)
    await h.close()


async def test_a_cancel_between_two_windows_stops_the_chain(harness):
    h = harness(WINDOW)
    owner = extend_job(h)
    answers = []
    record_spec = h.store.record_spec

    async def record_then_cancel(job):
        """The moment window 1's output is recorded, before window 2 exists: neither queued nor running."""
        await record_spec(job)
        if job.id == owner.id and not answers:
            answers.append(await h.scheduler.cancel(owner.id))

    h.store.record_spec = record_then_cancel
    await h.start()
    await h.scheduler.submit(owner)
    await h.wait_for(lambda: any(e.kind is EventKind.CANCELLED for e in h.events))
    assert answers == [True]
    assert (await h.store.get_job(owner.id)).state is JobState.CANCELLED
    first, second = await helpers_of(h, owner.id, 2)
    assert first.state is JobState.DONE and second is None  # window 2 never started
    assert h.removed == [first.spec.window.output]
    await h.close()


async def test_a_window_that_keeps_failing_fails_the_piece_once(harness, models):
    calls = []

    class BreaksOnSecondWindow:
        """The tiny model, except that every call after the first one fails."""

        def __init__(self, backend) -> None:
            self._backend = backend

        def __getattr__(self, name):
            return getattr(self._backend, name)

        def generate(self, requests, **kw):
            calls.append(len(requests))
            if len(calls) > 1:
                raise RuntimeError("the GPU fell over")
            return self._backend.generate(requests, **kw)

    h = harness(WINDOW, backend_for=lambda model_id: BreaksOnSecondWindow(models(model_id)))
    owner = extend_job(h)
    await h.start()
    await h.scheduler.submit(owner)
    await h.wait_delivered(1)
    assert h.sink.calls == [(owner.id, "failed", 0)]
    first, second = await helpers_of(h, owner.id, 2)
    assert first.state is JobState.DONE and second.state is JobState.FAILED and second.attempts == 2
    assert len(calls) == 3  # window 1, then window 2 twice (one retry); never window 3
    assert (await h.store.get_job(owner.id)).error == second.error
    assert h.removed == [first.spec.window.output]
    await h.close()


async def test_a_restart_resumes_at_the_window_it_stopped_in(tmp_path, models, tiny_model_path):
    first = Harness(tmp_path, models, WINDOW, model=tiny_model_path)
    owner = extend_job(first)
    await first.start()
    await first.scheduler.submit(owner)
    await first.wait_for(lambda: any(e.message == "window 3 of 5" for e in first.events))
    await first.scheduler.stop(grace_s=0)  # the third window goes back to the queue
    first.db.close()

    second = Harness(tmp_path, models, WINDOW, model=tiny_model_path)
    await second.start()
    await second.wait_delivered(1)
    assert second.sink.calls == [(owner.id, "done", 1)]
    helpers = await helpers_of(second, owner.id, 4)
    assert [j.attempts for j in helpers[:2]] == [1, 1]  # finished windows were not made again
    assert {e.message for e in second.events if e.kind is EventKind.PROGRESS} >= {"window 3 of 5", "window 5 of 5"}
    assert "window 1 of 5" not in {e.message for e in second.events}
    [track] = await second.store.tracks_for_job(owner.id)
    assert track.duration_s == pytest.approx(8.0)
    await second.close()

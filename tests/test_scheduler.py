"""The fair, batching queue with the real SQLite store and the tiny model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from generation.backend import OutOfMemory
from generation.jobs import DeliveryState, JobState
from generation.scheduler import EventKind, QueueRefused, SchedulerConfig
from generation.types import Progress, SamplingParams
from queue_harness import Harness

pytestmark = pytest.mark.asyncio


async def test_compatible_jobs_share_one_model_call(harness):
    h = harness(SchedulerConfig(max_batch=4, per_user_pending=10))
    a, b, c = h.job("u1", duration=2.0), h.job("u2", "calm piano", duration=1.8), h.job("u3", duration=1.6)
    odd_sampling = h.job("u4", sampling=SamplingParams(guidance=1.5), duration=2.0)
    too_short = h.job("u5", duration=1.0)  # 1.0 s next to 2.0 s would waste half the batch on padding
    for job in (a, b, c, odd_sampling, too_short):
        await h.scheduler.submit(job)
    await h.start()
    await h.wait_delivered(5)
    started = [e for e in h.events if e.kind is EventKind.STARTED]
    by_job = {e.job_id: e.message for e in started}
    assert by_job[a.id] == by_job[b.id] == by_job[c.id] == "batch of 3"
    assert by_job[odd_sampling.id] == "batch of 1"
    assert by_job[too_short.id] == "batch of 1"
    assert {state for _, state, _ in h.sink.calls} == {"done"}
    await h.close()


async def test_round_robin_one_persons_ten_jobs_never_starve_another(harness):
    h = harness(SchedulerConfig(max_batch=1, per_user_pending=10))
    alice = [h.job("alice", duration=0.5) for _ in range(4)]
    for job in alice:
        await h.scheduler.submit(job)
    bob, carol = h.job("bob", duration=0.5), h.job("carol", duration=0.5)
    await h.scheduler.submit(bob)
    await h.scheduler.submit(carol)
    assert h.scheduler.position(bob.id) == 2 and h.scheduler.position(carol.id) == 3
    await h.start()
    await h.wait_delivered(6)
    assert h.started_order() == [alice[0].id, bob.id, carol.id, alice[1].id, alice[2].id, alice[3].id]
    await h.close()


async def test_caps_are_answered_with_a_clear_message(harness):
    h = harness(SchedulerConfig(per_user_pending=2, max_depth=3))
    await h.scheduler.submit(h.job("u1"))
    await h.scheduler.submit(h.job("u1"))
    with pytest.raises(QueueRefused, match="limit is 2"):
        await h.scheduler.submit(h.job("u1"))
    await h.scheduler.submit(h.job("u2"))
    with pytest.raises(QueueRefused, match="queue is full"):
        await h.scheduler.submit(h.job("u3"))
    assert await h.store.count_pending() == 3  # refused jobs were never stored
    await h.close()


async def test_idempotency_key_returns_the_first_job(harness):
    h = harness()
    first = await h.scheduler.submit(h.job("u1", idempotency_key="interaction-1"))
    again = await h.scheduler.submit(h.job("u1", idempotency_key="interaction-1"))
    assert again.id == first.id and h.scheduler.depth == 1
    await h.close()


async def test_cancel_a_queued_job(harness):
    h = harness(SchedulerConfig(max_batch=1))
    keep, drop = h.job("u1"), h.job("u2")
    await h.scheduler.submit(keep)
    await h.scheduler.submit(drop)
    assert await h.scheduler.cancel(drop.id)
    await h.start()
    await h.wait_delivered(1)
    assert (await h.store.get_job(drop.id)).state is JobState.CANCELLED
    assert drop.id not in h.started_order()
    assert await h.store.tracks_for_job(drop.id) == []
    await h.close()


async def test_cancel_a_running_job_stops_the_model_call(harness):
    h = harness()
    job = h.job("u1", duration=20.0)
    cancelled = asyncio.Event()

    def on_event(event):
        if event.kind is EventKind.PROGRESS and not cancelled.is_set():
            cancelled.set()
            asyncio.ensure_future(h.scheduler.cancel(job.id))

    h.scheduler.listen(on_event)
    await h.start()
    await h.scheduler.submit(job)
    await h.wait_for(lambda: any(e.kind is EventKind.CANCELLED for e in h.events))
    stored = await h.store.get_job(job.id)
    assert stored.state is JobState.CANCELLED
    steps = [e.step for e in h.events if e.kind is EventKind.PROGRESS]
    assert max(steps) < 1003  # stopped long before the last of 1003 steps
    assert await h.store.tracks_for_job(job.id) == []
    await h.close()


async def test_eta_comes_from_measured_speed(harness):
    h = harness(SchedulerConfig(max_batch=1, per_user_pending=10))
    jobs = [h.job(f"u{i}", duration=3.0) for i in range(3)]
    for job in jobs:
        await h.scheduler.submit(job)
    assert h.scheduler.eta(jobs[2].id) is None  # nothing measured yet
    await h.start()
    await h.wait_for(lambda: any(e.kind is EventKind.PROGRESS and e.step > 20 for e in h.events))
    eta1, eta2 = h.scheduler.eta(jobs[1].id), h.scheduler.eta(jobs[2].id)
    assert eta1 is not None and 0 < eta1 < eta2
    # a queued job's ETA is at least a full job's worth of measured steps
    assert eta2 >= 2 * 153 * h.scheduler._step_s * 0.99
    await h.wait_delivered(3)
    await h.close()


async def test_a_batch_over_time_fails_with_a_message(harness):
    h = harness(SchedulerConfig(job_timeout_s=0.3))
    job = h.job("u1", duration=30.0)
    await h.start()
    await h.scheduler.submit(job)
    await h.wait_delivered(1)
    stored = await h.store.get_job(job.id)
    assert stored.state is JobState.FAILED and "longer than 0 s" not in stored.error
    assert "took longer than" in stored.error
    assert h.sink.calls == [(job.id, "failed", 0)]
    await h.close()


class SmallGpu:
    """The tiny backend on a 'GPU' that holds only two sequences: larger batches run out of memory."""

    def __init__(self, backend, rows: int = 2) -> None:
        self.backend, self.rows, self.calls = backend, rows, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, requests, **kw):
        rows = sum(r.variations for r in requests)
        self.calls.append(rows)
        if rows > self.rows:
            raise OutOfMemory("CUDA out of memory (simulated)")
        return self.backend.generate(requests, **kw)


async def test_out_of_memory_splits_the_batch_instead_of_failing_everyone(harness, tiny_backend):
    gpu = SmallGpu(tiny_backend)
    h = harness(SchedulerConfig(max_batch=4, per_user_pending=10), backend_for=lambda _id: gpu)
    jobs = [h.job(f"u{i}") for i in range(4)]
    for job in jobs:
        await h.scheduler.submit(job)
    await h.start()
    await h.wait_delivered(4)
    assert gpu.calls == [4, 2, 2]
    assert sorted(state for _, state, _ in h.sink.calls) == ["done"] * 4
    await h.close()


class LateReporter:
    """A backend whose last progress report reaches the queue after the job is done (another thread, a worker
    whose progress entry was delayed): it must not turn a finished status back into a progress bar."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.sample_rate = backend.sample_rate
        self.report = None

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, requests, progress=None, **kw):
        self.report = progress
        return self.backend.generate(requests, progress=progress, **kw)


async def test_a_late_progress_report_never_follows_done(harness, tiny_backend):
    late = LateReporter(tiny_backend)
    h = harness(SchedulerConfig(progress_interval_s=0.0), backend_for=lambda _id: late)
    job = await h.scheduler.submit(h.job("u1"))
    await h.start()
    await h.wait_delivered(1)
    late.report(Progress(step=10, total=50, elapsed_s=1.0))  # as if from the model thread, after the result
    await asyncio.sleep(0.2)
    kinds = [e.kind for e in h.events if e.job_id == job.id]
    assert EventKind.DONE in kinds and kinds.index(EventKind.DONE) == max(
        i for i, k in enumerate(kinds) if k in (EventKind.DONE, EventKind.PROGRESS))
    await h.close()


async def test_delivery_is_retried_and_recorded(harness):
    h = harness(SchedulerConfig(delivery_retry_s=0.01))
    h.sink.fail_first = 2
    job = h.job("u1")
    await h.start()
    await h.scheduler.submit(job)
    await h.wait_delivered(1)
    await h.wait_for(lambda: not h.scheduler._tasks)
    assert h.sink.calls == [(job.id, "done", 1)]
    assert (await h.store.get_job(job.id)).delivery_state is DeliveryState.DELIVERED
    await h.close()


async def test_restart_resumes_queued_jobs_and_redelivers(tmp_path, models, tiny_model_path):
    first = Harness(tmp_path, models, SchedulerConfig(max_batch=1), model=tiny_model_path)
    queued = [first.job("u1"), first.job("u2")]
    for job in queued:
        await first.scheduler.submit(job)
    # a finished job whose delivery was interrupted (SENDING when the process died)
    interrupted = first.job("u3")
    await first.store.add_job(interrupted)
    interrupted.state = JobState.DONE
    await first.store.complete_job(interrupted, [])
    await first.store.set_delivery_state(interrupted.id, DeliveryState.SENDING)
    first.db.close()  # the process "dies" without ever starting its loop

    second = Harness(tmp_path, models, SchedulerConfig(max_batch=1), model=tiny_model_path)
    await second.start()
    await second.wait_delivered(3)
    delivered = sorted(job_id for job_id, _, _ in second.sink.calls)
    assert delivered == sorted([queued[0].id, queued[1].id, interrupted.id])
    assert interrupted.id not in second.started_order()  # delivered, not generated again
    await second.close()


async def test_graceful_stop_finishes_running_and_keeps_queued(harness):
    h = harness(SchedulerConfig(max_batch=1))
    running, waiting = h.job("u1", duration=20.0), h.job("u2")
    await h.scheduler.submit(running)
    await h.scheduler.submit(waiting)
    await h.start()
    await h.wait_for(lambda: any(e.kind is EventKind.PROGRESS for e in h.events))
    await h.scheduler.stop(grace_s=60)
    assert (await h.store.get_job(running.id)).state is JobState.DONE
    assert (await h.store.get_job(waiting.id)).state is JobState.QUEUED
    told = [e for e in h.events if e.job_id == waiting.id and e.kind is EventKind.REQUEUED]
    assert told and "restarting" in told[0].message
    with pytest.raises(QueueRefused, match="restarting"):
        await h.scheduler.submit(h.job("u3"))
    h.db.close()


async def test_shutdown_past_grace_requeues_the_running_job(harness):
    h = harness()
    job = h.job("u1", duration=30.0)
    await h.start()
    await h.scheduler.submit(job)
    await h.wait_for(lambda: any(e.kind is EventKind.PROGRESS for e in h.events))
    await h.scheduler.stop(grace_s=0)
    stored = await h.store.get_job(job.id)
    assert stored.state is JobState.QUEUED and stored.attempts == 0
    assert await h.store.tracks_for_job(job.id) == []
    h.db.close()


async def test_queue_output_matches_a_job_run_alone(harness):
    solo = harness()
    alone = solo.job("u1", "lo-fi piano", duration=1.5, seed=42)
    await solo.start()
    await solo.scheduler.submit(alone)
    await solo.wait_delivered(1)

    h = harness(SchedulerConfig(max_batch=4, per_user_pending=10))
    twin = h.job("u1", "lo-fi piano", duration=1.5, seed=42)
    others = [h.job("u2", "techno beat", duration=1.4, seed=1), h.job("u3", "sad violin", duration=1.3, seed=2)]
    for job in [others[0], twin, others[1]]:
        await h.scheduler.submit(job)
    await h.start()
    await h.wait_delivered(3)
    assert [e.message for e in h.events if e.kind is EventKind.STARTED and e.job_id == twin.id] == ["batch of 3"]
    a = (await solo.store.tracks_for_job(alone.id))[0]
    b = (await h.store.tracks_for_job(twin.id))[0]
    x, _ = sf.read(solo.files.absolute(a.flac))
    y, _ = sf.read(h.files.absolute(b.flac))
    assert x.shape == y.shape == (48000,)
    assert np.abs(x - y).max() < 1e-4
    await solo.close()
    await h.close()


async def test_jobs_arriving_together_share_the_first_model_call(harness):
    h = harness(SchedulerConfig(max_batch=4, per_user_pending=10, gather_s=0.3))
    await h.start()  # idle and running: the first arrival would otherwise start a batch alone
    jobs = [h.job(f"u{i}", duration=1.0) for i in range(3)]
    for job in jobs:
        await h.scheduler.submit(job)
    await h.wait_delivered(3)
    assert {e.message for e in h.events if e.kind is EventKind.STARTED} == {"batch of 3"}
    await h.close()


async def test_stop_during_the_gathering_window_returns(harness):
    h = harness(SchedulerConfig(gather_s=0.5))
    await h.start()
    job = h.job("u1")
    await h.scheduler.submit(job)  # the loop is now sleeping in its gathering window
    assert await h.scheduler.cancel(job.id)
    await asyncio.wait_for(h.scheduler.stop(grace_s=1), timeout=5)
    h.db.close()

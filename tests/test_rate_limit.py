"""The per-user rate limit: a token bucket that lets a burst through, then holds requests back (queued, with a
start time) instead of refusing them; follow-ups on one's own result never wait; the old cooldown still reads."""

from __future__ import annotations

import asyncio
import logging

import pytest
import pytest_asyncio

from app.services import core_config
from app.settings import Settings
from bot.core import Bandmate, ComposeOptions, CoreConfig, Refusal, Request, Requester
from bot.planner import Planner
from bot.rate_limit import RateLimit, RateLimiter
from bot.text import plain
from generation.jobs import DeliveryAddress, Job, JobState, Operation
from generation.local_executor import LocalExecutor
from generation.models import model_info
from generation.runner import JobRunner
from generation.scheduler import Scheduler, SchedulerConfig
from generation.spec import JobSpec
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import ConversationLinks, SqliteJobStore
from queue_harness import Delivered


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def delays(limiter: RateLimiter, user: str, n: int) -> list[float]:
    return [limiter.reserve(user).delay_s for _ in range(n)]


def test_a_burst_goes_at_once_then_one_every_interval():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(burst=3, per_min=6), clock)
    assert delays(limiter, "alice", 5) == [0.0, 0.0, 0.0, 10.0, 20.0]
    assert delays(limiter, "bob", 1) == [0.0]  # per user
    assert limiter.wait_s("alice") == pytest.approx(30.0)


def test_the_bucket_refills_with_time():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(burst=3, per_min=6), clock)
    delays(limiter, "alice", 3)
    clock.now += 10  # one token back
    assert delays(limiter, "alice", 2) == [0.0, 10.0]
    clock.now += 600  # long idle: the whole burst again, and never more than the burst
    assert delays(limiter, "alice", 4) == [0.0, 0.0, 0.0, 10.0]


def test_a_released_reservation_gives_its_slot_back():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(burst=1, per_min=60), clock)
    first = limiter.reserve("alice")
    second = limiter.reserve("alice")
    assert (first.delay_s, second.delay_s) == (0.0, 1.0)
    limiter.release(second)
    assert limiter.reserve("alice").delay_s == 1.0  # the same slot, not the one after it
    limiter.release(first)  # not the newest: still one slot back
    assert limiter.reserve("alice").delay_s == 1.0


def test_no_limit_never_holds_back():
    limiter = RateLimiter(RateLimit.off(), FakeClock())
    assert delays(limiter, "alice", 50) == [0.0] * 50 and limiter.wait_s("alice") == 0.0


def test_the_old_cooldown_is_a_bucket_of_one():
    assert RateLimit.from_cooldown(5) == RateLimit(burst=1, per_min=12)
    assert not RateLimit.from_cooldown(0).enabled
    limiter = RateLimiter(RateLimit.from_cooldown(5), FakeClock())
    assert delays(limiter, "alice", 3) == [0.0, 5.0, 10.0]


# -- settings -----------------------------------------------------------------------------------------------


def test_settings_ship_a_burst_of_three_and_six_a_minute():
    assert (Settings().rate_burst, Settings().rate_per_min) == (3, 6.0)
    assert (Settings.from_env({}).rate_burst, Settings.from_env({}).rate_per_min) == (3, 6.0)
    s = Settings.from_env({"BANDMATE_RATE_BURST": "5", "BANDMATE_RATE_PER_MIN": "0"})
    assert (s.rate_burst, s.rate_per_min) == (5, 0.0)


def test_the_env_example_ships_the_new_variables():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    assert "BANDMATE_RATE_BURST=3\n" in text and "BANDMATE_RATE_PER_MIN=6\n" in text
    assert "\nBANDMATE_COOLDOWN_S=" not in text


def test_the_cooldown_alias_still_works_and_says_what_replaces_it(caplog):
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        s = Settings.from_env({"BANDMATE_COOLDOWN_S": "5"})
    assert (s.rate_burst, s.rate_per_min) == (1, 12.0)
    assert "BANDMATE_RATE_BURST" in caplog.text and "BANDMATE_RATE_PER_MIN" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        s = Settings.from_env({"BANDMATE_COOLDOWN_S": "5", "BANDMATE_RATE_PER_MIN": "30"})
    assert (s.rate_burst, s.rate_per_min) == (3, 30.0) and "ignored" in caplog.text
    assert Settings.from_env({"BANDMATE_COOLDOWN_S": "0"}).rate_per_min == 0.0


def test_the_operator_is_not_rate_limited():
    settings = Settings.from_env({})
    assert core_config(settings).rate_limit == RateLimit(3, 6.0)
    assert not core_config(settings, operator=True).rate_limit.enabled


def test_not_before_survives_the_stored_form():
    assert JobSpec.from_dict(JobSpec(not_before=1234.5).to_dict()).not_before == 1234.5
    assert JobSpec.from_dict({"not_before": "soon"}).not_before is None


# -- the core with a real queue -------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def world(tmp_path, models, tiny_model_path):
    db = Database(tmp_path / "bandmate.db")
    files = FileStore(tmp_path)
    store = SqliteJobStore(db)
    scheduler = Scheduler(store, LocalExecutor(JobRunner(models, files)),
                          SchedulerConfig(per_user_pending=3, max_batch=4, max_depth=5))
    sink = Delivered()
    await scheduler.add_sink("test", sink)
    await scheduler.start()
    links = ConversationLinks(db)
    planner = Planner(scheduler=scheduler, store=store, links=links, files=files, model_info=model_info,
                      config=CoreConfig(default_model=tiny_model_path, rate_limit=RateLimit(burst=1, per_min=30)))
    core = Bandmate(planner=planner, scheduler=scheduler, store=store, links=links, files=files)

    async def finished(job):
        await asyncio.wait_for(sink.event(job.id).wait(), 120)
        return await store.get_job(job.id), await store.tracks_for_job(job.id)

    core.finished = finished
    yield core
    await scheduler.stop(grace_s=0.0)
    db.close()


ALICE = Requester(user_id="alice", guild_id="g1", channel_id="c1")
BOB = Requester(user_id="bob", guild_id="g1", channel_id="c1")


def req(who: Requester) -> Request:
    return Request(who, delivery=DeliveryAddress("test"))




@pytest.mark.asyncio
async def test_over_the_limit_a_request_is_queued_to_start_later_and_says_when(world):
    first = await world.compose(req(ALICE), ComposeOptions("first", 1.0))
    second = await world.compose(req(ALICE), ComposeOptions("second", 1.0))
    assert first.spec.not_before is None
    assert second.spec.not_before is not None and second.spec.not_before - second.created_at > 1.0
    assert "starts in 2 s" in plain(world.queued_text(second))
    assert (await world.store.get_job(second.id)).spec.not_before == second.spec.not_before  # stored with it
    other = await world.compose(req(BOB), ComposeOptions("bob's", 1.0))
    assert other.spec.not_before is None  # one user's limit is theirs alone
    done, _ = await world.finished(second)
    assert done.state is JobState.DONE and done.started_at >= second.spec.not_before - 0.01
    await world.finished(first)
    await world.finished(other)


@pytest.mark.asyncio
async def test_follow_ups_on_your_own_result_never_wait_but_count_toward_the_pending_cap(world):
    _, tracks = await world.finished(await world.compose(req(ALICE), ComposeOptions("mine", 1.0)))
    jobs = [await world.from_track(req(ALICE), tracks[0].id, op)
            for op in (Operation.VARIATION, Operation.MORE_LIKE, Operation.EXTEND)]
    assert all(j.spec.not_before is None for j in jobs)
    with pytest.raises(Refusal, match=r"already have 3 pieces waiting \(the limit is 3\)"):
        await world.from_track(req(ALICE), tracks[0].id, Operation.VARIATION)
    theirs = await world.from_track(req(BOB), tracks[0].id, Operation.MORE_LIKE)  # bob's first: his burst
    again = await world.from_track(req(BOB), tracks[0].id, Operation.VARIATION)  # not his result: it waits
    assert theirs.spec.not_before is None and again.spec.not_before is not None
    for job in jobs + [theirs, again]:
        await world.finished(job)


@pytest.mark.asyncio
async def test_a_refused_request_takes_no_slot(world):
    await world.compose(req(ALICE), ComposeOptions("one", 1.0))
    held = [await world.compose(req(ALICE), ComposeOptions(f"held {i}", 1.0)) for i in range(2)]
    with pytest.raises(Refusal, match="the limit is 3"):
        await world.compose(req(ALICE), ComposeOptions("too many", 1.0))
    # the refused one gave its slot back: the next is two intervals after now, not three
    assert world.planner.rate.wait_s("alice") == pytest.approx(held[-1].spec.not_before + 2.0
                                                               - world.planner.clock(), abs=0.5)
    for job in held:
        await world.finished(job)


@pytest.mark.asyncio
async def test_a_held_job_waits_in_the_queue_even_when_the_model_is_idle(world):
    job = Job(user_id="carol", prompt="later", duration_s=1.0, model=world.config.default_model,
              delivery=DeliveryAddress("test"))
    job.spec.not_before = job.created_at + 1.5
    await world.scheduler.submit(job)
    await asyncio.sleep(0.5)
    assert [j.id for j in world.scheduler.queued_jobs()] == [job.id]  # still waiting, not started
    done, _ = await world.finished(job)
    assert done.started_at >= job.spec.not_before

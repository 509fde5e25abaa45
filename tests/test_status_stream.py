"""One ordered stream of edits per status message (bot/discord/status.py): newer states replace ones not yet
written, progress is throttled, the final state goes out after the edit in flight and nothing lands after it."""

from __future__ import annotations

import asyncio

import pytest

from bot import views
from bot.discord import status as status_module
from bot.discord.delivery import DiscordDelivery
from bot.discord.status import StatusUpdater
from generation.events import EventKind, JobEvent
from generation.jobs import Job
from generation.spec import JobSpec

class SlowMessenger:
    """Records edits in the order they land; each takes `delay` seconds, like a slow API."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.landed: list[str] = []

    async def edit(self, job, message_id, content, view=None) -> None:
        await asyncio.sleep(self.delay)
        self.landed.append(content)


class Core:
    def __init__(self, job: Job) -> None:
        self._job = job

    async def job(self, job_id):
        return self._job

    def status_text(self, job, event):
        return views.status_text(job, event, 0.0)


def a_job() -> Job:
    job = Job(user_id="1", prompt="night drive", duration_s=2.0, model="m")
    job.delivery = DiscordDelivery(channel_id="5", guild_id="7", status_message_id="9").address()
    return job


def progress(job, step, total=10, message=None) -> JobEvent:
    return JobEvent(EventKind.PROGRESS, job.id, job.user_id, step=step, total=total, eta_s=3.0, message=message)


@pytest.fixture(autouse=True)
def short_throttle(monkeypatch):
    monkeypatch.setattr(status_module, "STATUS_INTERVAL_S", 0.3)


@pytest.mark.asyncio
async def test_the_final_state_is_the_last_edit_and_a_throttled_one_never_lands_after_it():
    job = a_job()
    messenger = SlowMessenger()
    updater = StatusUpdater(Core(job), messenger)
    updater.watch(job, "first words")
    updater.on_event(JobEvent(EventKind.STARTED, job.id, job.user_id, total=10))
    updater.on_event(progress(job, 5))
    updater.on_event(JobEvent(EventKind.DONE, job.id, job.user_id, step=1, total=1))  # throttled: waits
    await updater.finish(job, "✅ delivered: https://discord.com/channels/7/5/11")
    updater.on_event(progress(job, 9))  # a late event after the final state: ignored
    await asyncio.sleep(0.8)
    assert messenger.landed[0] == "first words"
    assert messenger.landed[-1] == "✅ delivered: https://discord.com/channels/7/5/11"
    assert not any("posting it now" in text for text in messenger.landed)  # superseded before its turn


@pytest.mark.asyncio
async def test_progress_edits_are_throttled_and_show_the_newest_state():
    job = a_job()
    messenger = SlowMessenger(delay=0.0)
    updater = StatusUpdater(Core(job), messenger)
    updater.watch(job, "queued")
    for step in range(1, 10):
        updater.on_event(progress(job, step, message="window 2 of 3"))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert len(messenger.landed) == 2  # the first words, then only the newest progress
    assert "90%" in messenger.landed[-1] and "window 2 of 3" in messenger.landed[-1]
    assert "about 3 s left" in messenger.landed[-1]


@pytest.mark.asyncio
async def test_cancelled_is_final_and_a_later_finish_writes_nothing_more():
    job = a_job()
    messenger = SlowMessenger()
    updater = StatusUpdater(Core(job), messenger)
    updater.watch(job)
    updater.on_event(JobEvent(EventKind.POSITION, job.id, job.user_id, position=2))
    updater.on_event(JobEvent(EventKind.CANCELLED, job.id, job.user_id, message="Cancelled."))
    await asyncio.sleep(0.2)
    await updater.finish(job, "❌ failed")
    assert messenger.landed == ["🎼 **night drive**\n🚫 cancelled"]


@pytest.mark.asyncio
async def test_the_first_words_give_way_to_a_newer_state_that_came_first():
    job = a_job()
    messenger = SlowMessenger(delay=0.0)
    updater = StatusUpdater(Core(job), messenger)
    updater.on_event(JobEvent(EventKind.STARTED, job.id, job.user_id, total=10))
    updater.watch(job, "up next")  # already started: its place in line is old news
    await asyncio.sleep(0.1)
    assert messenger.landed and "starting" in messenger.landed[0] and "up next" not in messenger.landed


def test_status_texts_say_position_hold_progress_and_the_final_state():
    job = a_job()
    assert "#3 in line" in views.status_text(job, JobEvent(EventKind.POSITION, job.id, "1", position=3))
    held = Job(user_id="1", prompt="p", duration_s=1.0, model="m", spec=JobSpec(not_before=108.0))
    assert "starts in 8 s" in views.status_text(held, JobEvent(EventKind.POSITION, held.id, "1", position=1), 100.0)
    assert "starts in 8 s" in views.queued_text(held, 1, None, 100.0)
    assert "starts in" not in views.queued_text(held, 1, None, 110.0)  # its time has come
    link = views.result_link("7", "5", "11")
    assert link == "https://discord.com/channels/7/5/11"
    assert views.result_link(None, "5", "11") == "https://discord.com/channels/@me/5/11"
    assert "delivered" in views.delivered_text(job, link) and link in views.delivered_text(job, link)
    job.error = "Not enough GPU memory"
    assert "Not enough GPU memory" in views.failed_text(job)

"""A result already shown is not "waiting": the moment a transport posts it, its person may ask for more, even
with the per-user limit full. (The scheduler delivers inside the batch's run, so a finished job is still in its
batch while the transport posts it; the console and Discord print it there.)"""

from __future__ import annotations

import pytest

from generation.scheduler import SchedulerConfig

pytestmark = pytest.mark.asyncio


class ReplyOnDelivery:
    """A transport whose person answers the first result as soon as it is shown."""

    def __init__(self, h) -> None:
        self.h = h
        self.calls: list[str] = []
        self.reply = None
        self.refused: str | None = None

    async def deliver(self, job, tracks) -> None:
        self.calls.append(job.id)
        if self.reply is None:
            self.reply = self.h.job("alice", "one more")
            try:
                await self.h.scheduler.submit(self.reply)
            except Exception as error:  # noqa: BLE001 - the test says what went wrong
                self.refused = str(error)


async def test_a_delivered_job_no_longer_counts_as_pending(harness):
    h = harness(SchedulerConfig(max_batch=4, per_user_pending=2, gather_s=0.5))
    h.sink = ReplyOnDelivery(h)
    for _ in range(2):  # alice's limit, made in one model call
        await h.scheduler.submit(h.job("alice"))
    assert h.scheduler.pending_for("alice") == 2
    await h.start()
    await h.wait_for(lambda: len(h.sink.calls) >= 2)
    assert h.sink.refused is None and h.sink.reply is not None, h.sink.refused
    await h.wait_for(lambda: len(h.sink.calls) >= 3)
    assert h.sink.calls[-1] == h.sink.reply.id
    await h.close()

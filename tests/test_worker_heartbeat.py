"""A worker that is told to stop ends, even when the cancel meant for its heartbeat is swallowed.

The heartbeat spends much of its time inside Redis calls, and a cancel that lands in one can be absorbed there.
A heartbeat that stopped only on cancel then beat on: in one full run here, `test_redis_decoder.py`'s mixed-queue
test found the worker's `run()` still waiting for its heartbeat 90 s after the stop. It now also stops on its own
flag. The fake below swallows one cancel inside a slowed real `set`.
"""

from __future__ import annotations

import asyncio

import pytest

from generation.remote import Worker
from test_redis import worker_settings


@pytest.mark.asyncio
async def test_a_stop_ends_the_worker_even_if_a_redis_call_swallows_the_heartbeats_cancel(redis_server,
                                                                                        tiny_model_path):
    worker = Worker(worker_settings(redis_server.url, tiny_model_path))
    task = asyncio.create_task(worker.run())
    while not worker.ready:
        assert not task.done()
        await asyncio.sleep(0.05)
    real_set, swallowed = worker.redis.set, []

    async def set_that_swallows_a_cancel(*args, **kwargs):
        """Swallows the first cancel only: a worker that still relied on cancels alone fails the wait below
        (its second cancel gets through) instead of hanging the run."""
        try:
            await asyncio.sleep(0.5)  # a slow round trip: the cancel lands in here, as in a real client
            return await real_set(*args, **kwargs)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)
            return None

    worker.redis.set = set_that_swallows_a_cancel
    await asyncio.sleep(0.1)  # the heartbeat is now inside a (slow) set
    worker.stop()
    assert await asyncio.wait_for(task, 30) == 0
    assert swallowed, "the heartbeat's cancel never landed in a Redis call: the test did not test anything"
    assert not await worker_key_exists(redis_server.url, worker.keys.worker(worker.name))


async def worker_key_exists(url: str, key: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()

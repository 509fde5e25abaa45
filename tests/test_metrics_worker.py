"""A `python bot.py worker` with BANDMATE_METRICS_ADDR: not ready while it loads, ready after; its steps, batches and
model memory on /metrics once it has run a job. The bot's figures with Redis count dispatched jobs as waiting."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import BotMetrics
from conftest import free_port
from test_redis import TIMEOUT_S, job, running_bot, start_worker  # noqa: F401 - start_worker is a fixture

pytestmark = pytest.mark.slow


async def get(session, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as response:
            return response.status, await response.text()
    except aiohttp.ClientConnectionError:
        return 0, ""


def total(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.mark.asyncio
async def test_a_worker_serves_its_metrics(tmp_path, redis_server, tiny_model_path, start_worker, monkeypatch):
    port = free_port()
    monkeypatch.setenv("BANDMATE_METRICS_ADDR", f"127.0.0.1:{port}")
    worker = start_worker()
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async def ready() -> None:
            while (await get(session, f"{base}/readyz"))[0] != 200:
                assert worker.proc.poll() is None, worker.output()
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ready(), TIMEOUT_S)
        assert (await get(session, f"{base}/healthz"))[0] == 200
        async with running_bot(tmp_path, redis_server.url) as bot:
            metrics = BotMetrics(CollectorRegistry(), bot.scheduler, count_steps=False)
            pieces = [job(user, 1.0, tiny_model_path, seed=i) for i, user in enumerate(("ana", "ben"))]
            for piece in pieces:
                await bot.scheduler.submit(piece)
            from prometheus_client import generate_latest

            seen_waiting = total(generate_latest(metrics.registry).decode(), "bandmate_queue_depth")
            await bot.wait_delivered(*pieces)
            assert seen_waiting >= 1  # dispatched to Redis, not started yet: still waiting
        _, text = await get(session, f"{base}/metrics")
    assert total(text, "bandmate_decode_steps_total") >= 50 and total(text, "bandmate_worker_batches_total") >= 1
    assert total(text, "bandmate_model_memory_bytes") > 0 and total(text, "bandmate_worker_jobs_held") == 0
    assert worker.terminate() == 0, worker.output()

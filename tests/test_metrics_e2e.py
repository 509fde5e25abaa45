"""The real bot (`python bot.py` against the fake Discord) with BANDMATE_METRICS_ADDR: ready once Discord is
connected, and /metrics scraped while composes run shows the queue depth and the latencies move."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port

try:
    from botprocess import fake, no_spec_violations, running_bot  # noqa: F401 - shared fixtures
except ImportError:  # tests/ as a package
    from tests.botprocess import fake, no_spec_violations, running_bot  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="module")
PORT = free_port()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    async for process in running_bot(fake, tmp_path_factory.mktemp("metrics-bot"),
                                     BANDMATE_METRICS_ADDR=f"127.0.0.1:{PORT}", BANDMATE_MAX_BATCH="1"):
        yield process


async def scrape(session) -> dict[tuple[str, tuple], float]:
    async with session.get(f"http://127.0.0.1:{PORT}/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_metrics_move_while_the_bot_composes(fake, bot):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{PORT}/readyz") as r:
            assert r.status == 200, await r.text()  # the model is loaded and Discord is connected
            assert (await r.json())["checks"] == {"model": True, "discord": True}
        before = await scrape(session)
        users = [fake.user] + [await fake.add_user(f"metrics{i}") for i in range(3)]
        interactions = [await fake.slash("compose", {"prompt": f"test tune {i}", "duration": 1.0 + 0.5 * i},
                                         user=u) for i, u in enumerate(users)]
        depths, started = [], []
        while total(await scrape(session), "bandmate_deliveries_total") < len(users):
            samples = await scrape(session)
            depths.append(total(samples, "bandmate_queue_depth"))
            started.append(total(samples, "bandmate_job_queued_to_started_seconds_count"))
            await asyncio.sleep(0.05)
        after = await scrape(session)
    for interaction in interactions:
        await fake.wait_for_callback(interaction, timeout=5)
    assert max(depths) >= 1 and total(after, "bandmate_queue_depth") == 0
    assert min(started) < len(users) <= total(after, "bandmate_job_queued_to_started_seconds_count")
    assert total(after, "bandmate_job_done_to_delivered_seconds_count") - \
        total(before, "bandmate_job_done_to_delivered_seconds_count") == len(users)
    assert total(after, "bandmate_decode_steps_total") > 0 and total(after, "bandmate_model_memory_bytes") > 0


async def test_the_run_ends_with_its_latencies_in_the_log(fake, bot):
    assert await bot.stop() == 0
    line = next(line for line in bot.lines if "latencies this run" in line)
    assert re.search(r"queued→started p50 [\d.]+ s p95 [\d.]+ s", line), line
    assert re.search(r"done→delivered p50 [\d.]+ s p95 [\d.]+ s", line), line
    print(line)

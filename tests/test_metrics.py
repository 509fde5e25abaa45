"""The operator's view: /metrics scraped during a real run, /healthz and /readyz, the Grafana dashboard against the
exported names, `python bot.py status`, BANDMATE_METRICS_ADDR, and Discord 429s seen through the HTTP trace."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import DONE_TO_DELIVERED, METRIC_NAMES, QUEUED_TO_STARTED, BotMetrics, observe_worker
from app.metrics_server import MetricsServer
from app.settings import Settings, SettingsError
from app.status_report import status_report
from bot.discord.ratelimits import rate_limit_trace
from bot.transport_signals import TransportSignals
from generation.jobs import JobState
from generation.remote import Worker
from generation.scheduler import SchedulerConfig

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "bandmate.json"


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[tuple[str, tuple], float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.asyncio
async def test_metrics_change_while_jobs_run(harness, models, tiny_model_path):
    h = harness(SchedulerConfig(max_batch=1, per_user_pending=10, gather_s=0.0))
    metrics = BotMetrics(CollectorRegistry(), h.scheduler, loaded_models=models.loaded)
    loaded = {"yes": False}
    metrics.readiness.require("model", lambda: loaded["yes"])
    server = MetricsServer(metrics.registry, metrics.readiness, "127.0.0.1", 0)
    await server.start()
    model = Path(tiny_model_path).name
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/healthz") as r:
                assert r.status == 200
            async with session.get(f"http://127.0.0.1:{server.port}/readyz") as r:
                assert r.status == 503 and (await r.json())["checks"] == {"model": False}
            loaded["yes"] = True
            async with session.get(f"http://127.0.0.1:{server.port}/readyz") as r:
                assert r.status == 200 and (await r.json())["ready"] is True

            before = await scrape(session, server.port)
            assert value(before, "bandmate_ready") == 1.0
            assert value(before, f"{QUEUED_TO_STARTED}_count", model=model) == 0
            await h.start()
            jobs = [h.job(user, duration=1.0 + 0.2 * i) for i, user in enumerate(("ana", "ben", "cy", "dee"))]
            for job in jobs:
                await h.scheduler.submit(job)
            depths, started = [], []
            while len(h.sink.calls) < len(jobs):
                samples = await scrape(session, server.port)
                depths.append(value(samples, "bandmate_queue_depth", model=model))
                started.append(value(samples, f"{QUEUED_TO_STARTED}_count", model=model))
                await asyncio.sleep(0.05)
            after = await scrape(session, server.port)
    finally:
        await server.stop()
        await h.close()
    assert max(depths) >= 2 and value(after, "bandmate_queue_depth", model=model) == 0  # the depth went down
    assert started[0] < len(jobs) and value(after, f"{QUEUED_TO_STARTED}_count", model=model) == len(jobs)
    assert value(after, f"{DONE_TO_DELIVERED}_count", model=model) == len(jobs)
    assert value(after, "bandmate_job_started_to_done_seconds_count", model=model) == len(jobs)
    assert value(after, "bandmate_deliveries_total", outcome="delivered") == len(jobs)
    assert value(after, "bandmate_jobs_finished_total", state="done") == len(jobs)
    assert value(after, "bandmate_decode_steps_total", model=model) >= len(jobs) * 50  # 50 frames a second
    assert value(after, "bandmate_model_memory_bytes", model=model) > 0
    assert value(after, "bandmate_jobs", state="queued") == 0
    p50, p95 = metrics.percentiles()[QUEUED_TO_STARTED]
    assert 0 <= p50 <= p95


def exported_names(tmp_path) -> set[str]:
    """Every series name the bot's and a worker's registries produce, each labelled metric used once."""
    from generation.local_executor import LocalExecutor
    from generation.models import ModelRegistry
    from generation.runner import JobRunner
    from generation.scheduler import Scheduler
    from storage.database import Database
    from storage.files import FileStore
    from storage.jobstore import SqliteJobStore

    db = Database(tmp_path / "names.db")
    scheduler = Scheduler(SqliteJobStore(db), LocalExecutor(JobRunner(ModelRegistry(), FileStore(tmp_path))))
    signals = TransportSignals()
    metrics = BotMetrics(CollectorRegistry(), scheduler, loaded_models=dict, signals=signals)
    metrics.engine.observe_progress("m", SimpleNamespace(step=3, total=9, elapsed_s=1.0))
    metrics.finished.labels("done").inc()
    metrics.deliveries.labels("delivered").inc()
    signals.rate_limited("discord", "user")
    for histogram in metrics.histograms.values():
        histogram.labels("m").observe(1.0)
    worker_registry = CollectorRegistry()
    settings = SimpleNamespace(redis_url="redis://127.0.0.1:1/0", redis_claim_idle_ms=60_000, redis_heartbeat_s=1.0,
                               redis_max_deliveries=3, max_batch=4, model="m", device="cpu", dtype="fp32",
                               compile=False)
    observe_worker(worker_registry, Worker(settings, models=ModelRegistry()))
    names = set()
    for registry in (metrics.registry, worker_registry):
        for family in registry.collect():
            names |= {s.name for s in family.samples}
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    db.close()
    return names


def test_the_dashboard_shows_only_exported_metrics(tmp_path):
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["panels"] and board["schemaVersion"] >= 30
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_names(tmp_path) | {"bandmate_cuda_memory_allocated_bytes"}  # only where a GPU is
    used = set()
    for panel in board["panels"]:
        assert panel["title"] and panel["targets"] and {"h", "w", "x", "y"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            names = set(re.findall(r"\bbandmate_[a-z0-9_]+", target["expr"]))
            assert names, target
            assert names <= exported, (panel["title"], names - exported)
            assert target["expr"].count("(") == target["expr"].count(")")
            used |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    declared = {re.sub(r"_total$", "", n) for n in METRIC_NAMES}
    assert declared <= {re.sub(r"_total$", "", n) for n in used}, declared - used  # every metric has a panel
    assert {re.sub(r"_total$", "", n) for n in METRIC_NAMES} - {"bandmate_cuda_memory_allocated_bytes"} <= \
        {re.sub(r"_total$", "", n) for n in exported}


def test_status_prints_the_queue_from_the_database(harness, tmp_path, monkeypatch, capsys):
    import importlib.util

    h = harness()
    jobs = [h.job("ana"), h.job("ana"), h.job("ben")]
    jobs[0].created_at -= 125
    asyncio.run(_store(h, jobs))
    jobs[2].state = JobState.RUNNING
    asyncio.run(h.store.update_job(jobs[2]))
    h.db.close()
    spec = importlib.util.spec_from_file_location("bot_main", ROOT / "bot.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    monkeypatch.setenv("BANDMATE_DATA", str(h.files.root))
    assert main.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 queued, 1 running")
    assert re.search(r"ana\s+tiny-musicgen\s+2\s+0", out) and re.search(r"ben\s+tiny-musicgen\s+0\s+1", out)
    assert f"oldest waiting: job {jobs[0].id} of ana" in out and "2 min" in out
    assert status_report([]) == "0 queued, 0 running: the queue is empty."


async def _store(h, jobs) -> None:
    for job in jobs:
        await h.store.add_job(job)


def test_metrics_address_setting():
    assert Settings.from_env({}).metrics_addr is None
    assert Settings.from_env({"BANDMATE_METRICS_ADDR": "127.0.0.1:9464"}).metrics_addr == "127.0.0.1:9464"
    assert Settings.from_env({"BANDMATE_METRICS_ADDR": ":9464"}).metrics_addr == "127.0.0.1:9464"
    with pytest.raises(SettingsError, match="BANDMATE_METRICS_ADDR"):
        Settings.from_env({"BANDMATE_METRICS_ADDR": "9464x"})


@pytest.mark.asyncio
async def test_discord_429s_are_counted_through_the_core_signals():
    signals = TransportSignals()
    seen = []
    signals.on_rate_limited = lambda transport, scope: seen.append((transport, scope))

    async def limited(_request):
        return web.json_response({"message": "You are being rate limited.", "retry_after": 0.1}, status=429,
                                 headers={"X-RateLimit-Scope": "user"})

    app = web.Application()
    app.router.add_get("/api", limited)
    async def fine(_request):
        return web.Response(text="ok")

    app.router.add_get("/ok", fine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(trace_configs=[rate_limit_trace(signals)]) as session:
            for path in ("/api", "/ok", "/api"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                    await r.read()
    finally:
        await runner.cleanup()
    assert seen == [("discord", "user"), ("discord", "user")]

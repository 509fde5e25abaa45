"""Wiring of the operator's view (app/metrics.py) into the bot's application and into a Redis worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from app.metrics import BotMetrics, observe_worker
from app.metrics_server import MetricsServer
from app.settings import Settings, split_address


def bot_metrics(app, *, require_discord: bool) -> tuple[BotMetrics, MetricsServer]:
    """The bot's figures and their server (not started). Ready once the model is loaded (with Redis workers: once
    Redis is reached) and, for the Discord bot, once Discord is connected."""
    settings: Settings = app.settings
    metrics = BotMetrics(CollectorRegistry(), app.scheduler, loaded_models=app.models.loaded,
                         signals=app.core.signals, count_steps=not settings.redis_url)
    if settings.redis_url:
        metrics.readiness.require("queue", lambda: app.executor.connected)
    else:
        metrics.readiness.require("model", lambda: settings.model in app.models.loaded())
    if require_discord:
        metrics.readiness.require("discord", lambda: app.core.signals.connected.get("discord", False))
    host, port = split_address(settings.metrics_addr)
    return metrics, MetricsServer(metrics.registry, metrics.readiness, host, port)


async def run_observed_worker(settings: Settings, models, watermark=None) -> int:
    """`python bot.py worker`, with its figures on BANDMATE_METRICS_ADDR when set."""
    from generation.remote import run_worker

    if not settings.metrics_addr:
        return await run_worker(settings, models, watermark)
    registry = CollectorRegistry()
    host, port = split_address(settings.metrics_addr)
    servers: list[MetricsServer] = []

    def observe(worker) -> None:
        servers.append(MetricsServer(registry, observe_worker(registry, worker), host, port))

    async def serve_then_run() -> int:
        return await run_worker(settings, models, watermark, observe=observe)

    import asyncio

    task = asyncio.ensure_future(serve_then_run())
    while not servers and not task.done():
        await asyncio.sleep(0)
    if servers:
        await servers[0].start()
    try:
        return await task
    finally:
        for server in servers:
            await server.stop()

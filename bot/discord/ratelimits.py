"""Seeing Discord's 429s: an aiohttp trace on discord.py's HTTP session that tells the core (bot/transport_signals.py)
about every rate-limited answer, whether discord.py then waits and retries or gives up."""

from __future__ import annotations

import aiohttp

from bot.transport_signals import TransportSignals


def rate_limit_trace(signals: TransportSignals) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    async def on_request_end(_session, _context, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status == 429:
            signals.rate_limited("discord", params.response.headers.get("X-RateLimit-Scope", ""))

    trace.on_request_end.append(on_request_end)
    return trace

"""Policy that runs on a timer, for every transport: voting windows close and their winners are announced, and
tracks older than a server's retention period are deleted.

Transports only implement "announce this" (`Transport.announce_winner`); when and what is decided here, so the
console and Discord behave the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 1800.0


class Housekeeping:
    def __init__(self, *, leaderboard, server_settings, privacy_store, announce: Callable[[str, str], Awaitable[None]],
                 voting_every_s: float = 15.0, retention_every_s: float = RETENTION_EVERY_S,
                 clock: Callable[[], float] = time.time) -> None:
        """announce(job_id, winner_track_id): the core turns a decided vote into each transport's announcement."""
        self.leaderboard = leaderboard
        self.server_settings = server_settings
        self.privacy_store = privacy_store
        self.announce = announce
        self.voting_every_s = voting_every_s
        self.retention_every_s = retention_every_s
        self.clock = clock
        self._task: asyncio.Task | None = None

    async def close_voting(self) -> int:
        """Close due voting windows and announce each winner; returns how many closed."""
        closed = await self.leaderboard.close_due(self.clock())
        for job_id, winner in closed:
            if winner is None:
                continue
            try:
                await self.announce(job_id, winner)
            except Exception:  # noqa: BLE001 - one message that cannot be edited must not stop the others
                log.exception("could not announce the winner of job %s", job_id)
        return len(closed)

    async def sweep_retention(self) -> int:
        """Delete tracks older than each server's retention period (set by its admins with /settings)."""
        removed = 0
        for guild_id in await self.server_settings.store.guild_ids():
            rules = await self.server_settings.get(guild_id)
            if rules.retention_days:
                count = await self.privacy_store.sweep_retention(guild_id, rules.retention_days * 86_400)
                if count:
                    log.info("retention: removed %d tracks of server %s", count, guild_id)
                removed += count
        return removed

    async def _run(self) -> None:
        next_sweep = 0.0
        while True:
            try:
                await self.close_voting()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.retention_every_s
                    await self.sweep_retention()
            except Exception:  # noqa: BLE001 - housekeeping must outlive a bad row or a busy database
                log.exception("housekeeping failed; trying again later")
            await asyncio.sleep(self.voting_every_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bandmate-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

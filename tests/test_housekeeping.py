"""Housekeeping (bot/housekeeping.py): policy on a timer for every transport, on a real SQLite file."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.guild_settings import ServerSettings
from bot.housekeeping import Housekeeping
from generation.jobs import Job, JobState, TrackRecord
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import Leaderboard, SqliteJobStore
from storage.privacy import PrivacyStore
from storage.settings import SettingsStore

pytestmark = pytest.mark.asyncio


async def finished_job(store: SqliteJobStore, guild: str, variations: int, created: float) -> tuple[Job, list]:
    job = await store.add_job(Job(user_id="u1", prompt="jazz", duration_s=1.0, model="m", variations=variations,
                                  guild_id=guild, created_at=created))
    tracks = [TrackRecord(id=f"{job.id}v{i}", job_id=job.id, variation=i, prompt="jazz", seed=i, model="m",
                          duration_s=1.0, params={}, mp3=f"audio/x/{job.id}v{i}.mp3", png="", flac="",
                          user_id="u1", guild_id=guild, created_at=created) for i in range(variations)]
    job.state = JobState.DONE
    await store.complete_job(job, tracks)
    return job, tracks


async def test_due_votes_close_with_their_winner_announced_and_old_tracks_swept(tmp_path):
    db = Database(tmp_path / "bandmate.db")
    store, board, settings_store = SqliteJobStore(db), Leaderboard(db), SettingsStore(db)
    announced: list[tuple[str, str]] = []

    async def announce(job_id: str, winner: str) -> None:
        announced.append((job_id, winner))

    server = ServerSettings(settings_store)
    keeper = Housekeeping(leaderboard=board, server_settings=server, privacy_store=PrivacyStore(db, FileStore(tmp_path)),
                          announce=announce, voting_every_s=0.05, retention_every_s=0.05)
    try:
        job, tracks = await finished_job(store, "g1", 2, time.time())
        quiet, _ = await finished_job(store, "g1", 1, time.time())
        old, _ = await finished_job(store, "g2", 1, time.time() - 10 * 86_400)
        await store.record_vote(job.id, tracks[1].id, "u2")
        await board.open_window(job.id, "g1", time.time() - 1)
        await board.open_window(quiet.id, "g1", time.time() - 1)  # nobody voted: closes without an announcement
        await settings_store.update_guild("g2", retention_days=7)
        keeper.start()
        for _ in range(100):
            if announced and await store.get_track(tracks[0].id) is not None \
                    and (await store.tracks_for_job(old.id)) == []:
                break
            await asyncio.sleep(0.05)
        assert announced == [(job.id, tracks[1].id)]
        assert await store.tracks_for_job(old.id) == []  # older than g2's 7 days
        assert len(await store.tracks_for_job(job.id)) == 2  # g1 keeps its tracks
        assert await board.close_due(time.time()) == []  # closed once, announced once
    finally:
        await keeper.stop()
        db.close()

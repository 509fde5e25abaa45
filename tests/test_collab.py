"""The collaborator through the transport-free core: taste blending, extend to a length, songs, voting, /top."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from mutagen.id3 import ID3

from bot.core import Bandmate, ComposeOptions, CoreConfig, Refusal, Request, Requester, Upload
from bot.fingerprint import Fingerprints
from bot.planner import Planner
from bot.text import plain
from generation.jobs import DeliveryAddress, JobState, Operation
from generation.models import model_info
from generation.runner import JobRunner
from generation.local_executor import LocalExecutor
from generation.scheduler import Scheduler, SchedulerConfig
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import ConversationLinks, Leaderboard, SqliteJobStore
from storage.taste import TasteStore
from queue_harness import Delivered

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parent.parent
MELODY = ROOT / "tests" / "fixtures" / "tiny-musicgen-melody"


@pytest_asyncio.fixture
async def world(tmp_path, models, tiny_model_path):
    db = Database(tmp_path / "bandmate.db")
    files = FileStore(tmp_path)
    store = SqliteJobStore(db)
    scheduler = Scheduler(store, LocalExecutor(JobRunner(models, files)),
                          SchedulerConfig(per_user_pending=20, max_batch=4))
    sink = Delivered()
    await scheduler.add_sink("test", sink)
    await scheduler.start()
    links, fingerprints = ConversationLinks(db), Fingerprints(TasteStore(db))
    planner = Planner(scheduler=scheduler, store=store, links=links, files=files, model_info=model_info,
                      config=CoreConfig(default_model=tiny_model_path, melody_model=str(MELODY), cooldown_s=0.0),
                      fingerprints=fingerprints)
    core = Bandmate(planner=planner, scheduler=scheduler, store=store, links=links, files=files,
                    fingerprints=fingerprints, leaderboard=Leaderboard(db))

    async def finished(job):
        await asyncio.wait_for(sink.event(job.id).wait(), 120)
        return await store.get_job(job.id), await store.tracks_for_job(job.id)

    core.finished = finished
    yield core
    await scheduler.stop()
    db.close()


ALICE = Requester(user_id="alice", guild_id="g1", channel_id="c1")
BOB = Requester(user_id="bob", guild_id="g1", channel_id="c1")
def req(who: Requester) -> Request:
    return Request(who, delivery=DeliveryAddress("test"))


async def test_three_jazz_votes_blend_jazz_into_more_like_this(world):
    for prompt in ("smooth jazz trio", "late night jazz club", "jazz saxophone solo"):
        job, tracks = await world.finished(await world.compose(req(BOB), ComposeOptions(prompt, 1.0)))
        await world.vote(ALICE, tracks[0].id)
    base, tracks = await world.finished(await world.compose(req(ALICE), ComposeOptions("piano ballad", 1.0)))
    more = await world.from_track(req(ALICE), tracks[0].id, Operation.MORE_LIKE)
    assert "jazz" in more.spec.blended and "jazz" in more.prompt
    done, more_tracks = await world.finished(more)
    assert done.state is JobState.DONE and more_tracks[0].parent_track_id == tracks[0].id
    message = await world.result_message(done, more_tracks)
    assert "Blended in your taste: jazz" in plain(message.text)
    # bob never voted: nothing to blend for him
    same = await world.from_track(req(BOB), tracks[0].id, Operation.MORE_LIKE)
    assert same.spec.blended == () and same.prompt == "piano ballad"
    assert "jazz" in await world.fingerprints.describe("alice")


async def test_more_like_this_never_contradicts_the_prompt(world):
    await world.fingerprints.style("alice", "add", "calm")
    _, tracks = await world.finished(await world.compose(req(ALICE), ComposeOptions("aggressive metal", 1.0)))
    more = await world.from_track(req(ALICE), tracks[0].id, Operation.MORE_LIKE)
    assert "calm" not in more.prompt


async def test_extend_to_sixty_seconds_gives_one_sixty_second_file(world):
    _, tracks = await world.finished(await world.compose(req(ALICE), ComposeOptions("ambient drone", 2.0)))
    job = await world.extend_to(req(ALICE), tracks[0].id, 60.0)
    done, longer = await world.finished(job)
    assert done.state is JobState.DONE and len(longer) == 1
    data, rate = sf.read(world.files.absolute(longer[0].flac))
    assert rate == 32000 and len(data) == 60 * 32000
    assert longer[0].operation is Operation.EXTEND and longer[0].parent_track_id == tracks[0].id
    with pytest.raises(Refusal, match="limit is 5 min"):
        await world.extend_to(req(ALICE), longer[0].id, 400.0)


async def test_a_song_is_one_file_with_chapters_and_its_sections_recorded(world):
    job = await world.song(req(ALICE), "synthwave drive", "intro 2, chorus 2, verse 2, chorus 2, outro 2")
    done, tracks = await world.finished(job)
    assert done.state is JobState.DONE, done.error
    data, _ = sf.read(world.files.absolute(tracks[0].flac))
    assert len(data) == 10 * 32000
    chapters = ID3(world.files.absolute(tracks[0].mp3)).getall("CHAP")
    assert len(chapters) == 5
    assert "sections" in tracks[0].params
    with pytest.raises(Refusal):
        await world.song(req(ALICE), "x", "intro 0")


async def test_a_returning_chorus_is_the_same_audio_or_a_new_take_on_its_melody(world):
    def chorus_pair(track):
        x, rate = sf.read(world.files.absolute(track.flac))
        return x[int(0.2 * rate):int(1.8 * rate)], x[int(4.2 * rate):int(5.8 * rate)]

    same = await world.song(req(ALICE), "synthwave drive", "chorus 2, verse 2, chorus 2", seed=5)
    new = await world.song(req(ALICE), "synthwave drive", "chorus 2, verse 2, chorus 2", seed=5,
                           chorus="melody")
    (_, [reused]), (done, [melodic]) = await world.finished(same), await world.finished(new)
    assert done.state is JobState.DONE, done.error
    assert reused.params["chorus"] == "reuse" and melodic.params["chorus"] == "melody"
    first, again = chorus_pair(reused)
    np.testing.assert_allclose(again, first, atol=1e-4)
    first, again = chorus_pair(melodic)
    assert np.abs(again).max() > 1e-3 and np.abs(again - first).max() > 1e-2  # made anew, following the melody
    with pytest.raises(Refusal, match="chorus"):
        await world.song(req(ALICE), "x", "chorus 2, chorus 2", chorus="twice")
    world.planner.config = dataclasses.replace(world.config, melody_model=None)
    with pytest.raises(Refusal, match="BANDMATE_MELODY_MODEL"):
        await world.song(req(ALICE), "x", "chorus 2, chorus 2", chorus="melody")


async def test_remix_keeps_an_uploads_melody(world, tmp_path):
    if not MELODY.exists():
        pytest.skip("melody fixture not built")
    rate = 32000
    t = np.arange(int(2.0 * rate)) / rate
    notes = [261.63, 329.63, 392.0, 329.63]
    arpeggio = np.concatenate([0.4 * np.sin(2 * np.pi * f * t[: rate // 2]) for f in notes]).astype(np.float32)
    path = tmp_path / "arpeggio.wav"
    sf.write(path, arpeggio, rate)
    job = await world.remix(req(ALICE), Upload("arpeggio.wav", path.read_bytes()), "jazz piano",
                            duration_s=2.0)
    done, tracks = await world.finished(job)
    assert done.state is JobState.DONE, done.error
    assert tracks[0].operation is Operation.REMIX and abs(tracks[0].duration_s - 2.0) < 1e-6


async def test_votes_close_with_a_winner_and_feed_the_leaderboard(world):
    job, tracks = await world.finished(
        await world.compose(req(ALICE), ComposeOptions("funky bass", 1.0, variations=2)))
    await world.vote(ALICE, tracks[1].id)
    await world.vote(BOB, tracks[1].id)
    await world.vote(ALICE, tracks[0].id)  # alice changes her mind: one vote per person per job
    assert await world.store.vote_tally(job.id) == {tracks[0].id: 1, tracks[1].id: 1}
    await world.vote(ALICE, tracks[1].id)
    await world.leaderboard.open_window(job.id, "g1", time.time() - 1)
    assert await world.leaderboard.close_due(time.time()) == [(job.id, tracks[1].id)]
    message = await world.result_message(job, tracks, winner=tracks[1].id)
    assert "#2 won with 2 votes" in plain(message.text)
    top = await world.top("g1", "week")
    assert tracks[1].id in plain(top.text).splitlines()[1]


async def test_only_configured_models_can_be_chosen(world):
    with pytest.raises(Refusal, match="isn't offered here"):
        await world.compose(req(ALICE), ComposeOptions("jazz", 1.0, model="/etc/passwd"))
    job = await world.compose(req(ALICE), ComposeOptions("jazz", 1.0, model=world.config.default_model))
    assert job.model == world.config.default_model

"""ACE-Step through the transport-free core, on the tiny fixtures: /song with lyrics (duration from the lyrics,
sections as chapters), replies that replace a named section or a range (and what is refused, before anything is
queued), covers and stems of another family's track, the spec's wire form, export and forget of lyrics."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from mutagen.id3 import ID3

from bot import views
from bot.core import Bandmate, ComposeOptions, CoreConfig, Refusal, Request, Requester, SongOptions
from bot.grammar import IntentKind, parse_reply
from bot.messages import ButtonKind
from bot.guild_settings import ServerSettings
from bot.planner import Planner
from bot.privacy import PrivacyService
from bot.text import plain
from bot.vocals import inline_lyrics, normal_key, track_sections
from generation.jobs import DeliveryAddress, JobKind, JobState, Operation
from generation.lyrics import estimate_duration
from generation.models import Family, model_info
from generation.local_executor import LocalExecutor
from generation.runner import JobRunner
from generation.scheduler import Scheduler, SchedulerConfig
from generation.spec import JobSpec
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import ConversationLinks, SqliteJobStore
from storage.privacy import PrivacyStore
from storage.settings import SettingsStore
from queue_harness import Delivered

ROOT = Path(__file__).resolve().parent.parent
ACE = str(ROOT / "tests" / "fixtures" / "tiny-ace-step")
SR = 48_000
LYRICS = ("[intro]\n[verse]\nwalking down the street tonight\nlights are shining bright\n"
          "[chorus]\noh we sing\n[verse]\nmorning comes again\n[chorus]\noh we sing\n[bridge]\nhold on\n[outro]")


@pytest_asyncio.fixture
async def world(tmp_path, models, tiny_model_path):
    db = Database(tmp_path / "bandmate.db")
    files = FileStore(tmp_path)
    store = SqliteJobStore(db)
    scheduler = Scheduler(store, LocalExecutor(JobRunner(models, files)), SchedulerConfig(per_user_pending=20))
    sink = Delivered()
    await scheduler.add_sink("test", sink)
    await scheduler.start()
    links = ConversationLinks(db)
    server = ServerSettings(SettingsStore(db))
    planner = Planner(scheduler=scheduler, store=store, links=links, files=files, model_info=model_info,
                      config=CoreConfig(default_model=tiny_model_path, models=(ACE,), cooldown_s=0.0),
                      server_settings=server)
    core = Bandmate(planner=planner, scheduler=scheduler, store=store, links=links, files=files,
                    server_settings=server, privacy=PrivacyService(PrivacyStore(db, files), scheduler=scheduler))

    async def finished(job):
        await asyncio.wait_for(sink.event(job.id).wait(), 120)
        return await store.get_job(job.id), await store.tracks_for_job(job.id)

    core.finished = finished
    def jobs_count() -> int:
        with sqlite3.connect(tmp_path / "bandmate.db") as raw:
            return raw.execute("SELECT count(*) FROM jobs").fetchone()[0]

    core.jobs_count = jobs_count
    yield core
    await scheduler.stop()
    db.close()


ALICE = Requester(user_id="alice", guild_id="g1", channel_id="c1")
ADMIN = Requester(user_id="admin", guild_id="g1", channel_id="c1", is_admin=True)


def req(who: Requester = ALICE) -> Request:
    return Request(who, delivery=DeliveryAddress("test"))


async def song(core, lyrics=LYRICS, **kw):
    kw.setdefault("duration_s", 12.0)
    plan = await core.plan_lyric_song(req(), SongOptions(prompt="indie pop", lyrics=lyrics, bpm=120, seed=3, **kw))
    job, tracks = await core.finished(await core.submit(plan))
    assert job.state is JobState.DONE, job.error
    return job, tracks


def seconds(path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


# --- the family, the spec ----------------------------------------------------------------------------------------


def test_ace_step_is_detected_and_states_its_abilities():
    info = model_info(ACE)
    assert info.family is Family.ACE_STEP and info.license == "MIT"
    assert (info.lyrics, info.repaint, info.cover) == (True, True, True)
    assert info.stems == ("vocals", "drums", "bass", "other") and not info.supports_continuation
    assert info.default_steps == 8  # the fixture's transformer says is_turbo
    other = model_info(str(ROOT / "tests" / "fixtures" / "tiny-musicgen"))
    assert not (other.lyrics or other.repaint or other.cover or other.stems)
    # one duration per call: jobs of different lengths never share a batch
    spec = JobSpec(lyrics="x")
    assert info.batch_key(spec, False, 10.0) != info.batch_key(spec, False, 12.0)
    assert info.batch_key(spec, False, 10.0) == info.batch_key(JobSpec(lyrics="y"), False, 10.0)


def test_spec_round_trips_the_song_fields():
    spec = JobSpec(lyrics="[verse]\nla", language="en", bpm=100, key="C major", repaint=(1.0, 2.5),
                   cover_strength=0.7, reference_audio="audio/ab/xref.flac", stems=("vocals", "other"))
    back = JobSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.uploads() == ["audio/ab/xref.flac"]
    assert JobSpec.from_dict({"bpm": "fast", "repaint_start_s": 1}).repaint is None


def test_replies_that_name_a_part_are_replace_intents():
    for text in ("redo the bridge", "replace 0:40-0:55 with a guitar solo", "make the intro calmer",
                 "change the second chorus to: new words"):
        assert parse_reply(text).kind is IntentKind.REPLACE, text
    picked = parse_reply("#2 redo the chorus")
    assert (picked.kind, picked.variation, picked.text) == (IntentKind.REPLACE, 2, "redo the chorus")
    assert parse_reply("make it jazzier").kind is IntentKind.EDIT
    assert parse_reply("redo").kind is IntentKind.VARIATIONS
    assert parse_reply("add a guitar solo").kind is IntentKind.EDIT


def test_replies_that_add_an_instrument_name_acesteps_part():
    for text, part in [("add a guitar part", "guitar"), ("add drums", "drums"), ("put some strings on it", "strings"),
                       ("add backing vocals to this", "backing_vocals"), ("please add a piano line", "keyboard"),
                       ("#2 add some bass", "bass")]:
        intent = parse_reply(text)
        assert (intent.kind, intent.text) == (IntentKind.ADD_PART, part), text
        assert intent.edit is not None and intent.edit.add  # what a server without ACE-Step does with it
    assert parse_reply("#2 add some bass").variation == 2
    for text in ("add strings and make it jazzier", "add 20s", "add a kazoo", "make it jazzier"):
        assert parse_reply(text).kind is not IntentKind.ADD_PART, text


def test_inline_lyrics_and_keys():
    assert inline_lyrics("[verse] a b / c d [chorus] e") == "[verse]\na b\nc d\n[chorus]\ne"
    assert inline_lyrics("[verse]\na / b") == "[verse]\na / b"  # real line breaks: kept as written
    assert normal_key("f# min") == "F# minor" and normal_key("Bb") == "Bb major"
    with pytest.raises(Refusal):
        normal_key("H dorian")


# --- /song with lyrics -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_song_follows_its_lyrics_with_chapters_and_the_lyrics_stored(world):
    short = "[verse]\nwalking down the street tonight\n[chorus]\noh we sing"
    plan = await world.plan_lyric_song(req(), SongOptions(prompt="indie pop", lyrics=short, seed=1))
    assert plan.job.model == ACE and plan.job.duration_s == estimate_duration(short)
    job, tracks = await world.finished(await world.submit(plan))
    track = tracks[0]
    assert abs(seconds(world.path(track.flac)) - job.duration_s) < 1e-3
    assert track.params["lyrics"] == short
    labels = [s["label"] for s in track.params["sections"]]
    assert labels == ["Verse", "Chorus"]
    tags = ID3(world.path(track.mp3))
    assert [c.sub_frames["TIT2"].text[0] for c in tags.getall("CHAP")] == labels
    assert "MIT" in str(tags) and "walking" not in str(tags)  # the licence is tagged; the words are not
    message = views.result_message(job, tracks, world.path)
    assert "Sections: Verse" in plain(message.text) and "walking down the street" in plain(message.thread_text)
    assert any(b.kind.value == "stems" for b in message.buttons)


@pytest.mark.asyncio
async def test_an_instrumental_and_the_limits(world):
    before = world.jobs_count()
    plan = await world.plan_lyric_song(req(), SongOptions(prompt="ambient", lyrics=""))
    assert plan.job.spec.lyrics == "" and plan.job.duration_s == 30.0
    for opts, words in [(SongOptions("x", lyrics="la\n" * 200), "160"),
                        (SongOptions("x", lyrics="[verse]\nla", bpm=500), "bpm"),
                        (SongOptions("x", lyrics="[verse]\nla", duration_s=900), "long"),
                        (SongOptions("x", lyrics="[verse]\nla", key="Q lydian"), "key"),
                        (SongOptions("x", lyrics="[verse]\nla", language="english!"), "language"),
                        (SongOptions("x", lyrics="la", model=world.config.default_model), "ACE-Step")]:
        with pytest.raises(Refusal) as refused:
            await world.plan_lyric_song(req(Requester("dm-user")), opts)
        assert words in refused.value.user_message, refused.value.user_message
    cleaned = await world.plan_lyric_song(req(), SongOptions("x", lyrics="[Verse]\nla\u200b la\x07"))
    assert cleaned.job.spec.lyrics == "[verse]\nla la"
    await world.server_settings.block(ADMIN, "g1", "forbidden")
    with pytest.raises(Refusal, match="lyrics"):
        await world.plan_lyric_song(req(), SongOptions("x", lyrics="[verse]\na forbidden word"))
    assert world.jobs_count() == before  # plans store nothing


# --- replacing a part --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_server_chooses_its_longest_song_within_the_bots_limit(world):
    said = await world.server_settings.update_settings(ADMIN, "g1", max_song_s=20.0)
    assert "20" in plain(said) or "0:20" in plain(said)
    long_words = "[verse]\n" + "\n".join(f"line number {i} of a long song" for i in range(60))
    plan = await world.plan_lyric_song(req(), SongOptions(prompt="epic", lyrics=long_words))
    assert plan.job.duration_s == 20.0  # as long as the lyrics need, up to the server's choice
    with pytest.raises(Refusal, match="1 s to 20 s"):
        await world.plan_lyric_song(req(), SongOptions(prompt="epic", lyrics=long_words, duration_s=30.0))
    with pytest.raises(Refusal, match="the bot's own limit"):
        await world.server_settings.update_settings(ADMIN, "g1", max_song_s=1000.0)
    assert (await world.server_settings.get("g1")).max_song_s == 20.0  # nothing saved by the refusal
    await world.server_settings.update_settings(ADMIN, "g1", max_song_s=None)
    plan = await world.plan_lyric_song(req(), SongOptions(prompt="epic", lyrics=long_words))
    assert plan.job.duration_s > 20.0


@pytest.mark.asyncio
async def test_replies_replace_the_named_section_with_lineage(world):
    job, tracks = await song(world)
    parent = tracks[0]
    sections = {s.label: s for s in track_sections(parent)}
    assert "Bridge" in sections and "Chorus 2" in sections
    outcome = await world.reply(req(), job.id, "redo the bridge")
    assert outcome.job is not None, outcome.text
    bridge = sections["Bridge"]
    assert outcome.job.kind is JobKind.REPAINT and outcome.job.spec.repaint == (bridge.start_s, bridge.end_s)
    new_job, new_tracks = await world.finished(outcome.job)
    track = new_tracks[0]
    assert track.operation is Operation.REPLACE and track.parent_track_id == parent.id
    assert track.params["replace"] == {"start_s": bridge.start_s, "end_s": bridge.end_s}
    assert abs(seconds(world.path(track.flac)) - parent.duration_s) < 1e-3

    words = await world.reply(req(), job.id, "change the second chorus to: sing it louder now")
    second = sections["Chorus 2"]
    assert words.job.spec.repaint == (second.start_s, second.end_s)
    assert words.job.spec.lyrics.count("oh we sing") == 1 and "sing it louder now" in words.job.spec.lyrics

    ranged = await world.reply(req(), job.id, "replace 0:02-0:05 with a guitar solo")
    assert ranged.job.spec.repaint == (2.0, 5.0) and ranged.job.prompt.endswith("a guitar solo")
    calmer = await world.reply(req(), job.id, "make the intro calmer")
    assert calmer.job.spec.repaint[0] == 0.0 and "calm" in calmer.job.prompt


@pytest.mark.asyncio
async def test_stored_replace_is_sample_exact_outside_its_range_and_stems_add_up(world):
    """What is stored and posted, after rendering: a replaced track keeps every sample of its parent outside the
    range (no new loudness gain or fade), and stems add back up to the mix they came from."""
    job, (parent,) = await song(world, lyrics="[verse]\nwalking down the street\n[chorus]\noh we sing")
    outcome = await world.reply(req(), job.id, "replace 0:03-0:06 with a guitar solo")
    _, (replaced,) = await world.finished(outcome.job)
    before, rate = sf.read(str(world.path(parent.flac)), dtype="float64", always_2d=True)
    after, _ = sf.read(str(world.path(replaced.flac)), dtype="float64", always_2d=True)
    assert after.shape == before.shape
    start, end = 3 * rate, 6 * rate
    assert np.array_equal(after[:start], before[:start]) and np.array_equal(after[end:], before[end:])
    fade = int(0.05 * rate)
    assert np.abs(after[start + fade:end - fade] - before[start + fade:end - fade]).max() > 1e-3

    stems_job, stems = await world.finished(await world.submit(await world.plan_stems(req(), track_id=parent.id)))
    parts = [sf.read(str(world.path(t.flac)), dtype="float64", always_2d=True)[0] for t in stems]
    assert [t.params["stem"] for t in stems] == ["vocals", "drums", "bass", "other"]
    total = sum(parts)
    # One factor for all stems (<= 1: lowered together only if one would clip), each rounded once to 24 bits.
    scale = float((total * before).sum() / (before * before).sum())
    assert 0.0 < scale <= 1.0 + 1e-6
    assert np.abs(total - scale * before).max() < 8 * 2.0 ** -23


@pytest.mark.asyncio
async def test_replace_refusals_say_why_and_queue_nothing(world):
    job, tracks = await song(world, lyrics="[verse]\nwalking down the street\n[chorus]\noh we sing")
    before = world.jobs_count()
    for text, words in [("redo the bridge", "no bridge"), ("replace 0:05-0:40 with drums", "runs past its end"),
                        ("redo the third chorus", "no third chorus"), ("replace 0:08-0:04 with drums", "empty")]:
        outcome = await world.reply(req(), job.id, text)
        assert outcome.job is None and words in plain(outcome.text), outcome.text
        assert "Verse" in plain(outcome.text) and "0:12" in plain(outcome.text)  # the hint lists the sections
    plan = await world.plan_compose(req(), ComposeOptions(prompt="piano", duration_s=2.0))
    musicgen_job, musicgen_tracks = await world.finished(await world.submit(plan))
    before = world.jobs_count()
    refused = await world.reply(req(), musicgen_job.id, "replace 0:00-0:01 with drums")
    assert refused.job is None and "can't repaint" in plain(refused.text)
    assert world.jobs_count() == before


# --- covers and stems of another family's track ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cover_and_stems_of_a_musicgen_track(world):
    plan = await world.plan_compose(req(), ComposeOptions(prompt="piano", duration_s=2.0, seed=5))
    _, (parent,) = await world.finished(await world.submit(plan))
    cover = await world.submit(await world.plan_cover(req(), "rock band", track_id=parent.id, strength=0.6))
    assert cover.model == ACE and cover.spec.cover_strength == 0.6
    cover_job, (covered,) = await world.finished(cover)
    assert cover_job.state is JobState.DONE and covered.operation is Operation.COVER
    assert covered.parent_track_id == parent.id and abs(seconds(world.path(covered.flac)) - 2.0) < 1e-3

    stems_job, stems = await world.finished(await world.submit(await world.plan_stems(req(), track_id=parent.id)))
    assert stems_job.state is JobState.DONE
    assert [t.params["stem"] for t in stems] == ["vocals", "drums", "bass", "other"]
    assert all(abs(seconds(world.path(t.flac)) - 2.0) < 1e-3 for t in stems)
    message = views.result_message(stems_job, stems, world.path)
    assert [f.filename.rsplit("-", 1)[-1] for f in message.files] == ["vocals.mp3", "drums.mp3", "bass.mp3",
                                                                      "other.mp3"]
    with pytest.raises(Refusal):
        await world.plan_cover(req(), "x", track_id=parent.id, strength=1.5)

    # ACE-Step is offered here, so the MusicGen result itself carries 🎚; a server without it shows none.
    posted = await world.result_message(await world.store.get_job(parent.job_id), [parent])
    assert [b.target for b in posted.buttons if b.kind is ButtonKind.STEMS] == [parent.id]
    world.planner.config = replace(world.planner.config, models=())
    posted = await world.result_message(await world.store.get_job(parent.job_id), [parent])
    assert not [b for b in posted.buttons if b.kind is ButtonKind.STEMS]


@pytest.mark.asyncio
async def test_add_a_part_to_any_track_mixes_it_in_with_lineage(world):
    plan = await world.plan_compose(req(), ComposeOptions(prompt="piano ballad", duration_s=2.0, seed=5))
    job, (parent,) = await world.finished(await world.submit(plan))
    before = world.jobs_count()
    outcome = await world.reply(req(), job.id, "add a guitar part")
    assert outcome.job is not None, outcome.text
    assert world.jobs_count() == before + 1
    added = outcome.job
    assert (added.kind, added.operation, added.spec.part, added.model) == (JobKind.ADD_PART, Operation.ADD_PART,
                                                                            "guitar", ACE)
    done, (track,) = await world.finished(added)
    assert done.state is JobState.DONE, done.error
    assert track.parent_track_id == parent.id and track.params["part"] == "guitar"
    assert abs(seconds(world.path(track.flac)) - 2.0) < 1e-3
    original, rate = sf.read(str(world.path(parent.flac)), dtype="float64", always_2d=True)
    mixed, mixed_rate = sf.read(str(world.path(track.flac)), dtype="float64", always_2d=True)
    assert mixed_rate == 48_000 and np.abs(mixed).max() > 0
    message = await world.result_message(done, [track])
    assert "part added" in plain(message.text)

    # Without an ACE-Step model the same words change the prompt, as before.
    world.planner.config = replace(world.planner.config, models=())
    fallback = await world.reply(req(), job.id, "add drums")
    assert fallback.job.kind is JobKind.TEXT and "drums" in fallback.job.prompt
    assert fallback.job.operation is Operation.VARIATION


# --- lyrics are the person's data --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_export_includes_lyrics_and_forget_erases_them(world):
    job, tracks = await song(world, lyrics="[verse]\nmy secret words")
    exported = json.loads(await world.privacy.export_json("alice"))
    assert any("my secret words" in json.dumps(j["spec"]) for j in exported["jobs"])
    assert any(t["params"].get("lyrics") == "[verse]\nmy secret words" for t in exported["tracks"])
    await world.privacy.forget("alice", delete_tracks=False)
    kept = await world.store.tracks_for_job(job.id)
    assert kept and "lyrics" not in kept[0].params and "sections" in kept[0].params
    assert not (await world.store.get_job(job.id)).spec.lyrics


@pytest.mark.asyncio
async def test_forget_erases_their_words_from_covers_and_replacements_others_made(world):
    job, (parent,) = await song(world, lyrics="[verse]\nmy secret words\n[chorus]\nsecret chorus")
    bob = Requester(user_id="bob", guild_id="g1", channel_id="c1")
    bobs = await world.reply(Request(bob, delivery=DeliveryAddress("test")), job.id, "redo the chorus")
    assert bobs.job is not None, bobs.text
    _, (bobs_track,) = await world.finished(bobs.job)
    carol = Requester(user_id="carol", guild_id="g1", channel_id="c1")
    carols = await world.reply(Request(carol, delivery=DeliveryAddress("test")), bobs.job.id, "redo the verse")
    carol_job, (carols_track,) = await world.finished(carols.job)
    assert "my secret words" in carols.job.spec.lyrics and "my secret words" in carols_track.params["lyrics"]

    said = plain(await world.privacy.forget("alice", delete_tracks=False))
    assert "removed from 2 pieces that other people made" in said, said  # bob's, and carol's made from bob's
    for job_id in (bobs.job.id, carol_job.id):
        kept = await world.store.get_job(job_id)
        assert not kept.spec.lyrics and kept.user_id in ("bob", "carol")
        (track,) = await world.store.tracks_for_job(job_id)
        assert "lyrics" not in track.params and world.path(track.mp3).exists()
    exported = await world.privacy.export_json("bob")
    assert b"my secret words" not in exported


# --- "sound like this", and batching by the family's key -----------------------------------------------------------


def wav_bytes(seconds_: float, rate: int = 32_000) -> bytes:
    import io

    t = np.arange(int(seconds_ * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.mark.asyncio
async def test_a_reference_upload_is_stored_at_the_models_rate_and_forgotten(world):
    from bot.core import Upload, UploadInfo

    data = wav_bytes(2.0)
    plan = await world.plan_lyric_song(req(), SongOptions("dream pop", lyrics="[verse]\nla la", duration_s=3.0),
                                       UploadInfo("like-this.wav", len(data)))
    job, tracks = await world.finished(await world.submit(plan, Upload("like-this.wav", data)))
    assert job.state is JobState.DONE, job.error
    ref = world.path(job.spec.reference_audio)
    assert sf.info(str(ref)).samplerate == 48_000 and sf.info(str(ref)).channels == 2
    assert abs(seconds(world.path(tracks[0].flac)) - 3.0) < 1e-3
    with pytest.raises(Refusal):  # a reference that is not audio is refused before anything is queued
        await world.plan_lyric_song(req(), SongOptions("x", lyrics="la"), UploadInfo("notes.pdf", 10))
    await world.privacy.forget("alice", delete_tracks=False)
    assert not ref.exists()


def test_ace_jobs_batch_only_with_the_same_length_and_metadata():
    from generation.jobs import Job
    from generation.batching import batch_compatible

    def job(duration: float, **spec) -> Job:
        return Job(user_id="u", prompt="p", duration_s=duration, model=ACE, spec=JobSpec(lyrics="la", **spec))

    head = job(10.0)
    assert batch_compatible(head, job(10.0), [10.0])
    assert not batch_compatible(head, job(9.0), [10.0])
    assert not batch_compatible(head, job(10.0, bpm=90), [10.0])
    assert not batch_compatible(job(10.0, repaint=(1.0, 2.0)), job(10.0, repaint=(2.0, 3.0)), [10.0])


@pytest.mark.asyncio
async def test_a_new_take_of_a_song_sings_the_same_words(world):
    job, (parent,) = await song(world, lyrics="[verse]\nsame words here", duration_s=4.0)
    outcome = await world.reply(req(), job.id, "make it jazzier")
    assert outcome.job is not None and outcome.job.model == ACE
    assert outcome.job.spec.lyrics == "[verse]\nsame words here" and outcome.job.spec.bpm == 120
    assert "jazzy" in outcome.job.prompt and outcome.job.duration_s == parent.duration_s

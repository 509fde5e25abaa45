"""Privacy: summary, export, forget (delete or anonymise) and retention, on real SQLite files and real files.

The user's id must be gone from every table and from the raw bytes of the database file and its WAL after
`forget`; another user's data must survive untouched. No mocks: data is written through the real stores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils

from bot.privacy import PrivacyService
from generation.spec import JobSpec
from generation.jobs import DeliveryAddress, Job, JobKind, Operation, TrackRecord
from storage import DB_FILENAME, Database, FileStore, SqliteJobStore
from storage.jobstore import ConversationLinks
from storage.privacy import FORGOTTEN_USER, PrivacyStore
from storage.taste import TasteStore

USER = "424242424242424242"  # a Discord snowflake, distinctive enough to find in raw bytes
OTHER = "737373737373737373"
SECRET_PROMPT = "zebra kazoo nocturne for my private diary"
TOKEN = "interaction-token-abcdef"
DAY = 86_400.0


# --- helpers ------------------------------------------------------------------------------------------


def payload(tag: str, size: int = 2048) -> bytes:
    block = hashlib.sha256(tag.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def make_tracks(job: Job, files: FileStore, created: float | None = None) -> list[TrackRecord]:
    tracks = []
    for v in range(job.variations):
        track_id = f"{job.id}v{v}"
        paths = {}
        for ext in ("mp3", "png", "flac"):
            rel = files.path_for(track_id, ext)
            files.write_bytes(rel, payload(f"{track_id}.{ext}"))
            paths[ext] = rel
        tracks.append(TrackRecord(
            id=track_id, job_id=job.id, variation=v, prompt=job.prompt, seed=job.seed + v, model=job.model,
            duration_s=job.duration_s, params={"temperature": 1.0}, operation=job.operation, user_id=job.user_id,
            guild_id=job.guild_id, channel_id=job.channel_id, parent_track_id=job.parent_track_id,
            created_at=created if created is not None else time.time(), **paths))
    return tracks


async def done_job(store: SqliteJobStore, files: FileStore, created: float | None = None, **kw) -> tuple[Job, list]:
    base = dict(prompt="lofi beat", duration_s=8.0, model="musicgen-small", variations=2, guild_id="g1",
                channel_id="c1")
    base.update(kw)
    base["delivery"] = DeliveryAddress.from_dict(base.get("delivery"))
    base["spec"] = JobSpec.from_dict(base.get("spec"))
    job = await store.add_job(Job(**base))
    tracks = make_tracks(job, files, created)
    await store.complete_job(job, tracks)
    return job, tracks


def sql(db: Database, statement: str, args: list | None = None) -> list[tuple]:
    return db.write_sync(lambda d: [tuple(r) for r in d.execute(statement, args or []).fetchall()])


def tables(db: Database) -> list[str]:
    return db.read_sync(lambda d: [r[0] for r in d.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()])


def occurrences(db: Database, needle: str) -> list[tuple[str, str]]:
    """Every (table, column) whose text holds `needle`, scanning all tables and columns."""

    def scan(d: sqlite_utils.Database) -> list[tuple[str, str]]:
        found = []
        for table in [r[0] for r in d.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]:
            for column in [r[1] for r in d.execute(f"PRAGMA table_info([{table}])").fetchall()]:
                n = d.execute(f"SELECT count(*) FROM [{table}] WHERE instr(CAST([{column}] AS TEXT), ?) > 0",
                              [needle]).fetchone()[0]
                if n:
                    found.append((table, column))
        return found

    return db.read_sync(scan)


def raw_bytes(data: Path) -> bytes:
    out = b""
    for name in (DB_FILENAME, DB_FILENAME + "-wal"):
        path = data / name
        if path.exists():
            out += path.read_bytes()
    return out


@pytest.fixture
def world(tmp_path: Path):
    data = tmp_path / "data"
    db = Database(data / DB_FILENAME)
    files = FileStore(data)
    # Simulate an SQLite built without SECURE_DELETE (Debian's defaults it on): earlier deletes then leave fragments
    # in free space, and forget must still leave no trace.
    db.write_sync(lambda d: d.conn.execute("PRAGMA secure_delete = OFF").fetchall())
    yield data, db, files, SqliteJobStore(db)
    db.close()


async def populate(db: Database, files: FileStore, store: SqliteJobStore) -> dict:
    """The user with tracks, an upload, a pending job, votes, taste and presets; another user who must survive."""
    taste, links = TasteStore(db), ConversationLinks(db)
    other_job, other_tracks = await done_job(store, files, user_id=OTHER, prompt="other person's jazz",
                                             delivery={"sink": "discord", "channel_id": "c9"})
    delivery = {"sink": "discord", "channel_id": "c1", "interaction_token": TOKEN, "status_message_id": "m1"}
    job, tracks = await done_job(store, files, user_id=USER, prompt=SECRET_PROMPT, delivery=delivery,
                                 idempotency_key="discord:interaction:991", spec={"blended": ["jazz"]})
    # An upload continued by the user: their own recording on disk.
    up = Job(user_id=USER, prompt=SECRET_PROMPT + " continued", duration_s=4.0, model="musicgen-small",
             kind=JobKind.CONTINUE, operation=Operation.CONTINUE, variations=1, guild_id=None, channel_id="dm1")
    up.input_audio = files.path_for(f"{up.id}in", "flac")
    files.write_bytes(up.input_audio, payload("upload"))
    await store.add_job(up)
    up_tracks = make_tracks(up, files)
    await store.complete_job(up, up_tracks)
    # The user extended the other person's track: its FLAC is their job's input and must not be removed.
    ext = Job(user_id=USER, prompt="other person's jazz", duration_s=4.0, model="musicgen-small",
              kind=JobKind.CONTINUE, operation=Operation.EXTEND, input_audio=other_tracks[0].flac,
              parent_track_id=other_tracks[0].id, guild_id="g1", channel_id="c1")
    await store.add_job(ext)
    ext_tracks = make_tracks(ext, files)
    await store.complete_job(ext, ext_tracks)
    pending = await store.add_job(Job(user_id=USER, prompt=SECRET_PROMPT, duration_s=4.0, model="musicgen-small"))

    # Votes: the user votes on the other's job and moves the vote (an UPDATE leaves the old cell behind).
    await store.record_vote(other_job.id, other_tracks[0].id, USER)
    await store.record_vote(other_job.id, other_tracks[1].id, USER)
    await store.record_vote(job.id, tracks[0].id, OTHER)
    # Taste: implicit events, an explicit choice set twice (delete + insert), the other user's events.
    await taste.record_many(USER, [("lofi", 1.0, "vote"), ("piano", 0.5, "vote")], track_id=other_tracks[1].id)
    await taste.set_explicit(USER, "jazz", True)
    await taste.set_explicit(USER, "jazz", False)
    await taste.record(OTHER, "lofi", 1.0, "like", track_id=tracks[0].id)
    # A row deleted between two rows of the other user: with secure_delete off its bytes stay in the page's free
    # space, next to nothing forget deletes, so only rewriting the file (VACUUM) removes them.
    await taste.set_explicit(USER, "rockabilly", True)
    await taste.record(OTHER, "ambient", 0.5, "like")
    await taste.clear_explicit(USER, "rockabilly")
    # Presets live in users.prefs; the other user has some too.
    for uid, prefs in ((USER, {"presets": {"night": SECRET_PROMPT, "day": "sunny"}, "theme": "dark"}),
                       (OTHER, {"presets": {"x": "y"}})):
        sql(db, "INSERT INTO users (id, created, prefs) VALUES (?, ?, ?)", [uid, time.time() - 5, json.dumps(prefs)])
    await links.link("discord:message:555", job.id)
    await links.link("discord:thread:556", job.id)
    await links.link("discord:message:777", other_job.id)
    return dict(job=job, tracks=tracks, up=up, up_tracks=up_tracks, ext=ext, ext_tracks=ext_tracks, pending=pending,
                other_job=other_job, other_tracks=other_tracks)


def other_rows(db: Database) -> dict[str, list[tuple]]:
    """Everything that belongs to the other user, to compare before and after."""
    return {
        "jobs": sql(db, "SELECT * FROM jobs WHERE user_id = ? ORDER BY id", [OTHER]),
        "tracks": sql(db, "SELECT * FROM tracks WHERE user_id = ? ORDER BY id", [OTHER]),
        "votes": sql(db, "SELECT * FROM votes WHERE user_id = ? ORDER BY job_id", [OTHER]),
        "taste": sql(db, "SELECT * FROM taste_events WHERE user_id = ? ORDER BY id", [OTHER]),
        "users": sql(db, "SELECT * FROM users WHERE id = ?", [OTHER]),
        "links": sql(db, "SELECT * FROM conversation_links WHERE ref = 'discord:message:777'"),
    }


def all_files(tracks: list[TrackRecord]) -> list[str]:
    return [p for t in tracks for p in (t.mp3, t.png, t.flac)]


# --- summary and export -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_summary_and_privacy_text(world):
    data, db, files, store = world
    await populate(db, files, store)
    privacy = PrivacyStore(db, files)
    summary = await privacy.summary(USER)
    assert summary["tracks"] == 4 and summary["jobs"] == 4 and summary["votes"] == 1
    assert summary["taste_events"] == 3 and summary["presets"] == 2
    assert summary["oldest"] <= summary["newest"]
    text = await PrivacyService(privacy).privacy_text(USER)
    assert len(text) < 2000
    assert "4 tracks" in text and "3 taste signals" in text and "2 presets" in text and "/forget" in text
    assert USER not in text
    nothing = await PrivacyService(privacy).privacy_text("1")
    assert "nothing" in nothing


@pytest.mark.asyncio
async def test_export_has_the_users_data_and_nobody_elses_id(world):
    data, db, files, store = world
    made = await populate(db, files, store)
    privacy = PrivacyStore(db, files)
    export = await privacy.export(USER)
    text = json.dumps(export)
    assert OTHER not in text
    assert TOKEN not in text  # a credential, redacted
    assert export["presets"] == {"night": SECRET_PROMPT, "day": "sunny"}
    assert export["profile"]["prefs"]["theme"] == "dark"
    assert {j["id"] for j in export["jobs"]} == {made["job"].id, made["up"].id, made["ext"].id, made["pending"].id}
    assert any(j["prompt"] == SECRET_PROMPT and j["sampling"]["temperature"] == 1.0 for j in export["jobs"])
    exported_tracks = {t["id"]: t for t in export["tracks"]}
    assert set(exported_tracks) == {t.id for t in made["tracks"] + made["up_tracks"] + made["ext_tracks"]}
    assert exported_tracks[made["tracks"][0].id]["files"]["mp3"] == made["tracks"][0].mp3
    assert exported_tracks[made["tracks"][0].id]["votes_received"] == 1
    assert export["votes"] == [{"track_id": made["other_tracks"][1].id, "created": export["votes"][0]["created"]}]
    assert sorted(e["tag"] for e in export["taste_events"]) == ["jazz", "lofi", "piano"]

    pretty = await PrivacyService(privacy).export_json(USER)
    parsed = json.loads(pretty.decode("utf-8"))
    assert parsed["user_id"] == USER and parsed["jobs"][0]["created_at"].endswith("+00:00")
    assert OTHER.encode() not in pretty


# --- forget -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_forget_and_delete_tracks_leaves_no_trace(world):
    data, db, files, store = world
    made = await populate(db, files, store)
    before_other = other_rows(db)
    mine = all_files(made["tracks"] + made["up_tracks"] + made["ext_tracks"]) + [made["up"].input_audio]
    assert all(files.exists(p) for p in mine)
    assert USER.encode() in raw_bytes(data)  # the check below is meaningful

    result = await PrivacyStore(db, files).forget(USER, delete_tracks=True)

    assert occurrences(db, USER) == []
    assert occurrences(db, SECRET_PROMPT) == []
    assert occurrences(db, TOKEN) == []
    assert result.taste_events == 3 and result.votes == 1 and result.presets == 2 and result.profile
    assert result.conversation_links == 2 and result.jobs == 4 and result.jobs_cancelled == 1
    assert result.tracks_deleted == 4 and result.uploads == 1 and result.scrubbed
    assert sorted(result.files_removed) == sorted(mine)
    assert not any(files.exists(p) for p in mine)
    # The other user's tracks (including the one the user extended) and rows are untouched.
    assert all(files.exists(p) for p in all_files(made["other_tracks"]))
    assert other_rows(db) == before_other
    jobs = sql(db, "SELECT user_id, prompt, delivery, idempotency_key, channel_id, state FROM jobs WHERE id IN "
                   "(?, ?)", [made["job"].id, made["pending"].id])
    assert sorted(jobs) == sorted([(FORGOTTEN_USER, "", "{}", None, None, "done"),
                                   (FORGOTTEN_USER, "", "{}", None, None, "cancelled")])
    assert sql(db, "SELECT count(*) FROM tracks WHERE deleted = 0 AND job_id = ?", [made["job"].id]) == [(0,)]
    assert await store.get_track(made["tracks"][0].id) is None
    assert db.integrity_check() == "ok"
    # Gone from the bytes on disk, not just from the rows: the database file and its WAL.
    raw = raw_bytes(data)
    assert USER.encode() not in raw and SECRET_PROMPT.encode() not in raw and TOKEN.encode() not in raw
    wal = data / (DB_FILENAME + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0

    # Idempotent, and the summary is empty afterwards.
    again = await PrivacyStore(db, files).forget(USER, delete_tracks=True)
    assert not again.anything
    summary = await PrivacyStore(db, files).summary(USER)
    assert (summary["tracks"], summary["jobs"], summary["votes"], summary["taste_events"]) == (0, 0, 0, 0)


@pytest.mark.asyncio
async def test_forget_keeping_tracks_anonymises_them(world):
    data, db, files, store = world
    made = await populate(db, files, store)
    before_other = other_rows(db)
    kept = made["tracks"] + made["up_tracks"] + made["ext_tracks"]

    text = await PrivacyService(PrivacyStore(db, files)).forget(USER, delete_tracks=False)

    assert "stay, anonymously" in text and "Backups" in text and USER not in text
    assert occurrences(db, USER) == []
    for track in kept:
        stored = await store.get_track(track.id)
        assert stored is not None and stored.user_id is None and stored.channel_id is None
        assert stored.prompt == track.prompt
        assert all(files.exists(p) for p in (track.mp3, track.png, track.flac))
    assert not files.exists(made["up"].input_audio)  # their own upload is not a track: removed
    assert files.exists(made["other_tracks"][0].flac)
    assert {j.user_id for j in [await store.get_job(made[k].id) for k in ("job", "up", "ext")]} == {FORGOTTEN_USER}
    assert (await store.get_job(made["job"].id)).delivery == DeliveryAddress()
    assert other_rows(db) == before_other
    assert db.integrity_check() == "ok"
    raw = raw_bytes(data)
    assert USER.encode() not in raw and TOKEN.encode() not in raw


@pytest.mark.asyncio
async def test_forget_removes_the_audio_of_a_long_extend_in_progress(world):
    """A chain of window jobs (generation/chain.py) keeps its intermediate audio only in the jobs' spec."""
    data, db, files, store = world
    windows = [files.path_for(f"w{k}", "wav") for k in (1, 2)]
    for rel in windows:
        files.write_bytes(rel, payload(rel))
    owner = await store.add_job(Job(user_id=USER, prompt="ambient", duration_s=58.0, model="m",
                                    spec=JobSpec.from_dict({"chain": {"windows": [[2, 28], [10, 20], [10, 10]],
                                                                               "outputs": windows}})))
    await store.add_job(Job(user_id=USER, prompt="ambient", duration_s=20.0, model="m", input_audio=windows[0],
                            spec=JobSpec.from_dict({"window_of": owner.id, "window": 2, "output": windows[1]})))
    await PrivacyService(PrivacyStore(db, files)).forget(USER, delete_tracks=True)
    assert not any(files.exists(rel) for rel in windows)
    assert occurrences(db, USER) == []


@pytest.mark.asyncio
async def test_forget_text_says_what_went_and_about_backups(world):
    data, db, files, store = world
    await populate(db, files, store)
    service = PrivacyService(PrivacyStore(db, files))
    text = await service.forget(USER, delete_tracks=True)
    assert "3 taste signals" in text and "1 vote" in text and "2 presets" in text
    assert "4 tracks" in text and "deleted" in text and "Backups" in text
    assert "nothing" in (await service.forget(USER, delete_tracks=True)).lower()


# --- retention ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sweep_retention_removes_only_old_tracks_of_that_guild(world):
    data, db, files, store = world
    now = time.time()
    _, old = await done_job(store, files, created=now - 10 * DAY, user_id=USER, guild_id="g1")
    _, new = await done_job(store, files, created=now - 1 * DAY, user_id=USER, guild_id="g1")
    _, elsewhere = await done_job(store, files, created=now - 10 * DAY, user_id=OTHER, guild_id="g2")
    privacy = PrivacyStore(db, files)

    assert await privacy.sweep_retention("g1", 7 * DAY) == 2
    assert not any(files.exists(p) for p in all_files(old))
    assert all(files.exists(p) for p in all_files(new) + all_files(elsewhere))
    assert [await store.get_track(t.id) for t in old] == [None, None]
    assert None not in [await store.get_track(t.id) for t in new + elsewhere]
    assert await privacy.sweep_retention("g1", 7 * DAY) == 0


# --- files we hand out --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to encode MP3")
def test_mp3_tags_never_contain_the_user_id(tmp_path: Path):
    from generation.postprocess import Provenance, read_provenance, write_mp3

    with pytest.raises(ValueError):
        Provenance(track_id="t1", prompt="x", seed=1, model_id="m", model_license="CC-BY-NC-4.0",
                   params={"user_id": USER})
    job = Job(user_id=USER, prompt="lofi piano", duration_s=0.5, model="musicgen-small", guild_id="g1",
              channel_id="c1")
    provenance = Provenance(track_id=f"{job.id}v0", prompt=job.prompt, seed=7, model_id=job.model,
                            model_license="CC-BY-NC-4.0", params={"temperature": 1.0, "guidance": 3.0})
    t = np.arange(16_000) / 32_000
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_mp3(samples, 32_000, tmp_path / "t.mp3", provenance)
    raw = path.read_bytes()
    assert read_provenance(path)["track_id"] == provenance.track_id
    assert USER.encode() not in raw and USER.encode("utf-16-le") not in raw
    assert all(USER not in value for value in read_provenance(path).values())


# --- the Discord cog is importable and wired ----------------------------------------------------------


@pytest.mark.asyncio
async def test_cog_commands_and_confirmation_view(world):
    data, db, files, store = world
    from bot.discord.cogs.privacy import PrivacyCog, confirm_view

    service = PrivacyService(PrivacyStore(db, files))
    cog = PrivacyCog(None, service)
    assert {c.name for c in cog.get_app_commands()} == {"privacy", "export", "forget"}
    forget = next(c for c in cog.get_app_commands() if c.name == "forget")
    assert [c.value for c in forget.parameters[0].choices] == ["delete", "keep"]
    view = confirm_view(42, "delete")
    assert [item.item.label for item in view.children] == ["Confirm: forget me", "Cancel"]
    assert [item.item.custom_id for item in view.children] == ["bandmate:forget:yes:42:delete",
                                                               "bandmate:forget:no:42:delete"]
    view.stop()

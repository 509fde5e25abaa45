"""Storage layer: migrations, the job store, the file store, durability under SIGKILL, backup/restore.

Real SQLite files under tmp_path, no mocks. Async tests carry `@pytest.mark.asyncio`, so they run the same
under pytest-asyncio's strict or auto mode; there are no async fixtures.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlite_utils

from generation.spec import ChainPlan, JobSpec
from generation.jobs import DeliveryAddress, DeliveryState, Job, JobKind, JobState, Operation, TrackRecord
from generation.types import SamplingParams
from storage import (
    DB_FILENAME,
    MIGRATIONS,
    BackupError,
    Database,
    DatabaseClosed,
    FileStore,
    JobNotFound,
    Migration,
    SchemaTooNew,
    SqliteJobStore,
    apply_migrations,
    backup,
    restore,
)
from storage.files import TEMP_PREFIX

REPO = Path(__file__).resolve().parents[1]
TABLES = ["users", "guild_settings", "jobs", "tracks", "votes", "taste_events", "migrations"]


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path):
    data = tmp_path / "data"
    db = Database(data / DB_FILENAME)
    files = FileStore(data)
    yield db, files, SqliteJobStore(db)
    db.close()


def make_job(**kw) -> Job:
    base = dict(user_id="u1", prompt="lofi beat", duration_s=8.0, model="musicgen-small")
    base.update(kw)
    return Job(**base)


def payload(tag: str, size: int = 4096) -> bytes:
    block = hashlib.sha256(tag.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def make_track(job: Job, variation: int, files: FileStore | None = None, **kw) -> TrackRecord:
    track_id = f"{job.id}v{variation}"
    paths = {}
    for ext in ("mp3", "png", "flac"):
        rel = files.path_for(track_id, ext) if files else f"audio/{track_id}.{ext}"
        if files:
            files.write_bytes(rel, payload(f"{track_id}.{ext}"))
        paths[ext] = rel
    fields = dict(
        id=track_id,
        job_id=job.id,
        variation=variation,
        prompt=job.prompt,
        seed=job.seed + variation,
        model=job.model,
        duration_s=job.duration_s,
        params={"temperature": 1.0, "lufs": -14},
        operation=job.operation,
        user_id=job.user_id,
        **paths,
    )
    fields.update(kw)
    return TrackRecord(**fields)


async def finished_job(store: SqliteJobStore, files: FileStore, tag: str, variations: int = 2) -> Job:
    """A job that went all the way: row, files on disk, tracks, DONE."""
    job = await store.add_job(make_job(prompt=tag, variations=variations, idempotency_key=tag))
    tracks = [make_track(job, v, files) for v in range(variations)]
    await store.complete_job(job, tracks)
    return job


def dump(db: Database) -> dict[str, list[tuple]]:
    def read(d: sqlite_utils.Database) -> dict[str, list[tuple]]:
        return {t: sorted(map(tuple, d.execute(f"SELECT * FROM [{t}]").fetchall()), key=repr) for t in TABLES}

    return db.read_sync(read)


def live_files(db: Database) -> list[str]:
    return db.read_sync(
        lambda d: sorted(
            p for row in d.execute("SELECT mp3, png, flac FROM tracks WHERE deleted = 0").fetchall() for p in row
        )
    )


# --- migrations and connection settings ---------------------------------------------------------------


def test_migrations_apply_once_and_reopen_is_idempotent(tmp_path: Path):
    path = tmp_path / DB_FILENAME
    with Database(path) as db:
        assert db.schema_version() == MIGRATIONS[-1].version
        first = db.read_sync(lambda d: d.execute("SELECT version, name, applied_at FROM migrations").fetchall())
        tables = db.read_sync(lambda d: set(d.table_names()))
        assert set(TABLES) <= tables
        indexes = db.read_sync(lambda d: {i.name for i in d["jobs"].indexes} | {i.name for i in d["tracks"].indexes})
        assert "jobs_by_state" in indexes
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        pragmas = db.write_sync(lambda d: {p: d.execute(f"PRAGMA {p}").fetchone()[0] for p in names})
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}
    for _ in range(2):
        with Database(path) as db:
            again = db.read_sync(lambda d: d.execute("SELECT version, name, applied_at FROM migrations").fetchall())
            assert again == first

    conn = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None), execute_plugins=False)
    try:
        assert apply_migrations(conn) == []
        top = MIGRATIONS[-1].version
        extra = Migration(top + 1, "add users.locale", lambda d: d.execute("ALTER TABLE users ADD COLUMN locale TEXT"))
        assert apply_migrations(conn, [*MIGRATIONS, extra]) == [top + 1]
        assert apply_migrations(conn, [*MIGRATIONS, extra]) == []
        assert "locale" in conn["users"].columns_dict
        broken = Migration(top + 2, "fails half way", lambda d: (d.execute("CREATE TABLE half (x)"), 1 / 0))
        with pytest.raises(ZeroDivisionError):
            apply_migrations(conn, [*MIGRATIONS, extra, broken])
        assert "half" not in conn.table_names()  # rolled back together with its record
        assert max(v for (v,) in conn.execute("SELECT version FROM migrations")) == top + 1
    finally:
        conn.close()
    with pytest.raises(SchemaTooNew):
        Database(path)  # version 2 is unknown to the shipped MIGRATIONS list


def test_write_rolls_back_on_error_and_rejects_lazy_results(env):
    db, _, _ = env

    def fail(d: sqlite_utils.Database) -> None:
        d["taste_events"].insert({"user_id": "u", "tag": "jazz", "weight": 1.0, "created": 1.0})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        db.write_sync(fail)
    assert db.read_sync(lambda d: d["taste_events"].count) == 0
    with pytest.raises(TypeError):
        db.read_sync(lambda d: d.query("SELECT 1"))
    with pytest.raises(sqlite3.OperationalError):  # reader connections are query_only
        db.read_sync(lambda d: d.execute("INSERT INTO users (id, created) VALUES ('x', 1)").rowcount)


@pytest.mark.asyncio
async def test_close_is_idempotent_and_drains_queued_writes(tmp_path: Path):
    db = Database(tmp_path / DB_FILENAME)
    store = SqliteJobStore(db)
    pending = [asyncio.ensure_future(store.add_job(make_job(prompt=str(i)))) for i in range(20)]
    await asyncio.sleep(0)  # let every task submit its write
    await db.aclose()
    db.close()
    assert len({j.id for j in await asyncio.gather(*pending)}) == 20
    with pytest.raises(DatabaseClosed):
        await store.get_job("x")
    with pytest.raises(DatabaseClosed):
        await store.add_job(make_job())
    with Database(tmp_path / DB_FILENAME) as db2:
        assert db2.read_sync(lambda d: d["jobs"].count) == 20


# --- job store ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_job_round_trip_all_fields(env):
    _, _, store = env
    job = make_job(
        kind=JobKind.CONTINUE,
        operation=Operation.REMIX,
        variations=3,
        seed=1234,
        sampling=SamplingParams(temperature=0.7, top_k=0, top_p=0.9, guidance=5.5),
        input_audio="audio/ab/abcdef.flac",
        parent_track_id="parent-track",
        guild_id="g1",
        channel_id="c1",
        delivery=DeliveryAddress("discord", {"interaction": "tok", "nonce": 42, "nested": {"ids": [1, 2]},
                                             "ephemeral": False, "expires_at": 1700000900.25}),
        spec=JobSpec(source_s=2.5, blended=("jazz",), chain=ChainPlan([(0.0, 30.0), (10.0, 20.0)], ["a.wav"])),
        idempotency_key="discord:interaction:1",
        state=JobState.RUNNING,
        delivery_state=DeliveryState.SENDING,
        attempts=2,
        error="previous attempt: CUDA OOM",
        created_at=1700000000.125,
        started_at=1700000010.5,
        finished_at=None,
    )
    assert await store.add_job(job) is job
    got = await store.get_job(job.id)
    assert got == job
    assert isinstance(got.kind, JobKind) and isinstance(got.sampling, SamplingParams)
    assert await store.get_job("missing") is None

    job.state, job.attempts, job.error, job.finished_at = JobState.FAILED, 3, "gave up", 1700000100.0
    job.prompt = "not persisted by update_job"
    await store.update_job(job)
    got = await store.get_job(job.id)
    assert (got.state, got.attempts, got.error, got.finished_at, got.prompt) == (
        JobState.FAILED, 3, "gave up", 1700000100.0, "lofi beat"
    )
    with pytest.raises(JobNotFound):
        await store.update_job(make_job())


@pytest.mark.asyncio
async def test_idempotency_key_returns_existing_job(env):
    db, _, store = env
    first = await store.add_job(make_job(prompt="first", idempotency_key="k1"))
    again = await store.add_job(make_job(prompt="second", idempotency_key="k1"))
    assert again.id == first.id and again.prompt == "first"
    racing = await asyncio.gather(*(store.add_job(make_job(prompt=f"r{i}", idempotency_key="k2")) for i in range(25)))
    assert len({j.id for j in racing}) == 1
    no_key = [await store.add_job(make_job()) for _ in range(2)]
    assert no_key[0].id != no_key[1].id
    assert db.read_sync(lambda d: d["jobs"].count) == 4


@pytest.mark.asyncio
async def test_unfinished_jobs_oldest_first(env):
    _, _, store = env
    jobs = {
        "late": make_job(created_at=300.0),
        "early": make_job(created_at=100.0, state=JobState.RUNNING),
        "tie_a": make_job(created_at=200.0),
        "tie_b": make_job(created_at=200.0),
        "done": make_job(created_at=50.0, state=JobState.DONE),
        "failed": make_job(created_at=60.0, state=JobState.FAILED),
        "cancelled": make_job(created_at=70.0, state=JobState.CANCELLED),
    }
    for job in jobs.values():
        await store.add_job(job)
    order = [j.id for j in await store.unfinished_jobs()]
    assert order == [jobs[k].id for k in ("early", "tie_a", "tie_b", "late")]


@pytest.mark.asyncio
async def test_complete_job_is_atomic(env):
    db, _, store = env
    job = await store.add_job(make_job(variations=2, state=JobState.RUNNING, started_at=10.0))

    clash = [make_track(job, 0), make_track(job, 0, id="other-id")]  # UNIQUE(job_id, variation)
    with pytest.raises(sqlite3.IntegrityError):
        await store.complete_job(job, clash)
    assert (await store.get_job(job.id)).state is JobState.RUNNING
    assert await store.tracks_for_job(job.id) == []
    assert job.state is JobState.RUNNING  # the in-memory job is only touched after the commit

    ghost = make_job()
    with pytest.raises(JobNotFound):
        await store.complete_job(ghost, [make_track(ghost, 0)])
    assert db.read_sync(lambda d: d["tracks"].count) == 0

    tracks = [make_track(job, 1), make_track(job, 0, operation=Operation.VARIATION, parent_track_id="p")]
    await store.complete_job(job, tracks)
    stored = await store.get_job(job.id)
    assert stored.state is JobState.DONE and stored.finished_at is not None and job.state is JobState.DONE
    assert await store.tracks_for_job(job.id) == sorted(tracks, key=lambda t: t.variation)
    await store.complete_job(job, tracks)  # repeating after a crash-and-resume is harmless
    assert len(await store.tracks_for_job(job.id)) == 2


@pytest.mark.asyncio
async def test_undelivered_jobs_and_delivery_states(env):
    _, _, store = env
    done = await store.add_job(make_job(created_at=1.0))
    await store.complete_job(done, [make_track(done, 0)])
    failed = await store.add_job(make_job(created_at=2.0, state=JobState.FAILED, error="x"))
    cancelled = await store.add_job(make_job(created_at=3.0))
    assert await store.cancel_job(cancelled.id) is True
    assert await store.cancel_job(cancelled.id) is False
    assert await store.cancel_job(done.id) is False
    queued = await store.add_job(make_job(created_at=4.0))

    assert [j.id for j in await store.undelivered_jobs()] == [done.id, failed.id, cancelled.id]
    await store.set_delivery_state(done.id, DeliveryState.SENDING)
    assert [j.id for j in await store.undelivered_jobs()] == [done.id, failed.id, cancelled.id]
    assert (await store.get_job(done.id)).delivery_state is DeliveryState.SENDING
    await store.set_delivery_state(done.id, DeliveryState.DELIVERED)
    await store.set_delivery_state(failed.id, DeliveryState.DELIVERED)
    assert [j.id for j in await store.undelivered_jobs()] == [cancelled.id]
    assert queued.id not in [j.id for j in await store.undelivered_jobs()]
    with pytest.raises(JobNotFound):
        await store.set_delivery_state("missing", DeliveryState.DELIVERED)


@pytest.mark.asyncio
async def test_votes_one_per_user_per_job_changeable_and_tallied(env):
    _, _, store = env
    job = await store.add_job(make_job(variations=3))
    a, b, c = (make_track(job, v) for v in range(3))
    await store.complete_job(job, [a, b, c])
    other = await store.add_job(make_job())
    await store.complete_job(other, [make_track(other, 0)])

    assert await store.vote_tally(job.id) == {a.id: 0, b.id: 0, c.id: 0}
    assert await store.record_vote(job.id, a.id, "alice") is True
    assert await store.record_vote(job.id, a.id, "alice") is False  # same vote again: no change
    assert await store.record_vote(job.id, b.id, "bob") is True
    assert await store.record_vote(job.id, a.id, "carol") is True
    assert await store.vote_tally(job.id) == {a.id: 2, b.id: 1, c.id: 0}
    assert await store.record_vote(job.id, c.id, "alice") is True  # alice changes her mind
    assert await store.vote_tally(job.id) == {a.id: 1, b.id: 1, c.id: 1}
    assert await store.record_vote(other.id, f"{other.id}v0", "alice") is True  # a vote per job, not global
    with pytest.raises(ValueError):
        await store.record_vote(job.id, f"{other.id}v0", "dave")  # track of another job
    with pytest.raises(ValueError):
        await store.record_vote(job.id, "nope", "dave")
    assert await store.vote_tally(job.id) == {a.id: 1, b.id: 1, c.id: 1}


@pytest.mark.asyncio
async def test_track_helpers_delete_and_user_queries(env):
    _, files, store = env
    job = await finished_job(store, files, "helpers")
    track = await store.get_track(f"{job.id}v0")
    assert track is not None and track.job_id == job.id and track.params == {"lufs": -14, "temperature": 1.0}
    paths = await store.delete_track(track.id)
    assert sorted(paths) == sorted([track.mp3, track.png, track.flac])
    assert await store.delete_track(track.id) == []
    assert await store.get_track(track.id) is None
    assert (await store.get_track(track.id, include_deleted=True)).id == track.id
    assert [t.variation for t in await store.tracks_for_job(job.id)] == [1]
    assert list(await store.vote_tally(job.id)) == [f"{job.id}v1"]

    q1 = await store.add_job(make_job(user_id="u2", created_at=1.0))
    q2 = await store.add_job(make_job(user_id="u2", created_at=2.0, state=JobState.RUNNING))
    await store.add_job(make_job(user_id="u3"))
    assert [j.id for j in await store.jobs_for_user("u2")] == [q1.id, q2.id]
    assert [j.id for j in await store.jobs_for_user("u2", [JobState.RUNNING])] == [q2.id]
    assert await store.jobs_for_user("u2", []) == []
    assert await store.count_pending() == 3
    assert await store.count_pending("u2") == 2
    assert await store.count_pending(job.user_id) == 0


@pytest.mark.asyncio
async def test_concurrent_async_writes_all_land_on_one_writer_thread(env):
    db, _, store = env
    writer_threads: set[int] = set()

    def insert(i: int):
        def fn(d: sqlite_utils.Database) -> int:
            writer_threads.add(threading.get_ident())
            d["taste_events"].insert({"user_id": f"u{i % 7}", "tag": f"t{i}", "weight": 1.0, "created": float(i)})
            return i

        return fn

    jobs = [store.add_job(make_job(prompt=f"p{i}", idempotency_key=f"key{i}")) for i in range(150)]
    events = [db.write(insert(i)) for i in range(150)]
    reads = [store.count_pending() for _ in range(30)]
    results = await asyncio.gather(*jobs, *events, *reads)
    assert len({j.id for j in results[:150]}) == 150
    assert results[150:300] == list(range(150))
    assert db.read_sync(lambda d: (d["jobs"].count, d["taste_events"].count)) == (150, 150)
    assert len(writer_threads) == 1 and threading.get_ident() not in writer_threads


# --- file store ---------------------------------------------------------------------------------------


def test_file_store_paths_and_atomic_writes(tmp_path: Path):
    files = FileStore(tmp_path / "data")
    rel = files.path_for("abcdef123", "mp3")
    assert rel == "audio/ab/abcdef123.mp3"
    assert files.absolute(rel) == (tmp_path / "data" / "audio" / "ab" / "abcdef123.mp3").resolve()
    for bad in ("../etc/passwd", "/etc/passwd", "audio/../../x", ""):
        with pytest.raises(ValueError):
            files.absolute(bad)
    with pytest.raises(ValueError):
        files.path_for("../x", "mp3")

    files.write_bytes(rel, b"first")
    files.write_bytes(rel, b"second")
    assert files.absolute(rel).read_bytes() == b"second"

    staged = files.tmp_dir() / "render.flac"
    staged.write_bytes(b"flac-bytes")
    moved = files.import_file(staged, files.path_for("abcdef123", "flac"), move=True)
    assert moved.read_bytes() == b"flac-bytes" and not staged.exists()
    src = tmp_path / "outside.png"
    src.write_bytes(b"png")
    files.import_file(src, files.path_for("abcdef123", "png"))
    assert src.exists() and files.exists("audio/ab/abcdef123.png")
    assert not list((tmp_path / "data").rglob(f"{TEMP_PREFIX}*"))

    assert files.remove(rel) is True and files.remove(rel) is False
    leftover = files.absolute("audio/ab") / f"{TEMP_PREFIX}crashed.part"
    leftover.write_bytes(b"half")
    (files.tmp_dir() / "stale-render").mkdir()
    assert files.sweep_temp() == 2
    assert files.exists("audio/ab/abcdef123.flac")


def test_file_store_reader_never_sees_partial_content(tmp_path: Path):
    files = FileStore(tmp_path / "data")
    rel = files.path_for("concurrent", "flac")
    size = 1 << 20
    versions = [bytes([b]) * size for b in (0x41, 0x42, 0x43)]
    files.write_bytes(rel, versions[0])
    done = threading.Event()
    errors: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set() or reads < 10:
            data = files.absolute(rel).read_bytes()
            reads += 1
            if data not in versions:
                errors.append(f"partial read: {len(data)} bytes, first {data[:1]!r} last {data[-1:]!r}")
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            files.write_bytes(rel, versions[i % 3])
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert reads >= 10
    assert [p.name for p in files.absolute(rel).parent.iterdir()] == ["concurrent.flac"]


# --- durability under SIGKILL -------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, hashlib, sys
    from generation.jobs import Job, TrackRecord
    from storage import Database, FileStore, SqliteJobStore

    def payload(tag, size):
        block = hashlib.sha256(tag.encode()).digest()
        return (block * (size // len(block) + 1))[:size]

    async def main(data):
        db = Database(data + "/bandmate.db")
        files = FileStore(data)
        store = SqliteJobStore(db)
        i = 0
        while True:
            job = await store.add_job(Job(user_id="kill", prompt=f"p{i}", duration_s=1.0, model="m",
                                          idempotency_key=f"kill-{i}"))
            rel = files.path_for(job.id, "flac")
            await asyncio.to_thread(files.write_bytes, rel, payload(rel, 20000 + 37 * i))
            await store.complete_job(job, [TrackRecord(id=job.id, job_id=job.id, variation=0, prompt=job.prompt,
                seed=i, model="m", duration_s=1.0, params={"i": i}, mp3=rel, png=rel, flac=rel)])
            print(job.id, i, flush=True)
            i += 1

    asyncio.run(main(sys.argv[1]))
    """
)


def test_sigkill_loses_no_committed_row(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    watchdog = threading.Timer(60, proc.kill)  # only fires if the child hangs; the test never waits on it
    watchdog.start()
    reported: dict[str, int] = {}
    try:
        while len(reported) < 150:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child exited early (rc={proc.wait()}): {proc.stderr.read()}")
            job_id, i = line.split()
            reported[job_id] = int(i)
        proc.send_signal(signal.SIGKILL)  # mid-way through the next job's writes
        assert proc.wait() == -signal.SIGKILL
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    assert (data / "bandmate.db-wal").exists()  # nothing was checkpointed or cleaned up by a close()
    with Database(data / DB_FILENAME) as db:
        assert db.integrity_check() == "ok"
        rows = db.read_sync(lambda d: {r["id"]: r for r in d.query("SELECT id, state FROM jobs")})
        tracks = db.read_sync(lambda d: {r["job_id"]: r["flac"] for r in d.query("SELECT job_id, flac FROM tracks")})
    missing = [j for j in reported if j not in rows or rows[j]["state"] != "done" or j not in tracks]
    assert missing == []
    files = FileStore(data)
    for job_id, rel in tracks.items():  # every row, reported or not, points at a complete file
        i = reported.get(job_id, max(reported.values()) + 1)  # unreported: the job after the last report
        assert files.absolute(rel).read_bytes() == payload(rel, 20000 + 37 * i)
    files.sweep_temp()
    assert not list(data.rglob(f"{TEMP_PREFIX}*"))


# --- backup and restore -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_backup_restore_round_trip(tmp_path: Path, env):
    db, files, store = env
    data = files.root
    jobs = [await finished_job(store, files, f"song{i}") for i in range(8)]
    await store.record_vote(jobs[0].id, f"{jobs[0].id}v1", "alice")
    await store.delete_track(f"{jobs[1].id}v0")  # deleted track: row kept, files not backed up
    await db.write(lambda d: d["guild_settings"].insert({"guild_id": "g", "settings": '{"max_len": 30}'}))
    before, before_files = dump(db), live_files(db)

    dest = tmp_path / "backup"
    result = await asyncio.to_thread(backup, db.path, data, dest)
    assert result.missing == [] and result.copied == len(before_files) == 8 * 2 * 3 - 3
    assert sorted(f["path"] for f in result.files) == before_files
    assert not (dest / f"{jobs[1].id}v0").exists()
    again = await asyncio.to_thread(backup, db.path, data, dest)
    assert again.copied == 0  # track files are immutable: a second backup only adds new ones

    # fresh machine
    fresh = tmp_path / "fresh"
    restore(dest, fresh)
    with Database(fresh / DB_FILENAME) as restored:
        assert restored.integrity_check() == "ok"
        assert dump(restored) == before
    fresh_files = FileStore(fresh)
    for rel in before_files:
        assert fresh_files.absolute(rel).read_bytes() == files.absolute(rel).read_bytes()

    # over the original data dir, after later writes, with a WAL left behind by a crashed bot
    await finished_job(store, files, "after-backup")
    stale_wal = (data / DB_FILENAME).with_name(DB_FILENAME + "-wal").read_bytes()
    db.close()
    (data / (DB_FILENAME + "-wal")).write_bytes(stale_wal)
    restore(dest, data)
    with Database(data / DB_FILENAME) as restored:
        assert restored.integrity_check() == "ok"
        assert dump(restored) == before

    (dest / "manifest.json").unlink()
    with pytest.raises(BackupError):
        restore(dest, tmp_path / "elsewhere")


@pytest.mark.asyncio
async def test_backup_keeps_reference_uploads_and_restores_them(tmp_path: Path, env):
    """A queued song's "sound like this" reference is part of the job: a restore without it would fail it."""
    db, files, store = env
    rel = files.path_for("jobref", "flac")
    files.write_bytes(rel, payload("reference"))
    job = make_job(prompt="sing it", idempotency_key="ref")
    job.spec.reference_audio = rel
    await store.add_job(job)
    result = await asyncio.to_thread(backup, db.path, files.root, tmp_path / "backup")
    assert rel in [f["path"] for f in result.files]
    restore(tmp_path / "backup", tmp_path / "fresh")
    assert FileStore(tmp_path / "fresh").absolute(rel).read_bytes() == payload("reference")


@pytest.mark.asyncio
async def test_backup_while_writer_active(tmp_path: Path, env):
    db, files, store = env
    for i in range(10):
        await finished_job(store, files, f"seed{i}")
    committed = dump(db)

    # 1. A write transaction is open (uncommitted rows, a file already on disk) for the whole backup.
    inside, release = threading.Event(), threading.Event()

    def held(d: sqlite_utils.Database) -> None:
        d.execute("UPDATE jobs SET error = 'uncommitted'")
        d["taste_events"].insert({"user_id": "u", "tag": "uncommitted", "weight": 1.0, "created": 0.0})
        inside.set()
        if not release.wait(30):
            raise TimeoutError("backup did not finish while the write was open")

    held_write = asyncio.ensure_future(db.write(held))
    assert await asyncio.to_thread(inside.wait, 30)
    try:
        await asyncio.to_thread(backup, db.path, files.root, tmp_path / "b1")  # WAL: not blocked by the writer
    finally:
        release.set()
    await held_write
    restore(tmp_path / "b1", tmp_path / "r1")
    with Database(tmp_path / "r1" / DB_FILENAME) as restored:
        assert restored.integrity_check() == "ok"
        assert dump(restored) == committed

    # 2. Commits (files first, then rows) keep landing while the backup copies database and files.
    stop = asyncio.Event()
    progress = asyncio.Event()
    written: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            written.append((await finished_job(store, files, f"live{i}")).id)
            progress.set()
            i += 1

    task = asyncio.ensure_future(writer())
    await progress.wait()
    already = list(written)
    try:
        result = await asyncio.to_thread(backup, db.path, files.root, tmp_path / "b2")
    finally:
        stop.set()
        await task
    assert result.missing == []
    restore(tmp_path / "b2", tmp_path / "r2")
    with Database(tmp_path / "r2" / DB_FILENAME) as restored:
        assert restored.integrity_check() == "ok"
        ids = restored.read_sync(lambda d: {r[0] for r in d.execute("SELECT id FROM jobs").fetchall()})
        assert set(already) <= ids and ids <= {r[0] for r in dump(db)["jobs"]}
        restored_files = live_files(restored)
    assert restored_files
    for rel in restored_files:
        assert FileStore(tmp_path / "r2").absolute(rel).read_bytes() == files.absolute(rel).read_bytes()


@pytest.mark.asyncio
async def test_migration_4_moves_the_interaction_expiry_into_the_delivery_data(tmp_path: Path):
    """A database written before the expiry left the engine's Job: the rows keep their expiry, as delivery data."""
    path = tmp_path / DB_FILENAME
    conn = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None), execute_plugins=False)
    apply_migrations(conn, MIGRATIONS[:3])
    columns = ("id, user_id, kind, operation, model, prompt, duration_s, variations, seed, sampling, delivery, "
               "interaction_expires_at, state, delivery_state, created_at")
    rows = [("old", json.dumps({"sink": "discord", "channel_id": "c1", "interaction_token": "t"}), 1700000900.5),
            ("cli", json.dumps({"sink": "cli"}), None)]
    for job_id, delivery, expires in rows:
        conn.execute(f"INSERT INTO jobs ({columns}) VALUES (?, 'u1', 'text', 'compose', 'm', 'jazz', 2.0, 1, 7, '{{}}', "
                     "?, ?, 'done', 'sending', 1700000000.0)", [job_id, delivery, expires])
    conn.conn.close()
    with Database(path) as db:
        assert db.schema_version() == 4
        job = await SqliteJobStore(db).get_job("old")
        assert job.delivery.sink == "discord"
        assert dict(job.delivery.fields) == {"channel_id": "c1", "interaction_token": "t", "expires_at": 1700000900.5}
        assert "interaction_expires_at" not in db.read_sync(lambda d: d["jobs"].columns_dict)
        assert "expires_at" not in (await SqliteJobStore(db).get_job("cli")).delivery.fields

"""Worker-rendered tracks are signed by the bot on receipt: the private key never goes to a worker, and the parent's
signed file (in the bot's file store) becomes the child's ingredient."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    from test_redis import in_process_worker, job, make_bot, worker_settings
except ImportError:  # tests/ as a package
    from tests.test_redis import in_process_worker, job, make_bot, worker_settings

from generation.credentials import ContentCredentials
from generation.jobs import Operation
from generation.track_signing import TrackSigner
from generation.verification import CredentialStatus

USER_ID = "ana"
TINY_AUDIOSEAL = Path(__file__).resolve().parent / "fixtures" / "tiny-audioseal"


@pytest.mark.asyncio
async def test_worker_results_are_signed_on_receipt(tmp_path, redis_server, tiny_model_path):
    bot = make_bot(tmp_path, redis_server.url)
    credentials = ContentCredentials(tmp_path / "bot" / "c2pa")
    bot.executor.signer = TrackSigner(credentials, bot.files)
    await bot.scheduler.add_sink("test", bot.sink)
    await bot.scheduler.start()
    try:
        async with in_process_worker(worker_settings(redis_server.url, tiny_model_path)):
            first = job(USER_ID, 1.0, tiny_model_path, seed=1)
            await bot.scheduler.submit(first)
            await bot.wait_delivered(first)
            (parent,) = await bot.store.tracks_for_job(first.id)
            child = job(USER_ID, 1.0, tiny_model_path, seed=2, operation=Operation.VARIATION,
                        parent_track_id=parent.id)
            await bot.scheduler.submit(child)
            await bot.wait_delivered(child)
            (track,) = await bot.store.tracks_for_job(child.id)
    finally:
        await bot.scheduler.stop(grace_s=5.0)
        bot.db.close()
    for record, parents in ((parent, []), (track, [parent.id])):
        for rel in (record.mp3, record.flac):
            path = bot.files.absolute(rel)
            report = credentials.verify(path)
            assert report.status is CredentialStatus.TRUSTED, (rel, report.problems)
            assert report.parents == parents and report.track_id == record.id
    assert not [p for p in tmp_path.rglob("*.key") if "c2pa" not in p.parts]  # no key outside the bot's chain


def test_the_runner_embeds_the_message_each_job_carries(tmp_path, models, tiny_model_path):
    """On a worker the watermark's message comes with the job (the bot's), so a worker can mark for any server."""
    import numpy as np

    from generation.jobs import Job
    from generation.runner import JobRunner
    from generation.spec import JobSpec
    from generation.watermark import load_watermarker
    from storage.files import FileStore

    marker = load_watermarker(TINY_AUDIOSEAL, server_name="worker")
    files = FileStore(tmp_path)
    plain_runner, marking_runner = JobRunner(models, files), JobRunner(models, files, watermark=marker)

    def make(message):
        return Job(user_id="u", prompt="pads", duration_s=0.5, model=tiny_model_path, seed=7,
                   spec=JobSpec(watermark=message))

    unmarked = marking_runner.generate([make(None)])
    plain = plain_runner.generate([make(None)])
    marked_job = make(0xBEEF)
    marked = marking_runner.generate([marked_job])
    base = next(iter(plain.values()))[0].samples
    assert np.array_equal(next(iter(unmarked.values()))[0].samples, base)  # no message: untouched
    delta = next(iter(marked.values()))[0].samples - base
    expected = marker.embed(base, 32000, 0xBEEF) - base
    assert np.abs(delta).max() > 0 and np.allclose(delta, expected, atol=1e-4)
    assert JobSpec.from_dict(marked_job.spec.to_dict()).watermark == 0xBEEF  # travels over the wire

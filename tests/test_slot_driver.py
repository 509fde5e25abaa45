"""The shared drive loop (generation/slot_driver.py) on the tiny fixture in fp32: a decoder job gets the job's
watermark exactly as the `generate` path embeds it (the tiny AudioSeal fixture), and nothing when it has none."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from generation.jobs import DeliveryAddress, Job
from generation.runner import JobRunner
from generation.slot_driver import DecoderOptions, SlotDriver
from generation.watermark import load_watermarker, server_message
from storage.files import FileStore

TINY_AUDIOSEAL = Path(__file__).resolve().parent / "fixtures" / "tiny-audioseal"


@pytest.mark.asyncio
async def test_a_decoder_job_carries_the_watermark_the_generate_path_embeds(tmp_path, models, tiny_model_path):
    runner = JobRunner(models, FileStore(tmp_path), watermark=load_watermarker(TINY_AUDIOSEAL, server_name="test"))
    pool = ThreadPoolExecutor(max_workers=1)
    driver = SlotDriver(runner, DecoderOptions(slots=2), pool)
    try:
        def piece(mark: int | None) -> Job:
            job = Job(user_id="u", prompt="jazz drums", duration_s=0.5, model=tiny_model_path, seed=3,
                      delivery=DeliveryAddress("test"))
            job.spec.watermark = mark
            return job

        marked_job = piece(server_message("test"))
        marked, unmarked = await asyncio.gather(driver.decode(marked_job, lambda p: None, lambda: False),
                                                driver.decode(piece(None), lambda p: None, lambda: False))
        generated = await asyncio.get_running_loop().run_in_executor(pool, runner.generate, [marked_job])
        assert driver.steps_run > 0  # both ran in the decoder's slots
        assert np.array_equal(marked[0].samples, generated[marked_job.id][0].samples)
        assert np.abs(marked[0].samples - unmarked[0].samples).max() > 0
    finally:
        pool.shutdown(wait=True)

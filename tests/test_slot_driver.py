"""The shared drive loop (generation/slot_driver.py) on the tiny fixture in fp32: a decoder job gets the job's
watermark exactly as the `generate` path embeds it (the tiny AudioSeal fixture), and nothing when it has none; a
job for another model has that model loaded between two steps and joins the running job, rather than waiting for
it to end."""

from __future__ import annotations

import asyncio
import shutil
import time
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


@pytest.mark.asyncio
async def test_a_job_for_another_model_joins_the_running_one_instead_of_waiting_for_it(tmp_path, models,
                                                                                        tiny_model_path):
    other_model = tmp_path / "another-tiny-musicgen"  # another model id, as a second hub id or folder would be
    shutil.copytree(tiny_model_path, other_model)
    runner = JobRunner(models, FileStore(tmp_path))
    pool = ThreadPoolExecutor(max_workers=1)
    driver = SlotDriver(runner, DecoderOptions(slots=2), pool)
    drawn: list[dict[str, int]] = []

    def piece(model: str, seconds: float, seed: int) -> Job:
        return Job(user_id="u", prompt="jazz drums", duration_s=seconds, model=model, seed=seed,
                   delivery=DeliveryAddress("test"))

    first, second = piece(tiny_model_path, 2.0, 1), piece(str(other_model), 0.5, 2)
    def stepped(step: int) -> None:
        """Model thread, after each step: ordered by steps, not by time."""
        drawn.append(driver.drawn())
        deadline = time.monotonic() + 60

        def wait(until) -> None:
            while not until() and time.monotonic() < deadline:
                time.sleep(0.005)

        if step == 3:  # the first job has drawn 3 tokens: until the second asks for its model (built before step 4)
            wait(lambda: bool(driver._calls))
        elif step == 4:  # its model is loaded and its decoder built: until the second job is in the slots
            wait(lambda: second.id in driver.active_job_ids())

    driver.on_step = stepped
    try:
        running = asyncio.create_task(driver.decode(first, lambda p: None, lambda: False))
        deadline = time.monotonic() + 60
        while len(drawn) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert drawn[2] == {first.id: 3}
        assert not driver.known(str(other_model))
        made = await driver.decode(second, lambda p: None, lambda: False)
        assert not running.done()  # delivered while the first still runs: its model was loaded between steps
        assert any(first.id in step and second.id in step for step in drawn)  # the two decoders stepped together
        alone = await asyncio.get_running_loop().run_in_executor(pool, runner.generate, [first, second])
        assert np.array_equal(made[0].samples, alone[second.id][0].samples)
        assert np.array_equal((await running)[0].samples, alone[first.id][0].samples)
    finally:
        pool.shutdown(wait=True)

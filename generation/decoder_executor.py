"""The model in this process behind the engine's own decoder: jobs join running ones at the next step.

The scheduler dispatches single jobs (`batch_limit = 1`) in its fair round-robin order while `has_capacity()`
says a slot is free. A MusicGen text, continuation (`/extend` windows too) or song job, or a MusicGen-melody
remix, goes to the shared drive loop (`generation/slot_driver.py`): its requests join the running jobs at the
next step, in the single model thread (a continuation's, song's or remix's own logic runs in a job thread and
submits each model call there), and its future is resolved when it has its audio; rendering runs in the render
threads, as with `LocalExecutor`.

Everything else (Stable Audio, ACE-Step, audio-to-audio variations, a job with more variations than slots) runs as
before through `JobRunner.generate` on the plain backend, in the same model thread, once the drive loop has gone
idle: while such a job waits or runs the executor reports no capacity, so the running jobs drain and nothing new
joins.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from generation.jobs import Job
from generation.models import ModelInfo, model_info
from generation.runner import JobRunner
from generation.slot_driver import DecoderOptions, SlotDriver, slots_for
from generation.types import Audio, Progress

log = logging.getLogger(__name__)

__all__ = ["DecoderExecutor", "DecoderOptions", "slots_for"]


class DecoderExecutor:
    """The scheduler's Executor over `MusicGenDecoder` slots (continuous batching in one model thread)."""

    batch_limit = 1

    def __init__(self, runner: JobRunner, options: DecoderOptions = DecoderOptions(), *, render_threads: int = 2,
                 model_thread: ThreadPoolExecutor | None = None,
                 info_for: Callable[[str], ModelInfo] = model_info) -> None:
        """model_thread: a one-worker pool to share (its owner shuts it down). All torch work of a process belongs
        on ONE thread (see `LocalExecutor`): the decoders are built and stepped there, and the other jobs run there.
        """
        self.runner = runner
        self.options = options
        self._owns_model_thread = model_thread is None
        self._model = model_thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bandmate-model")
        self._render = ThreadPoolExecutor(max_workers=render_threads, thread_name_prefix="bandmate-render")
        self.driver = SlotDriver(runner, options, self._model, info_for=info_for)
        self._reserved_rows = 0  # rows of decoder jobs taken and not yet finished (event loop only)
        self._blocking = 0  # jobs running (or waiting to run) through runner.generate
        self.on_capacity: Callable[[], None] = lambda: None

    # -- what the drive loop shows ------------------------------------------------------------------------------

    @property
    def steps_run(self) -> int:
        """Drive-loop steps, all decoders together."""
        return self.driver.steps_run

    @property
    def on_step(self) -> Callable[[int], None] | None:
        """Called in the model thread after every drive-loop step with `steps_run` (benchmarks, tests)."""
        return self.driver.on_step

    @on_step.setter
    def on_step(self, hook: Callable[[int], None] | None) -> None:
        self.driver.on_step = hook

    # -- the Executor protocol ----------------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """S: the options' slots, or fewer where a GPU's memory sized a decoder smaller."""
        return self.driver.slots

    def has_capacity(self) -> bool:
        return self._blocking == 0 and self._reserved_rows < self.slots

    def active_job_ids(self) -> list[str]:
        """Jobs submitted to a decoder and not yet finished (queued in it or running)."""
        return self.driver.active_job_ids()

    async def in_model_thread(self, fn, *args):
        """Run fn in the model thread (loading a model there keeps all torch work on one thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._model, fn, *args)

    async def execute(self, jobs: list[Job], progress: Callable[[Progress], None], should_stop: Callable[[], bool]):
        # the scheduler honours batch_limit; more is a caller's mistake, run as a plain batch
        if len(jobs) != 1 or not self.driver.decodable(jobs[0]):
            return await self._execute_plain(jobs, progress, should_stop)
        job = jobs[0]
        self._reserved_rows += job.rows  # before any await: the scheduler asks for capacity right after
        reserved = True
        try:
            if not await self.driver.ensure_for(job):  # a loaded backend is not one the decoder runs
                self._reserved_rows -= job.rows
                reserved = False
                return await self._execute_plain(jobs, progress, should_stop)
            audios = await self.driver.decode(job, progress, should_stop)
        finally:
            if reserved:
                self._reserved_rows -= job.rows
                self.on_capacity()
        loop = asyncio.get_running_loop()
        tracks = await loop.run_in_executor(self._render, self.runner.render, job, audios)
        return {job.id: tracks}

    async def close(self) -> None:
        self.driver.cancel_all()
        if self._owns_model_thread:
            self._model.shutdown(wait=True, cancel_futures=True)
        self._render.shutdown(wait=True, cancel_futures=True)

    def prepare(self, model_id: str):
        """Load the model and build its decoder now (call in the model thread: `in_model_thread(prepare, id)`),
        so the first job does not pay for it; returns the loaded backend."""
        return self.driver.prepare(model_id)

    # -- the plain path -----------------------------------------------------------------------------------------

    async def _execute_plain(self, jobs: list[Job], progress, should_stop):
        """runner.generate in the model thread, after the drive loop (queued behind it in the one-worker pool)."""
        loop = asyncio.get_running_loop()
        self._blocking += 1
        try:
            audios: dict[str, list[Audio]] = await loop.run_in_executor(
                self._model, lambda: self.runner.generate(jobs, progress=progress, should_stop=should_stop))
        finally:
            self._blocking -= 1
            self.on_capacity()
        renders = [loop.run_in_executor(self._render, self.runner.render, job, audios[job.id]) for job in jobs]
        results = await asyncio.gather(*renders)
        return {job.id: tracks for job, tracks in zip(jobs, results)}

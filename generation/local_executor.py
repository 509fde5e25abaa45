"""The model in this process: one model thread for all torch work, render threads beside it."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from generation.runner import JobRunner
from generation.types import Audio


class LocalExecutor:
    """The model in one worker thread; rendering in other threads so the next batch starts at once."""

    batch_limit = None

    def __init__(self, runner: JobRunner, *, render_threads: int = 2,
                 model_thread: ThreadPoolExecutor | None = None) -> None:
        """model_thread: a one-worker pool to share (its owner shuts it down), for callers that run other torch work.

        All torch work of a process belongs on ONE thread. Each thread that runs torch ops gets its own OpenMP team;
        once a process has more OpenMP threads than cores, libgomp throttles its spin-wait and every parallel region
        pays a futex wake-up: on 2 cores a 5 s clip took 4.4 s on a second thread against 2.9 s on the first.
        """
        self.runner = runner
        self._owns_model_thread = model_thread is None
        self._model = model_thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bandmate-model")
        self._render = ThreadPoolExecutor(max_workers=render_threads, thread_name_prefix="bandmate-render")
        self._generating = False
        self.on_capacity: Callable[[], None] = lambda: None

    def has_capacity(self) -> bool:
        return not self._generating

    async def in_model_thread(self, fn, *args):
        """Run fn in the model thread (loading a model there keeps all torch work on one thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._model, fn, *args)

    async def execute(self, jobs, progress, should_stop):
        loop = asyncio.get_running_loop()
        self._generating = True
        try:
            audios: dict[str, list[Audio]] = await loop.run_in_executor(
                self._model, lambda: self.runner.generate(jobs, progress=progress, should_stop=should_stop)
            )
        finally:
            self._generating = False
            self.on_capacity()
        renders = [loop.run_in_executor(self._render, self.runner.render, job, audios[job.id]) for job in jobs]
        results = await asyncio.gather(*renders)
        return {job.id: tracks for job, tracks in zip(jobs, results)}

    async def close(self) -> None:
        if self._owns_model_thread:
            self._model.shutdown(wait=True, cancel_futures=True)
        self._render.shutdown(wait=True, cancel_futures=True)

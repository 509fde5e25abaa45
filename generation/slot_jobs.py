"""Continuations, `/extend` windows, songs and remixes in the decoder's shared slots, beside the text jobs.

Their job logic (generation/continuation.py, generation/song.py, the runner's remix) calls a backend's
`generate()` once or more, with numpy work in between: windows, crossfades, a chorus that follows the first one's
melody. Here that logic runs in a job thread of its own, handed `SlotBackend`s: each `generate()` submits its
requests into a decoder's slots and waits while the one drive loop in the model thread steps them with everything
else. So a continuation's prompt is prefilled and its tokens drawn beside the running jobs, and so is each window
and each section; the torch work stays on the model thread. The audio is the same as the plain path's: the
decoder gives `generate`'s codes for every request (tests/test_slot_jobs.py).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from generation.backend import GenerationCancelled, ModelLoadError
from generation.jobs import Job, JobKind
from generation.models import Family
from generation.spec import ChorusMode
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback

# What each kind of job runs on, when it runs in the slots; the other kinds (Stable Audio's, ACE-Step's) do not.
DECODER_KINDS: dict[JobKind, Family] = {
    JobKind.TEXT: Family.MUSICGEN, JobKind.CONTINUE: Family.MUSICGEN, JobKind.SONG: Family.MUSICGEN,
    JobKind.REMIX: Family.MUSICGEN_MELODY,
}


def models_of(job: Job) -> dict[str, Family]:
    """Each model the job's run calls, with the family it has to be for the job to run in the slots."""
    models = {job.model: DECODER_KINDS[job.kind]}
    if job.kind is JobKind.SONG and job.spec.chorus is ChorusMode.MELODY and job.spec.melody_model:
        models.setdefault(job.spec.melody_model, Family.MUSICGEN_MELODY)
    return models


class SlotBackend:
    """A decoder as the Backend that job logic calls, in a job thread: `generate()` runs in the shared slots.
    Everything else (sample_rate, max_duration_s, supports_continuation, family, ...) is the decoder's."""

    def __init__(self, run_in_slots: Callable[..., list[list[Audio]]], decoder, job: Job) -> None:
        self._run_in_slots = run_in_slots
        self._decoder = decoder  # generation.decoder.DecoderBackend
        self._job = job

    def __getattr__(self, name: str):
        return getattr(self._decoder, name)

    def generate(self, requests: list[GenerationRequest], *, progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[list[Audio]]:
        return self._run_in_slots(self._job, self._decoder, requests, progress, should_stop or (lambda: False))


class JobThreads:
    """SlotDriver's half for jobs whose logic runs in a job thread (generation/slot_driver.py has the drive loop:
    `_watch`, `_decoder`, `_closed`, `_job_threads`)."""

    async def _run_job(self, job: Job, progress: Callable[[Progress], None],
                       should_stop: Callable[[], bool]) -> list[Audio]:
        """A continuation, song or remix: its job logic in a job thread, calling generate() in the slots."""
        backends = {m: SlotBackend(self.run_in_slots, await self._decoder(m), job) for m in models_of(job)}

        def backend_for(model_id: str):
            if model_id not in backends:
                raise ModelLoadError(f"{model_id} is not loaded for this job")
            return backends[model_id]

        stop = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            made = await loop.run_in_executor(self._job_threads, lambda: self.runner.made(
                [job], progress=progress, should_stop=lambda: stop.is_set() or should_stop(), backend_for=backend_for))
        except asyncio.CancelledError:  # the caller gave up (shutting down): its requests leave at the next step
            stop.set()
            if self._closed and not asyncio.current_task().cancelling():  # the job pool closed under it
                raise GenerationCancelled("closing down") from None
            raise
        return await self._in_model_thread(lambda: self.runner.finished(job, made[job.id]))

    def run_in_slots(self, job: Job, decoder, requests: list[GenerationRequest], progress: ProgressCallback | None,
                     should_stop: Callable[[], bool]) -> list[list[Audio]]:
        """Blocking, in a job thread: the requests' audio, made in the decoder's slots beside every other job
        (as `DecoderBackend.generate` makes it, alone)."""
        from generation.decoder.backend import batch_progress
        from generation.decoder.jobs import DecodeState
        from generation.slot_driver import _Active  # the drive loop's entry (that module imports this one)

        if self._closed:
            raise GenerationCancelled("closing down")
        if decoder.dead:
            raise RuntimeError("the decoder was reset after a failed step; the job is retried")
        for request in requests:
            decoder.decoder.check(request)
        report = batch_progress(requests, progress)
        handles = [decoder.submit(r, progress=report) for r in requests]
        errors: list[BaseException] = []
        left, done, guard = [len(handles)], threading.Event(), threading.Lock()

        def settle(error: BaseException | None) -> None:
            with guard:
                if error is not None:
                    errors.append(error)
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        self._watch([_Active(job, handle, should_stop, decoder, settle) for handle in handles])
        while not done.wait(1.0):
            if self._closed:
                for handle in handles:
                    handle.cancel()
        if errors:
            raise errors[0]
        if all(h.state is DecodeState.CANCELLED for h in handles):
            raise GenerationCancelled("the job was cancelled")
        return [h.result() for h in handles]


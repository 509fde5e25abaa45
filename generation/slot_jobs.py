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

from typing import Callable

from generation.jobs import Job, JobKind
from generation.models import Family
from generation.spec import ChorusMode
from generation.types import Audio, GenerationRequest, ProgressCallback

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

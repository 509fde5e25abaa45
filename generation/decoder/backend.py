"""The decoder behind the `Backend` shape the scheduler already calls, plus the continuous-batching entry points.

`generate(requests)` runs its requests through the decoder and returns when they are done; unlike the
`generate`-based backend, any mix of sampling parameters, durations, text and continuation may share it. For
continuous batching the owner submits jobs as they arrive (`submit`) and keeps calling `step()` from one model
thread; each job's handle reports progress, can be cancelled, and holds its audio when done.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from generation.backend import GenerationCancelled
from generation.decoder.engine import MusicGenDecoder
from generation.decoder.jobs import DecodeHandle, DecodeState
from generation.out_of_memory import as_out_of_memory
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback, tokens_for


def batch_progress(requests: list[GenerationRequest], progress: ProgressCallback | None) -> ProgressCallback:
    """One progress for requests that run side by side: the furthest step any has drawn, out of the longest's
    steps (as one `generate` call over all of them reports)."""
    started = time.monotonic()
    total = max(tokens_for(r.duration_s) for r in requests)
    reported = [0]

    def report(p: Progress) -> None:
        if progress is not None and p.step > reported[0]:
            reported[0] = p.step
            progress(Progress(p.step, total, time.monotonic() - started))

    return report


class DecoderBackend:
    """A loaded MusicGen or MusicGen-melody run by `MusicGenDecoder`, shaped like `generation.backend.Backend`."""

    def __init__(self, decoder: MusicGenDecoder) -> None:
        self.decoder = decoder
        source = decoder.backend
        self.model_id = source.model_id
        self.family = source.family  # "musicgen" or "musicgen-melody"
        self.supports_continuation = source.supports_continuation
        self.license = source.license
        self.sample_rate = source.sample_rate
        self.max_duration_s = source.max_duration_s
        self.device = source.device
        self.dtype = source.dtype
        self._step_lock = threading.Lock()
        self.dead = False  # set by the drive loop after a failed step: its state is unknown, nothing joins it

    @classmethod
    def load(cls, model_id: str, *, device: str = "auto", dtype: str = "auto", **options) -> "DecoderBackend":
        """options: MusicGenDecoder's (slots, max_positions, mode, prefill_chunk, cuda_graphs...)."""
        return cls(MusicGenDecoder.load(model_id, device=device, dtype=dtype, **options))

    @classmethod
    def wrap(cls, backend, **options) -> "DecoderBackend":
        """A decoder over an already loaded MusicGenBackend or MelodyBackend (e.g. from the ModelRegistry)."""
        return cls(MusicGenDecoder(backend, **options))

    # -- continuous batching ----------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, progress: ProgressCallback | None = None) -> DecodeHandle:
        return self.decoder.submit(request, progress=progress)

    def free_slots(self) -> int:
        return self.decoder.free_slots()

    def step(self) -> None:
        with self._step_lock:
            with as_out_of_memory():
                self.decoder.step()

    def run_until_idle(self, should_stop: Callable[[], bool] | None = None) -> None:
        while not self.decoder.idle:
            if should_stop is not None and should_stop():
                for handle in self.decoder.running() + self.decoder.queued():
                    handle.cancel()
            self.step()

    # -- the Backend protocol ---------------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest], *, progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[list[Audio]]:
        """Run the requests (one Audio per variation, seeds seed..seed+n-1) and return when all are done."""
        if not requests:
            return []
        for r in requests:
            self.decoder.check(r)
        report = batch_progress(requests, progress)
        handles = [self.submit(r, progress=report) for r in requests]
        while not all(h.state.finished for h in handles):
            if should_stop is not None and should_stop():
                for h in handles:
                    h.cancel()
            self.step()
        if all(h.state is DecodeState.CANCELLED for h in handles):
            raise GenerationCancelled("all jobs in this batch were cancelled")
        return [h.result() for h in handles]

"""The model in this process behind the engine's own decoder: text jobs join running ones at the next step.

The scheduler dispatches single jobs (`batch_limit = 1`) in its fair round-robin order while `has_capacity()`
says a slot is free. A MusicGen text job is submitted to that model's `MusicGenDecoder`; ONE drive loop in the
single model thread steps every decoder while any job is active, so a job that arrives mid-run draws its first
token at the next step instead of waiting for the running call to end. Each job's asyncio future is resolved from
the model thread when its handle finishes; rendering runs in the render threads, as with `LocalExecutor`.

Everything else (continuations and `/extend` windows, songs, remixes, Stable Audio, a job with more variations
than slots) runs as before through `JobRunner.generate` on the plain backend, in the same model thread, once the
drive loop has gone idle: while such a job waits or runs the executor reports no capacity, so the running text
jobs drain and nothing new joins.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from generation.jobs import Job, JobKind
from generation.models import Family, ModelInfo, model_info
from generation.runner import JobRunner
from generation.types import Audio, GenerationRequest, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderOptions:
    """slots: S, the sequences decoded together (BANDMATE_MAX_BATCH); on CUDA fewer when memory is short.
    cuda_graphs: None = the decoder's default (on for CUDA), False = off (BANDMATE_CUDA_GRAPHS=0)."""

    slots: int = 4
    cuda_graphs: bool | None = None
    memory_fraction: float = 0.5  # of the free GPU memory the KV cache may take when sizing S
    prefill_chunk: int | None = None


@dataclass(eq=False)
class _Active:
    """A job in a decoder, as the drive loop sees it."""

    job: Job
    handle: object  # generation.decoder.DecodeHandle
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    should_stop: Callable[[], bool]
    decoder: object  # generation.decoder.DecoderBackend
    resolved: bool = field(default=False)


def slots_for(backend, wanted: int, memory_fraction: float) -> int:
    """S from BANDMATE_MAX_BATCH and, on CUDA, from the free memory one slot's KV cache needs."""
    import torch

    if not str(backend.device).startswith("cuda") or not torch.cuda.is_available():
        return wanted
    from generation.decoder import cache_bytes_per_slot
    from generation.types import tokens_for

    free, _ = torch.cuda.mem_get_info()
    per_slot = cache_bytes_per_slot(backend.model, 1 + tokens_for(backend.max_duration_s) + 4, 64,
                                    next(backend.model.parameters()).dtype)
    fits = int(free * memory_fraction // max(1, per_slot))
    if fits < wanted:
        log.warning("GPU memory fits %d decoder slots, not the %d of BANDMATE_MAX_BATCH", max(1, fits), wanted)
    return max(1, min(wanted, fits))


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
        self.info_for = info_for
        self._owns_model_thread = model_thread is None
        self._model = model_thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bandmate-model")
        self._render = ThreadPoolExecutor(max_workers=render_threads, thread_name_prefix="bandmate-render")
        self._decoders: dict[str, object] = {}  # model id -> DecoderBackend
        self._plain: set[str] = set()  # model ids whose loaded backend the decoder cannot run
        self._lock = threading.Lock()  # guards _active and _driving (event loop and model thread)
        self._active: list[_Active] = []
        self._driving = False
        self._reserved_rows = 0  # rows of decoder jobs taken and not yet finished (event loop only)
        self._blocking = 0  # jobs running (or waiting to run) through runner.generate
        self.steps_run = 0  # drive-loop steps, all decoders together
        self.on_capacity: Callable[[], None] = lambda: None
        # Called in the model thread after every drive-loop step with `steps_run` (benchmarks, tests).
        self.on_step: Callable[[int], None] | None = None

    # -- the Executor protocol ----------------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """S: the options' slots, or fewer where a GPU's memory sized a decoder smaller."""
        return min([self.options.slots] + [d.decoder.slots for d in list(self._decoders.values())])

    def has_capacity(self) -> bool:
        return self._blocking == 0 and self._reserved_rows < self.slots

    def active_job_ids(self) -> list[str]:
        """Jobs submitted to a decoder and not yet finished (queued in it or running)."""
        with self._lock:
            return [entry.job.id for entry in self._active]

    async def in_model_thread(self, fn, *args):
        """Run fn in the model thread (loading a model there keeps all torch work on one thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._model, fn, *args)

    async def execute(self, jobs: list[Job], progress: Callable[[Progress], None], should_stop: Callable[[], bool]):
        if len(jobs) != 1:  # the scheduler honours batch_limit; more is a caller's mistake, run as a plain batch
            return await self._execute_plain(jobs, progress, should_stop)
        job = jobs[0]
        if not self._decodable(job):
            return await self._execute_plain(jobs, progress, should_stop)
        self._reserved_rows += job.rows  # before any await: the scheduler asks for capacity right after
        reserved = True
        try:
            if job.model not in self._decoders and job.model not in self._plain:
                await self.in_model_thread(self._decoder_for, job.model)
            if job.model in self._plain:  # its loaded backend is not one the decoder runs
                self._reserved_rows -= job.rows
                reserved = False
                return await self._execute_plain(jobs, progress, should_stop)
            audios = await self._decode(job, progress, should_stop)
        finally:
            if reserved:
                self._reserved_rows -= job.rows
                self.on_capacity()
        loop = asyncio.get_running_loop()
        tracks = await loop.run_in_executor(self._render, self.runner.render, job, audios)
        return {job.id: tracks}

    async def close(self) -> None:
        with self._lock:
            for entry in self._active:
                entry.handle.cancel()
        if self._owns_model_thread:
            self._model.shutdown(wait=True, cancel_futures=True)
        self._render.shutdown(wait=True, cancel_futures=True)

    # -- which path ---------------------------------------------------------------------------------------------

    def _decodable(self, job: Job) -> bool:
        """Text jobs of a MusicGen model that fit the slots; a request with input audio (audio-to-audio) does not."""
        if job.kind is not JobKind.TEXT or job.input_audio is not None and job.spec.strength is not None:
            return False
        if job.rows > self.slots or job.model in self._plain:
            return False
        try:
            return self.info_for(job.model).family is Family.MUSICGEN
        except Exception:  # noqa: BLE001 - an unreadable model id fails on the plain path with its own message
            return False

    def prepare(self, model_id: str):
        """Load the model and build its decoder now (call in the model thread: `in_model_thread(prepare, id)`),
        so the first job does not pay for it; returns the loaded backend."""
        self._decoder_for(model_id)
        return self.runner.backend_for(model_id)

    def _decoder_for(self, model_id: str):
        """The model's decoder, built in the model thread on first use (loading the model if need be)."""
        if model_id in self._decoders or model_id in self._plain:
            return self._decoders.get(model_id)
        backend = self.runner.backend_for(model_id)
        from generation.musicgen import MusicGenBackend

        if not isinstance(backend, MusicGenBackend):
            self._plain.add(model_id)
            return None
        from generation.decoder import DecoderBackend

        slots = slots_for(backend, self.options.slots, self.options.memory_fraction)
        decoder = DecoderBackend.wrap(backend, slots=slots, cuda_graphs=self.options.cuda_graphs,
                                      prefill_chunk=self.options.prefill_chunk)
        log.info("decoder for %s: %d slots, %s steps", model_id, slots, decoder.decoder.mode.value)
        self._decoders[model_id] = decoder
        return decoder

    # -- the decoder path ---------------------------------------------------------------------------------------

    async def _decode(self, job: Job, progress: Callable[[Progress], None],
                      should_stop: Callable[[], bool]) -> list[Audio]:
        decoder = self._decoders.get(job.model)
        if decoder is None:  # a failed step dropped it a moment ago: a fresh one
            decoder = await self.in_model_thread(self._decoder_for, job.model)
        request: GenerationRequest = self.runner.text_request(job, decoder)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        handle = decoder.submit(request, progress=progress)  # checks the request; raises a clear ValueError
        with self._lock:
            self._active.append(_Active(job, handle, future, loop, should_stop, decoder))
            start = not self._driving
            self._driving = True
        if start:
            self._model.submit(self._drive)
        return await future

    def _drive(self) -> None:
        """The one drive loop (model thread): step every decoder with work until none has any."""
        try:
            while True:
                with self._lock:
                    active = list(self._active)
                    if not active:
                        self._driving = False
                        return
                for entry in active:
                    if not entry.handle.state.finished and entry.should_stop():
                        entry.handle.cancel()
                for decoder in dict.fromkeys(e.decoder for e in active):
                    try:
                        decoder.step()
                    except Exception as error:  # noqa: BLE001 - its jobs fail (and are retried), the loop goes on
                        log.exception("decoder step failed")
                        self._fail_decoder(decoder, error)
                self.steps_run += 1
                if self.on_step is not None:
                    self.on_step(self.steps_run)
                self._resolve_finished()
        except BaseException as error:  # noqa: BLE001 - never leave a future unresolved
            log.exception("decoder drive loop failed")
            with self._lock:
                entries, self._active, self._driving = list(self._active), [], False
            for entry in entries:
                self._resolve(entry, error)
            raise

    def _fail_decoder(self, decoder, error: BaseException) -> None:
        """A failed step leaves the decoder's state unknown: its jobs fail with the error; the next job builds a
        fresh decoder."""
        for model_id, d in list(self._decoders.items()):
            if d is decoder:
                del self._decoders[model_id]
        with self._lock:
            failed = [e for e in self._active if e.decoder is decoder]
            self._active = [e for e in self._active if e.decoder is not decoder]
        for entry in failed:
            self._resolve(entry, error)

    def _resolve_finished(self) -> None:
        with self._lock:
            done = [e for e in self._active if e.handle.state.finished]
            self._active = [e for e in self._active if not e.handle.state.finished]
        for entry in done:
            self._resolve(entry, None)

    def _resolve(self, entry: _Active, error: BaseException | None) -> None:
        if entry.resolved:
            return
        entry.resolved = True

        def settle() -> None:
            if entry.future.done():
                return
            if error is not None:
                entry.future.set_exception(error)
                return
            try:
                entry.future.set_result(entry.handle.result())
            except BaseException as failure:  # noqa: BLE001 - GenerationCancelled, the job's own error
                entry.future.set_exception(failure)

        if not entry.loop.is_closed():
            entry.loop.call_soon_threadsafe(settle)

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

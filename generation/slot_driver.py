"""The one drive loop over the engine's own MusicGen decoders, shared by the local executor and the Redis worker.

A caller (`generation/decoder_executor.py` for the bot's own model thread, `generation/remote/slots.py` for a
worker) awaits `SlotDriver.decode(job, ...)` per job. The job is submitted to its model's `MusicGenDecoder` and
joins the running ones at the next step; ONE loop in the process's single model thread steps every decoder while
any job is active and resolves each job's future the moment its handle finishes, so a job leaves (and can be
rendered, published, acknowledged) after its own steps, not when the others end. A cancelled job (`should_stop`)
frees its slot at the next step. A job for a model not loaded yet has it loaded, and its decoder built, between two
steps: it then joins the running jobs (the loop steps every decoder), instead of waiting for them to leave.

Continuations (and `/extend` windows), songs and remixes run their own logic in a job thread, whose every model
call is submitted here and waits for its handles (`run_in_slots`, generation/slot_jobs.py). What the decoder does
not run (`decodable` is False: Stable Audio, ACE-Step, audio-to-audio, more variations than slots, a model whose
loaded backend is not MusicGen or MusicGen-melody) is the caller's to run on the plain path, once the loop has
drained.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from generation.backend import GenerationCancelled
from generation.jobs import Job, JobKind
from generation.models import ModelInfo, model_info
from generation.runner import JobRunner
from generation.slot_jobs import DECODER_KINDS, JobThreads, models_of
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
    """A request in a decoder, as the drive loop sees it: a text job's, or one of a job run in a job thread."""

    job: Job
    handle: object  # generation.decoder.DecodeHandle
    should_stop: Callable[[], bool]
    decoder: object  # generation.decoder.DecoderBackend
    settle: Callable[[BaseException | None], None]  # once, in the model thread: None when the handle finished
    resolved: bool = field(default=False)


def slots_for(backend, wanted: int, memory_fraction: float) -> int:
    """S from BANDMATE_MAX_BATCH and, on CUDA, from the free memory one slot's KV cache needs."""
    import torch

    if not str(backend.device).startswith("cuda") or not torch.cuda.is_available():
        return wanted
    from generation.decoder import TEXT_TOKENS, cache_bytes_per_slot, positions_for

    free, _ = torch.cuda.mem_get_info()
    per_slot = cache_bytes_per_slot(backend.model, positions_for(backend), TEXT_TOKENS,
                                    next(backend.model.parameters()).dtype)
    fits = int(free * memory_fraction // max(1, per_slot))
    if fits < wanted:
        log.warning("GPU memory fits %d decoder slots, not the %d of BANDMATE_MAX_BATCH", max(1, fits), wanted)
    return max(1, min(wanted, fits))


class SlotDriver(JobThreads):
    """The process's decoders (one per model, built in the model thread on first use) and the loop that steps them.

    `model_thread` is the process's one-worker pool for all torch work (see `LocalExecutor`); its owner shuts it
    down. The loop runs there as one long task while any job is active, so plain-path work queued behind it runs
    once it has drained.
    """

    def __init__(self, runner: JobRunner, options: DecoderOptions, model_thread: ThreadPoolExecutor, *,
                 info_for: Callable[[str], ModelInfo] = model_info) -> None:
        self.runner = runner
        self.options = options
        self.info_for = info_for
        self._model = model_thread
        self._decoders: dict[str, object] = {}  # model id -> DecoderBackend
        self._plain: set[str] = set()  # model ids whose loaded backend the decoder cannot run
        self._lock = threading.Lock()  # guards _active, _calls and _driving (event loop, model and job threads)
        self._active: list[_Active] = []
        self._driving = False
        self._calls: list[tuple[Callable[[], object], asyncio.Future, asyncio.AbstractEventLoop]] = []
        # Continuations, songs and remixes: their job logic, which calls generate() in the slots (slot_jobs.py).
        self._job_threads = ThreadPoolExecutor(max_workers=options.slots + 1, thread_name_prefix="bandmate-slot-job")
        self._closed = False
        self.steps_run = 0  # drive-loop steps, all decoders together
        # Called in the model thread after every drive-loop step with `steps_run` (benchmarks, tests).
        self.on_step: Callable[[int], None] | None = None

    @property
    def slots(self) -> int:
        """S: the options' slots, or fewer where a GPU's memory sized a decoder smaller."""
        return min([self.options.slots] + [d.decoder.slots for d in list(self._decoders.values())])

    def decodable(self, job: Job) -> bool:
        """MusicGen text, continuation (and `/extend` window) and song jobs, and MusicGen-melody remixes, that fit
        the slots; not a request with input audio and a strength (audio-to-audio), nor other families' jobs."""
        if job.kind not in DECODER_KINDS or job.rows > self.slots:
            return False
        if job.kind is JobKind.TEXT and job.input_audio is not None and job.spec.strength is not None:
            return False
        try:
            return all(model_id not in self._plain and self.info_for(model_id).family is family
                       for model_id, family in models_of(job).items())
        except Exception:  # noqa: BLE001 - an unreadable model id fails on the plain path with its own message
            return False

    async def ensure_for(self, job: Job) -> bool:
        """Whether the job runs in the slots: decodable, and every model it calls has its decoder (built now, in
        the model thread, if need be)."""
        if not self.decodable(job):
            return False
        for model_id in models_of(job):
            if not await self.ensure(model_id):
                return False
        # a prompt longer than a slot's text room (the bot's prompts never are) runs on the plain path instead
        return all(self._decoders[m].decoder.prompt_fits(job.prompt) for m in models_of(job) if m in self._decoders)

    def known(self, model_id: str) -> bool:
        """Whether the model's decoder is built, or its loaded backend is known not to be one the decoder runs."""
        return model_id in self._decoders or model_id in self._plain

    async def ensure(self, model_id: str) -> bool:
        """Build the model's decoder if need be (in the model thread, so behind a running loop); False when its
        loaded backend is not one the decoder runs (the job goes the plain path)."""
        if not self.known(model_id):
            await self._in_model_thread(lambda: self._decoder_for(model_id))
        return model_id in self._decoders

    def prepare(self, model_id: str):
        """Load the model and build its decoder now (call in the model thread), so the first job does not pay for
        it; returns the loaded backend."""
        self._decoder_for(model_id)
        return self.runner.backend_for(model_id)

    def active_job_ids(self) -> list[str]:
        """Jobs submitted to a decoder and not yet finished (queued in it or running)."""
        with self._lock:
            return [entry.job.id for entry in self._active]

    def drawn(self) -> dict[str, int]:
        """Tokens drawn so far per active job (0 while queued or prefilling): what a step did, for tests/benches."""
        with self._lock:
            return {entry.job.id: entry.handle.step for entry in self._active}

    def cancel_all(self) -> None:
        """Stop every active job at the next step (closing down); job threads stop waiting."""
        self._closed = True
        with self._lock:
            for entry in self._active:
                entry.handle.cancel()
        self._job_threads.shutdown(wait=False, cancel_futures=True)

    def _decoder_for(self, model_id: str):
        """The model's decoder, built in the model thread on first use (loading the model if need be)."""
        if self.known(model_id):
            return self._decoders.get(model_id)
        backend = self.runner.backend_for(model_id)
        from generation.musicgen import MusicGenBase

        if not isinstance(backend, MusicGenBase):
            self._plain.add(model_id)
            return None
        from generation.decoder import DecoderBackend

        slots = slots_for(backend, self.options.slots, self.options.memory_fraction)
        decoder = DecoderBackend.wrap(backend, slots=slots, cuda_graphs=self.options.cuda_graphs,
                                      prefill_chunk=self.options.prefill_chunk)
        log.info("decoder for %s: %d slots, %s steps", model_id, slots, decoder.decoder.mode.value)
        self._decoders[model_id] = decoder
        return decoder

    # -- one job --------------------------------------------------------------------------------------------

    async def decode(self, job: Job, progress: Callable[[Progress], None],
                     should_stop: Callable[[], bool]) -> list[Audio]:
        """The job's audio (watermarked as `JobRunner.generate` would), once it leaves its slots. Raises the job's
        error, GenerationCancelled, or a clear ValueError for a request the decoder refuses."""
        if self._closed:
            raise GenerationCancelled("closing down")
        if job.kind is not JobKind.TEXT:
            return await self._run_job(job, progress, should_stop)
        decoder = await self._decoder(job.model)
        request: GenerationRequest = self.runner.text_request(job, decoder)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        from generation.decoder.backend import batch_progress

        # checks the request (a clear ValueError); progress never goes back (a job sent back for memory restarts)
        handle = decoder.submit(request, progress=batch_progress([request], progress))

        def settle(error: BaseException | None) -> None:  # the watermark (torch work) runs here, in the model thread
            audios = None
            if error is None:
                try:
                    audios = self.runner.watermarked(job, handle.result())
                except BaseException as failure:  # noqa: BLE001 - GenerationCancelled, the job's own error
                    error = failure
            self._settle(future, loop, audios, error)

        self._watch([_Active(job, handle, should_stop, decoder, settle)])
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up (shutting down): free the slot at the next step
            handle.cancel()
            raise

    async def _decoder(self, model_id: str):
        """The model's decoder: built (in the model thread) if need be, or again after a failed step dropped it."""
        decoder = self._decoders.get(model_id)
        if decoder is None:
            decoder = await self._in_model_thread(lambda: self._decoder_for(model_id))
        if decoder is None:
            raise ValueError(f"{model_id} does not run in the decoder")
        return decoder

    def _watch(self, entries: list[_Active]) -> None:
        """Hand submitted requests to the drive loop, starting it if it is not running."""
        with self._lock:
            self._active.extend(entries)
            start = not self._driving
            self._driving = True
        if start:
            try:
                drive = self._model.submit(self._drive)
            except RuntimeError:  # the model thread is shut down: closing
                self._abandon()
                return
            drive.add_done_callback(lambda f: self._abandon() if f.cancelled() else None)

    def _abandon(self) -> None:
        """The drive loop will not run (its pool closed before it started): settle everything waiting for it, so
        no job thread or caller waits for steps that never come."""
        with self._lock:
            entries, self._active, self._driving = list(self._active), [], False
            calls, self._calls = self._calls, []
        error = GenerationCancelled("closing down")
        for entry in entries:
            entry.handle.cancel()
            self._resolve(entry, error)
        for _, future, loop in calls:
            self._settle(future, loop, None, error)

    async def _in_model_thread(self, fn: Callable[[], object]):
        """fn's result, run in the model thread: between two steps while the drive loop holds that thread (so a job
        for another model has its model loaded and its decoder built while the running jobs pause, and then joins
        them, instead of waiting until they have all left), else as the pool's next task."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._driving:
                future = None
            else:
                future = loop.create_future()
                self._calls.append((fn, future, loop))
        if future is None:
            return await loop.run_in_executor(self._model, fn)
        return await future

    # -- the loop (model thread) ----------------------------------------------------------------------------

    def _drive(self) -> None:
        """Step every decoder with work until none has any; calls handed to the model thread meanwhile run
        between steps."""
        try:
            while True:
                with self._lock:
                    active = list(self._active)
                    calls, self._calls = self._calls, []
                    if not active and not calls:
                        self._driving = False
                        return
                for call in calls:
                    self._run_call(*call)
                if not active:
                    continue
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
                calls, self._calls = self._calls, []
            for entry in entries:
                self._resolve(entry, error)
            for _, future, loop in calls:
                self._settle(future, loop, None, error)
            raise

    def _run_call(self, fn: Callable[[], object], future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        try:
            result, error = fn(), None
        except Exception as failure:  # noqa: BLE001 - the caller's to handle (a model that fails to load)
            result, error = None, failure
        self._settle(future, loop, result, error)

    @staticmethod
    def _settle(future: asyncio.Future, loop: asyncio.AbstractEventLoop, result, error: BaseException | None) -> None:
        """Set a future of an event loop from the model thread."""
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        if not loop.is_closed():
            loop.call_soon_threadsafe(settle)

    def _fail_decoder(self, decoder, error: BaseException) -> None:
        """A failed step leaves the decoder's state unknown: its jobs fail with the error; the next job builds a
        fresh decoder."""
        for model_id, d in list(self._decoders.items()):
            if d is decoder:
                del self._decoders[model_id]
        decoder.dead = True  # a job thread between two calls must not submit to it again
        for handle in decoder.decoder.running() + decoder.decoder.queued():
            handle.cancel()
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
        entry.settle(error)

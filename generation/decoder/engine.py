"""The engine's own MusicGen decoder loop: jobs join at the next step and leave at their own length.

Each `step()`: cancelled jobs free their slots; queued jobs are admitted into free slots (text encoded and the
cross-attention keys/values computed once, RNGs seeded, delay pattern built); audio prompts are prefilled (in
chunks when `prefill_chunk` is set); every running job draws one token per codebook, all jobs in one forward
call; a job that has drawn its last token is un-delayed and EnCodec-decoded at once.

Out of accelerator memory while admitting, the newcomer stays queued; in the middle of a step, one job gives its
slots back and starts again later from its seed (`_shed`). Running jobs never fail for memory a newcomer took.

A job's tokens depend only on its own request (see `generation/decoder/forward.py` for when that is bit-exact).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np
import torch

from generation.backend import OutOfMemory
from generation.decoder.cache import CacheShape, StaticKVCache
from generation.decoder.conditioning import Conditioning
from generation.decoder.delivery import audio_of, undelayed_codes
from generation.decoder.memory import SlotCeiling
from generation.decoder.requests import TEXT_TOKENS, RequestLimits, positions_for
from generation.decoder.forward import DecoderModules, RowBlock, StepMode
from generation.decoder.jobs import DecodeHandle, DecodeState, LiveJob
from generation.decoder.sampling import new_generator, sample_job
from generation.out_of_memory import free_cached_memory, is_out_of_memory
from generation.types import GenerationRequest, ProgressCallback, tokens_for

log = logging.getLogger(__name__)

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def default_mode(device: str, dtype: str) -> StepMode:
    if str(device).startswith("cuda"):
        return StepMode.STATIC
    return StepMode.EXACT if dtype == "float32" else StepMode.BATCHED


def native_bf16(device: str) -> bool:
    """Whether bf16 matrix products run natively here (a GPU, or a CPU with AVX512-BF16 / AMX). Without, as on an
    AVX2 CPU, a bf16 linear costs the same per row: batching rows gains almost nothing (see bench/decoder.py)."""
    if not str(device).startswith("cpu"):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cache_bytes_per_slot(model, max_positions: int, max_text_tokens: int, dtype: torch.dtype) -> int:
    """What one slot (a sequence and its twin) costs in the static cache: for sizing S from free memory."""
    cfg = model.config.decoder
    per_row = cfg.num_hidden_layers * 2 * cfg.hidden_size * (max_positions + 1 + max_text_tokens)
    return 2 * per_row * torch.empty((), dtype=dtype).element_size()


class MusicGenDecoder:
    """Continuous batching over a loaded MusicGen (`generation.musicgen.MusicGenBackend`) or MusicGen-melody
    (`generation.melody.MelodyBackend`).

    Not thread-safe for stepping: one thread calls `step()`/`run_until_idle()`; any thread may `submit()` and
    cancel handles.
    """

    def __init__(self, backend, *, slots: int = 4, max_positions: int | None = None,
                 max_text_tokens: int = TEXT_TOKENS,
                 mode: StepMode | str | None = None, prefill_chunk: int | None = None,
                 cuda_graphs: bool | None = None) -> None:
        if slots < 1:
            raise ValueError("the decoder needs at least one slot")
        self.backend = backend
        self.model = backend.model
        self.device = torch.device(backend.device)
        self.modules = DecoderModules(self.model)
        self.k = self.modules.num_codebooks
        self.mode = StepMode(mode) if mode is not None else default_mode(backend.device, backend.dtype)
        self.max_positions = max_positions or positions_for(backend, max_text_tokens)
        self.prefill_chunk = prefill_chunk
        self.modules.ensure_positions(self.max_positions + 1)
        cfg = self.model.config.decoder
        self.cache = StaticKVCache(
            CacheShape(slots=slots, layers=int(cfg.num_hidden_layers), heads=self.modules.num_heads,
                       head_dim=self.modules.head_dim, max_positions=self.max_positions,
                       max_text_tokens=max_text_tokens if self.modules.cross_attention else 1),
            dtype=self.modules.dtype, device=self.device)
        self.slots = slots
        self.pad = int(backend.pad_token_id)
        self.melody = getattr(backend, "family", "musicgen") == "musicgen-melody"
        self.conditioning = Conditioning(backend, self.modules, self.cache, self.device)
        self.limits = RequestLimits(backend, melody=self.melody, slots=slots, max_positions=self.max_positions,
                                    text_tokens=self.cache.shape.max_text_tokens)
        use_graphs = (self.mode is StepMode.STATIC and self.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        self.graphs = None
        if use_graphs:
            if self.mode is not StepMode.STATIC or self.device.type != "cuda":
                raise ValueError("CUDA graphs need the static step mode on a CUDA device")
            from generation.decoder.graphs import CudaGraphSteps

            self.graphs = CudaGraphSteps(self.modules, self.cache, self.k)
        self.steps_run = 0
        self.ceiling = SlotCeiling()  # after running out of memory mid-step: how many slots admission fills
        self._queue: deque[DecodeHandle] = deque()
        self._live: list[LiveJob] = []
        self._to_decode: list[LiveJob] = []  # drawn all their tokens; EnCodec ran out of memory decoding them
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_id: str, *, device: str = "auto", dtype: str = "auto", melody: bool = False,
             **options) -> "MusicGenDecoder":
        """Load through the existing backends (MusicgenForConditionalGeneration / ...Melody... from_pretrained)."""
        if melody:
            from generation.melody import MelodyBackend as loader
        else:
            from generation.musicgen import MusicGenBackend as loader
        return cls(loader.load(model_id, device=device, dtype=dtype), **options)

    # -- submitting -------------------------------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError (a message for the user) when the request cannot run here."""
        self.limits.check(request)

    def prompt_fits(self, prompt: str, margin: int = 16) -> bool:
        return self.limits.prompt_fits(prompt, margin)

    def submit(self, request: GenerationRequest, *, progress: ProgressCallback | None = None) -> DecodeHandle:
        """Queue a request; it joins at the next step that has room for its variations."""
        self.check(request)
        handle = DecodeHandle(request, tokens_for(request.duration_s), progress, self.steps_run)
        with self._lock:
            self._queue.append(handle)
        return handle

    # -- introspection ----------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.cache.free_slots()

    def running(self) -> list[DecodeHandle]:
        return [job.handle for job in self._live]

    def queued(self) -> list[DecodeHandle]:
        with self._lock:
            return list(self._queue)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._live and not self._to_decode

    # -- the loop ---------------------------------------------------------------------------------------------

    def run_until_idle(self, should_stop=None) -> None:
        while not self.idle:
            if should_stop is not None and should_stop():
                for handle in self.running() + self.queued():
                    handle.cancel()
            self.step()

    @torch.inference_mode()
    def step(self) -> None:
        """Cancel, admit, prefill, draw one token for every running job, deliver the finished ones."""
        self._drop_cancelled()
        for job in list(self._to_decode):
            self._deliver(job)
        self._admit_waiting()
        marks = [(job, job.prefill_mark()) for job in self._live if job.prefilling]
        try:
            drawn = self._sample(self._forward())
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            for job, mark in marks:
                job.back_to(mark)  # nothing was drawn: the step runs again, with fewer jobs, next time
            self._shed(error)
            return
        self.steps_run += 1
        self.ceiling.stepped(self.steps_run, len(self._live))
        for job, tokens in drawn:
            self._commit(job, tokens)
        for job in [j for j in self._live if j.drawn >= j.steps]:
            self._deliver(job)

    def _forward(self) -> list[tuple[LiveJob, torch.Tensor]]:
        """Prefill (a chunk of) each prefilling job, and one forward call for every job that draws this step: the
        logits each job samples from. Changes nothing but prefill progress and the cache rows it writes."""
        prefilled = []
        for job in [j for j in self._live if j.prefilling]:
            logits = self._prefill(job)
            if logits is not None:
                prefilled.append((job, logits))
        just_prefilled = {id(job) for job, _ in prefilled}
        decoding = [j for j in self._live if not j.prefilling and id(j) not in just_prefilled]
        return prefilled + self._decode(decoding)

    def _shed(self, error: BaseException) -> None:
        """Out of accelerator memory in the middle of a step: the running jobs must not fail for it. The job that
        loses least (fewest tokens drawn; of those, the one in the highest slots, which shrinks the static step
        most) gives its slots back and waits at the head of the queue; it starts again from its seed, so its
        audio is the same. Until the decoder empties, admission stops at the slots still in use. A job that
        does not fit even alone fails with OutOfMemory."""
        free_cached_memory()
        if len(self._live) == 1:
            (job,) = self._live
            self._release(job)
            job.handle._finish(DecodeState.FAILED, error=OutOfMemory(str(error)))
            return
        job = min(self._live, key=lambda j: (j.drawn, -j.first_slot))
        self._release(job)
        job.handle._requeued()
        with self._lock:
            self._queue.appendleft(job.handle)
        self.ceiling.shed(self._in_use(), self.steps_run)
        log.warning("out of memory mid-step; job %s (%d slots, %d tokens drawn) waits for memory, %d slots keep "
                    "running", job.handle.id, job.slots, job.drawn, self.ceiling.value)

    def _in_use(self) -> int:
        return self.slots - self.cache.free_slots()

    @property
    def sheds(self) -> int:
        return self.ceiling.sheds

    @property
    def slot_ceiling(self) -> int | None:
        return self.ceiling.value

    # -- admission --------------------------------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        with self._lock:
            for handle in [h for h in self._queue if h.cancel_requested]:
                self._queue.remove(handle)
                handle._finish(DecodeState.CANCELLED)
        for job in [j for j in self._live if j.handle.cancel_requested]:
            self._release(job)
            job.handle._finish(DecodeState.CANCELLED)
        for job in [j for j in self._to_decode if j.handle.cancel_requested]:
            self._to_decode.remove(job)
            job.handle._finish(DecodeState.CANCELLED)

    def _admit_waiting(self) -> None:
        with self._lock:
            waiting = list(self._queue)
        for handle in waiting:
            first = self.cache.allocate(handle.rows) if self.ceiling.allows(self._in_use(), handle.rows) else None
            if first is None:
                if handle.requeued:  # sent back for memory: nothing behind it goes first, so it cannot starve
                    return
                continue  # no block of that many slots free; a smaller job behind it may still fit
            try:
                job = self._admit(handle, first)
            except Exception as error:  # noqa: BLE001 - a bad request fails alone, never the running jobs
                self.cache.release(first, handle.rows)
                if is_out_of_memory(error):
                    free_cached_memory()
                    if self._live:  # running jobs will free memory as they leave; never fail them for a newcomer
                        log.warning("out of memory admitting a job; it stays queued")
                        return
                    error = OutOfMemory(str(error))
                with self._lock:
                    self._queue.remove(handle)
                handle._finish(DecodeState.FAILED, error=error)
                continue
            with self._lock:
                self._queue.remove(handle)
            self._live.append(job)
            handle.state = DecodeState.PREFILL if job.prefilling else DecodeState.RUNNING

    def _admit(self, handle: DecodeHandle, first_slot: int) -> LiveJob:
        r, n = handle.request, handle.rows
        guided = r.sampling.guidance > 1
        first_row = 2 * first_slot
        prefix_embeds = None
        if self.melody:
            prefix_embeds = self.conditioning.melody_prefix(r, n, guided)
        else:
            self.conditioning.encode_text(r.prompt, n, guided, first_row)
        prompt_codes, samples = None, None
        if r.audio_prompt is not None:
            samples = self.backend._prompt_samples(r.audio_prompt)
            values = torch.from_numpy(np.stack([samples] * n)[:, None, :]).to(self.device, torch.float32)
            prompt_codes = self.model.audio_encoder.encode(values, bandwidth=None).audio_codes[0]  # (n, k, P)
        frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
        steps = tokens_for(r.duration_s)
        first = torch.full((n * self.k, 1), self.pad, dtype=torch.long, device=self.device)
        if prompt_codes is not None:
            first = torch.cat([first, prompt_codes.reshape(n * self.k, frames)], dim=-1)
        _, pattern = self.model.decoder.build_delay_pattern_mask(first, self.pad, max_length=1 + frames + steps)
        pattern = pattern.reshape(n, self.k, -1)
        return LiveJob(
            handle=handle, first_slot=first_slot, slots=n, guided=guided, params=r.sampling,
            generators=[new_generator(r.seed + i, self.device) for i in range(n)],
            pattern=pattern, seq=pattern.clone(), prompt_frames=frames, steps=steps, prefix=1 + frames,
            # a text job's BOS joins the batch; a continuation's prompt and a remix's prefix are prefilled first
            prefilled=1 if frames == 0 and prefix_embeds is None else 0, prompt_samples=samples,
            prefix_embeds=prefix_embeds, offset=0 if prefix_embeds is None else prefix_embeds.shape[1])

    def _release(self, job: LiveJob) -> None:
        self._live.remove(job)
        self.cache.release(job.first_slot, job.slots)
        if not self._live:
            self.ceiling.stepped(self.steps_run, 0)  # memory found short mid-step is judged afresh when empty

    # -- model calls ------------------------------------------------------------------------------------------

    def _prefill(self, job: LiveJob) -> torch.Tensor | None:
        """Run (a chunk of) the job's prefix; its logits once the whole prefix has run, else None."""
        if job.prefix_embeds is not None:
            return self._prefill_melody(job)
        start = job.prefilled
        end = job.prefix if not self.prefill_chunk else min(job.prefix, start + self.prefill_chunk)
        block = RowBlock(job.first_row, job.rows, job.offset + start, end - start)
        logits = self.modules.forward_blocks(job.inputs(start, end), [block], self.cache)
        job.prefilled = end
        job.next_pos = end - 1
        if job.prefilling:
            return None
        job.handle.state = DecodeState.RUNNING
        return logits

    def _prefill_melody(self, job: LiveJob) -> torch.Tensor | None:
        """MusicGen-melody: the chroma and text prefix (decoder positions 0..offset-1), then the BOS at `offset`,
        in chunks of `prefill_chunk` positions when set (one call otherwise); logits once the BOS has run."""
        total = job.offset + 1
        start = job.embeds_done
        end = total if not self.prefill_chunk else min(total, start + self.prefill_chunk)
        prefix = job.prefix_embeds[:, start:min(end, job.offset)]
        tokens = job.inputs(0, 1) if end == total else job.inputs(0, 0)  # the BOS comes last
        block = RowBlock(job.first_row, job.rows, start, end - start)
        logits = self.modules.forward_blocks(tokens, [block], self.cache,
                                             prefix=prefix if prefix.shape[1] else None)
        job.embeds_done = end
        if end < total:
            return None
        job.prefix_embeds = None
        job.prefilled = job.prefix
        job.handle.state = DecodeState.RUNNING
        return logits

    def _decode(self, jobs: list[LiveJob]) -> list[tuple[LiveJob, torch.Tensor]]:
        if not jobs:
            return []
        if self.mode is StepMode.EXACT:
            return [(j, self.modules.forward_blocks(j.inputs(j.next_pos, j.next_pos + 1),
                                                    [RowBlock(j.first_row, j.rows, j.offset + j.next_pos)],
                                                    self.cache))
                    for j in jobs]
        if self.mode is StepMode.BATCHED:
            tokens = torch.cat([j.inputs(j.next_pos, j.next_pos + 1) for j in jobs])
            blocks = [RowBlock(j.first_row, j.rows, j.offset + j.next_pos) for j in jobs]
            logits = self.modules.forward_blocks(tokens, blocks, self.cache)
            out, at = [], 0
            for j in jobs:
                span = j.rows * self.k
                out.append((j, logits[at:at + span]))
                at += span
            return out
        return self._decode_static(jobs)

    def _decode_static(self, jobs: list[LiveJob]) -> list[tuple[LiveJob, torch.Tensor]]:
        used = self.cache.highest_used_slot()
        bucket = next((b for b in GRAPH_BUCKETS if b >= used), used)
        bucket = min(bucket, self.slots)
        rows = 2 * bucket
        tokens = torch.full((rows, self.k, 1), self.pad, dtype=torch.long, device=self.device)
        positions = torch.full((rows,), self.cache.scratch_position, dtype=torch.long, device=self.device)
        for j in jobs:
            block = slice(j.first_row, j.first_row + j.rows)
            tokens[block] = j.inputs(j.next_pos, j.next_pos + 1)
            positions[block] = j.offset + j.next_pos
        if self.graphs is not None:
            logits = self.graphs.run(rows, tokens, positions)
        else:
            logits = self.modules.forward_static(tokens, positions, self.cache)
        return [(j, logits[j.first_row * self.k:(j.first_row + j.rows) * self.k]) for j in jobs]

    # -- tokens and delivery ----------------------------------------------------------------------------------

    def _sample(self, results: list[tuple[LiveJob, torch.Tensor]]) -> list[tuple[LiveJob, torch.Tensor]]:
        """Each job's tokens from its logits. Sampling allocates too: if it runs out of memory part-way, the jobs
        already sampled get their RNG states back, so the step runs again next time with the same draws."""
        states = [(gen, gen.get_state()) for job, _ in results for gen in job.generators]
        try:
            return [(job, sample_job(logits, slots=job.slots, num_codebooks=self.k, guided=job.guided,
                                     params=job.params, generators=job.generators))
                    for job, logits in results]
        except Exception:
            for gen, state in states:
                gen.set_state(state)
            raise

    def _commit(self, job: LiveJob, tokens: torch.Tensor) -> None:
        """A job's drawn tokens into its sequence (the delay pattern's fixed places keep theirs)."""
        pos = job.next_pos + 1
        wanted = job.pattern[:, :, pos]
        job.seq[:, :, pos] = torch.where(wanted == -1, tokens, wanted)
        job.next_pos = pos
        job.drawn += 1
        if job.handle.first_step is None:
            job.handle.first_step = self.steps_run
        job.handle._report(job.drawn)

    def _deliver(self, job: LiveJob) -> None:
        """Un-delay and EnCodec-decode a job that has drawn its last token. Out of memory here, the job keeps its
        codes and is decoded again at the next step, when others may have left; it fails only if it runs out with
        no other job running."""
        if job in self._live:
            self._release(job)
        handle = job.handle
        try:
            codes = undelayed_codes(job, self.k)
            out = audio_of(self.backend, job, codes)
        except Exception as error:  # noqa: BLE001 - one job's decode failure is that job's failure
            if not is_out_of_memory(error):
                log.exception("decoding job %s failed", handle.id)
                self._finish_decoding(job, DecodeState.FAILED, error=error)
                return
            free_cached_memory()
            if self._live:  # others hold memory that frees as they leave: again at the next step
                log.warning("out of memory decoding job %s to audio; it is decoded again at the next step", handle.id)
                if job not in self._to_decode:
                    self._to_decode.append(job)
                return
            self._finish_decoding(job, DecodeState.FAILED, error=OutOfMemory(str(error)))
            return
        handle.codes = codes
        self._finish_decoding(job, DecodeState.DONE, audio=out)

    def _finish_decoding(self, job: LiveJob, state: DecodeState, **outcome) -> None:
        if job in self._to_decode:
            self._to_decode.remove(job)
        job.handle._finish(state, **outcome)


"""Running out of accelerator memory in the middle of a decoder step never fails the running jobs: one job gives
its slots back and starts again later from its seed, with the same codes it would have had alone.

A CPU cannot run out of memory on cue, so the decoder's forward pass is given a memory budget here: a forward call
made while more slots are in use than the budget allows raises `torch.OutOfMemoryError`, the error CUDA raises.
"""

from __future__ import annotations

import pytest
import torch

from generation.backend import OutOfMemory
from generation.decoder import DecodeState, MusicGenDecoder
from generation.types import Audio, GenerationRequest, SamplingParams, tokens_for

TEXT = GenerationRequest("lo-fi piano rainy night", 1.0, seed=7)
SHORT = GenerationRequest("jazz drums", 0.5, seed=3, sampling=SamplingParams(top_k=20))
LATE = GenerationRequest("calm ambient synth", 0.7, seed=11, sampling=SamplingParams(guidance=1.5))


class MemoryBudget:
    """Wraps a decoder's forward calls: with more than `slots` slots in use, a call raises out of memory. `fail_calls`
    instead names which forward calls (counted from 1) raise, whatever the slots."""

    def __init__(self, decoder: MusicGenDecoder, slots: int | None = None, fail_calls: set[int] = frozenset(),
                 error=lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        self.decoder, self.slots, self.fail_calls, self.error = decoder, slots, set(fail_calls), error
        self.calls = 0
        self.raised = 0
        for name in ("forward_blocks", "forward_static"):
            setattr(decoder.modules, name, self._guard(getattr(decoder.modules, name)))

    def in_use(self) -> int:
        return self.decoder.slots - self.decoder.cache.free_slots()

    def _guard(self, forward):
        def guarded(*args, **kwargs):
            self.calls += 1
            over = self.slots is not None and self.in_use() > self.slots
            if over or self.calls in self.fail_calls:
                self.raised += 1
                raise self.error()
            return forward(*args, **kwargs)
        return guarded


def alone(backend, request: GenerationRequest) -> torch.Tensor:
    decoder = MusicGenDecoder(backend, slots=4, max_positions=200)
    handle = decoder.submit(request)
    decoder.run_until_idle()
    assert handle.state is DecodeState.DONE
    return handle.codes


@pytest.fixture(scope="module")
def prompt_audio(tiny_backend) -> Audio:
    return tiny_backend.generate([GenerationRequest("jazz drums", 1.0, seed=5)])[0][0]


def test_out_of_memory_mid_step_requeues_the_newest_job_and_every_job_sounds_as_alone(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    budget = MemoryBudget(decoder, slots=2)
    first, second = decoder.submit(TEXT), decoder.submit(SHORT)
    for _ in range(3):
        decoder.step()
    progress: list[int] = []
    late = decoder.submit(LATE, progress=lambda p: progress.append(p.step))
    decoder.step()  # the late job is admitted, and the step runs out of memory with three slots in use

    assert budget.raised >= 1 and decoder.sheds == 1
    assert late.state is DecodeState.QUEUED and late.requeued == 1
    assert first.state is DecodeState.RUNNING and first.requeued == 0 and second.requeued == 0
    assert first.step == 3 and second.step == 3  # the failed step drew nothing, and lost nothing
    assert decoder.slot_ceiling == 2

    # it waits (two slots are all that fit) and joins when the short job leaves
    for _ in range(tokens_for(SHORT.duration_s) - 3):
        decoder.step()
        assert late.state is DecodeState.QUEUED
    assert second.state is DecodeState.DONE
    decoder.run_until_idle()
    assert budget.raised == 1
    assert [h.state for h in (first, second, late)] == [DecodeState.DONE] * 3
    for request, handle in ((TEXT, first), (SHORT, second), (LATE, late)):
        assert torch.equal(handle.codes, alone(tiny_backend, request)), request.prompt
    assert progress[-1] == tokens_for(LATE.duration_s)
    assert decoder.slot_ceiling is None  # lifted once the decoder emptied; the next job is admitted at once


def test_a_cuda_error_out_of_memory_from_a_kernel_is_met_like_the_allocators_own(tiny_backend):
    """cuBLAS or a kernel launch that finds no memory raises RuntimeError ("CUDA error: out of memory"), not
    torch.OutOfMemoryError: it must shed a job the same way, not fail the decoder and every job in it."""
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    budget = MemoryBudget(decoder, slots=1, error=lambda: RuntimeError(
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"))
    first = decoder.submit(TEXT)
    decoder.step()
    second = decoder.submit(SHORT)
    decoder.step()
    assert budget.raised == 1 and decoder.sheds == 1 and second.requeued == 1
    decoder.run_until_idle()
    assert first.state is DecodeState.DONE and second.state is DecodeState.DONE
    assert torch.equal(first.codes, alone(tiny_backend, TEXT)) and torch.equal(second.codes, alone(tiny_backend, SHORT))


def test_any_other_error_in_a_step_is_not_taken_for_memory(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    MemoryBudget(decoder, fail_calls={2}, error=lambda: RuntimeError("CUDA error: an illegal memory access"))
    decoder.submit(TEXT)
    decoder.step()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        decoder.step()
    assert decoder.sheds == 0


def test_out_of_memory_while_sampling_gives_the_jobs_already_drawn_their_rng_back(tiny_backend, monkeypatch):
    """Sampling allocates too (top-k, softmax, the draw). Running out there, after another job has drawn, must not
    move that job's RNG on: the step runs again and every job still sounds as it does alone."""
    import generation.decoder.engine as engine

    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    first, second = decoder.submit(TEXT), decoder.submit(LATE)
    for _ in range(3):
        decoder.step()
    sample, calls = engine.sample_job, []

    def second_runs_short(logits, **kwargs):
        calls.append(kwargs["params"])
        if len(calls) == 2:  # the first job has drawn this step; the second runs out
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return sample(logits, **kwargs)

    monkeypatch.setattr(engine, "sample_job", second_runs_short)
    decoder.step()
    assert decoder.sheds == 1 and second.requeued == 1  # the newest slot, as many drawn: the higher one goes
    assert first.step == 3 and first.state is DecodeState.RUNNING
    decoder.run_until_idle()
    assert torch.equal(first.codes, alone(tiny_backend, TEXT))
    assert torch.equal(second.codes, alone(tiny_backend, LATE))


def test_a_prefill_cut_short_by_out_of_memory_is_run_again_from_where_it_stood(tiny_backend, prompt_audio):
    continuation = GenerationRequest("calm", 0.7, seed=2, audio_prompt=prompt_audio)
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    # step 1: call 1 is the continuation's prefill (it completes), call 2 the text job's first token: that one fails
    budget = MemoryBudget(decoder, fail_calls={2})
    prefilled = decoder.submit(continuation)
    text = decoder.submit(TEXT)
    decoder.step()
    assert budget.raised == 1
    assert text.state is DecodeState.QUEUED and text.requeued == 1  # drawn nothing, in the higher slot
    assert prefilled.state is DecodeState.PREFILL and prefilled.requeued == 0 and prefilled.step == 0
    decoder.run_until_idle()
    assert torch.equal(prefilled.codes, alone(tiny_backend, continuation))
    assert torch.equal(text.codes, alone(tiny_backend, TEXT))


def test_a_job_that_does_not_fit_even_alone_fails_with_out_of_memory_and_the_decoder_goes_on(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    budget = MemoryBudget(decoder, slots=1)
    big = decoder.submit(GenerationRequest("orchestra", 0.5, variations=2, seed=1))
    decoder.step()
    assert big.state is DecodeState.FAILED
    with pytest.raises(OutOfMemory, match="out of memory"):
        big.result()
    assert decoder.free_slots() == 4 and decoder.idle
    budget.slots = None
    small = decoder.submit(TEXT)
    decoder.run_until_idle()
    assert torch.equal(small.codes, alone(tiny_backend, TEXT))


def test_out_of_memory_while_admitting_keeps_the_newcomer_queued_and_the_running_job_going(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    running = decoder.submit(SHORT)
    decoder.step()
    encode, refusals = decoder.conditioning.encode_text, []

    def short_of_memory(*args, **kwargs):
        if not running.state.finished:
            refusals.append(args[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")
        return encode(*args, **kwargs)

    decoder.conditioning.encode_text = short_of_memory
    waiting = decoder.submit(TEXT)
    decoder.step()
    assert refusals == [TEXT.prompt] and waiting.state is DecodeState.QUEUED and running.step == 2
    assert decoder.free_slots() == 3  # the newcomer's slot was given back
    decoder.run_until_idle()
    assert running.state is DecodeState.DONE and waiting.state is DecodeState.DONE
    assert torch.equal(running.codes, alone(tiny_backend, SHORT))
    assert torch.equal(waiting.codes, alone(tiny_backend, TEXT))
    assert waiting.first_step == tokens_for(SHORT.duration_s) + 1  # admitted the step after the first job left


def test_out_of_memory_decoding_a_finished_job_to_audio_tries_again_once_others_have_left(tiny_backend,
                                                                                          monkeypatch):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    long = decoder.submit(TEXT)
    short = decoder.submit(SHORT)
    encodec, attempts = decoder.model.audio_encoder, []
    decode = encodec.decode

    def short_of_memory(codes, *args, **kwargs):
        attempts.append(codes.shape[1])
        if not long.state.finished and len(attempts) <= 3:  # tight while the long job runs
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return decode(codes, *args, **kwargs)

    monkeypatch.setattr(encodec, "decode", short_of_memory)
    for _ in range(tokens_for(SHORT.duration_s)):
        decoder.step()
    assert short.state is DecodeState.RUNNING and long.state is DecodeState.RUNNING  # drawn, waiting to decode
    assert decoder.free_slots() == 3  # its slot is free for others meanwhile
    decoder.run_until_idle()
    assert len(attempts) > 2 and short.state is DecodeState.DONE and long.state is DecodeState.DONE
    assert torch.equal(short.codes, alone(tiny_backend, SHORT))
    assert short.result()[0].samples.shape == (1, round(SHORT.duration_s * tiny_backend.sample_rate))


def test_out_of_memory_decoding_with_nothing_else_running_fails_that_job_alone(tiny_backend, monkeypatch):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    encodec = decoder.model.audio_encoder

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")

    monkeypatch.setattr(encodec, "decode", no_memory)
    handle = decoder.submit(SHORT)
    decoder.run_until_idle()
    assert handle.state is DecodeState.FAILED and decoder.idle
    with pytest.raises(OutOfMemory):
        handle.result()


def test_a_job_sent_back_for_memory_is_admitted_before_anything_behind_it(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    MemoryBudget(decoder, slots=2)
    first, second = decoder.submit(TEXT), decoder.submit(SHORT)
    decoder.step()
    big = decoder.submit(GenerationRequest("orchestra", 0.5, variations=2, seed=4))
    decoder.step()  # admitted beside the two, out of memory: sent back
    assert big.requeued == 1 and decoder.slot_ceiling == 2
    small = decoder.submit(GenerationRequest("calm", 0.3, seed=5))  # would fit beside them, but waits its turn
    while second.state is not DecodeState.DONE:
        decoder.step()
        assert small.state is DecodeState.QUEUED
    decoder.run_until_idle()
    assert small.state is DecodeState.DONE and big.state is DecodeState.DONE and first.requeued == 0
    assert small.first_step >= big.first_step  # never ahead of the job sent back
    assert torch.equal(big.codes, alone(tiny_backend, big.request))


def test_the_slot_ceiling_is_lifted_when_the_decoder_empties_or_after_a_while():
    from generation.decoder.memory import SlotCeiling

    ceiling = SlotCeiling(lift_after_steps=10)
    assert ceiling.allows(in_use=7, rows=1)
    ceiling.shed(in_use_after=2, step=100)
    assert ceiling.value == 2 and ceiling.sheds == 1
    assert ceiling.allows(1, 1) and not ceiling.allows(2, 1)
    ceiling.stepped(109, live=3)
    assert ceiling.value == 2  # 9 steps on: still capped
    ceiling.stepped(110, live=3)
    assert ceiling.value is None  # 10 steps without running out again: memory is judged afresh
    ceiling.shed(in_use_after=1, step=200)
    ceiling.stepped(201, live=0)
    assert ceiling.value is None  # empty: judged afresh at once

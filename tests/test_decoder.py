"""The engine's own MusicGen decoder on the tiny fixture: the same codes as today's `generate` path, the same
codes alone or beside others (joined at any step), continuation, chunked prefill, cancel, leaving at one's own
length, per-job progress and sampling, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.continuation import continue_audio
from generation.decoder import DecoderBackend, DecodeState, MusicGenDecoder, StepMode
from generation.musicgen import MusicGenBackend
from generation.types import Audio, GenerationRequest, SamplingParams, tokens_for

TARGET = GenerationRequest("lo-fi piano rainy night", 1.0, variations=2, seed=7)


@pytest.fixture(scope="module")
def bf16_backend(tiny_model_path):
    return MusicGenBackend.load(tiny_model_path, device="cpu", dtype="bf16")


@pytest.fixture(scope="module")
def source_audio(tiny_backend) -> Audio:
    return tiny_backend.generate([GenerationRequest("jazz drums", 1.0, seed=5)])[0][0]


def others(source: Audio) -> list[GenerationRequest]:
    """Jobs that differ from TARGET in length, prompt, sampling, guidance and kind."""
    return [
        GenerationRequest("jazz drums", 0.5, seed=3, sampling=SamplingParams(top_k=20, temperature=0.8)),
        GenerationRequest("epic orchestral strings violin", 1.5, seed=9, sampling=SamplingParams(guidance=1.0)),
        GenerationRequest("calm", 0.7, seed=2, audio_prompt=source,
                          sampling=SamplingParams(top_p=0.9, top_k=0, guidance=2.0)),
    ]


def generate_path_codes(backend: MusicGenBackend, request: GenerationRequest) -> torch.Tensor:
    """Today's path: the seeded `generate` call, un-delayed codes per variation."""
    texts, seeds, new_tokens = backend._rows([request])
    frames = backend._run(texts, seeds, new_tokens, request.sampling, prompt_codes=None, progress=None,
                          should_stop=None)
    return torch.stack(frames)


def run_alone(backend, request: GenerationRequest, **options):
    decoder = MusicGenDecoder(backend, slots=6, max_positions=200, **options)
    handle = decoder.submit(request)
    decoder.run_until_idle()
    assert handle.state is DecodeState.DONE
    return handle


def same_audio(a: list[Audio], b: list[Audio]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x.samples, y.samples) for x, y in zip(a, b))


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(guidance=1.0),
                                      SamplingParams(top_k=0, top_p=0.8, temperature=1.3, guidance=4.0)])
def test_alone_matches_generate_path_codes(tiny_backend, sampling):
    request = GenerationRequest("lo-fi piano rainy night", 1.0, variations=2, seed=7, sampling=sampling)
    handle = run_alone(tiny_backend, request)
    assert torch.equal(handle.codes, generate_path_codes(tiny_backend, request))
    # and so the same audio as MusicGenBackend.generate, sample for sample
    assert same_audio(handle.result(), tiny_backend.generate([request])[0])


def test_alone_matches_generate_path_codes_in_bf16(bf16_backend):
    handle = run_alone(bf16_backend, TARGET)
    assert torch.equal(handle.codes, generate_path_codes(bf16_backend, TARGET))


@pytest.mark.parametrize("k", [0, 1, 7, 23])
def test_joined_at_step_k_matches_alone(tiny_backend, source_audio, k):
    alone = run_alone(tiny_backend, TARGET).codes
    decoder = MusicGenDecoder(tiny_backend, slots=6, max_positions=200)
    early = [decoder.submit(r) for r in others(source_audio)]
    for _ in range(k):
        decoder.step()
    joined = decoder.submit(TARGET)
    decoder.run_until_idle()
    assert torch.equal(joined.codes, alone)
    # the jobs it joined are unchanged by it, too
    for request, handle in zip(others(source_audio), early):
        assert torch.equal(handle.codes, run_alone(tiny_backend, request).codes)


@pytest.mark.parametrize("mode", [StepMode.BATCHED, StepMode.STATIC])
@pytest.mark.parametrize("k", [0, 5])
def test_joined_matches_alone_in_batched_and_static_modes_bf16(bf16_backend, source_audio, mode, k):
    alone = run_alone(bf16_backend, TARGET, mode=mode).codes
    decoder = MusicGenDecoder(bf16_backend, slots=6, max_positions=200, mode=mode)
    for r in others(source_audio):
        decoder.submit(r)
    for _ in range(k):
        decoder.step()
    joined = decoder.submit(TARGET)
    decoder.run_until_idle()
    assert torch.equal(joined.codes, alone)


def test_batched_and_static_modes_match_generate_path_codes_in_fp32(tiny_backend):
    expected = generate_path_codes(tiny_backend, TARGET)
    for mode in (StepMode.BATCHED, StepMode.STATIC):
        assert torch.equal(run_alone(tiny_backend, TARGET, mode=mode).codes, expected), mode


def test_continuation_matches_continuation_path(tiny_backend, source_audio):
    request = GenerationRequest("calm", 0.7, variations=2, seed=2, audio_prompt=source_audio,
                                sampling=SamplingParams(guidance=2.0))
    handle = run_alone(tiny_backend, request)
    assert handle.state is DecodeState.DONE
    assert same_audio(handle.result(), tiny_backend.generate([request])[0])


def test_windowed_continuation_through_the_decoder_backend_matches(tiny_backend, source_audio):
    decoder_backend = DecoderBackend(MusicGenDecoder(tiny_backend, slots=2))
    ours = continue_audio(decoder_backend, source_audio, "jazz drums", 1.5, variations=2, seed=6)
    today = continue_audio(tiny_backend, source_audio, "jazz drums", 1.5, variations=2, seed=6)
    assert same_audio(ours, today)


def test_chunked_prefill_gives_the_same_codes(tiny_backend, source_audio):
    request = others(source_audio)[2]
    whole = run_alone(tiny_backend, request)
    decoder = MusicGenDecoder(tiny_backend, slots=6, max_positions=200, prefill_chunk=8)
    running = decoder.submit(TARGET)
    decoder.step()
    chunked = decoder.submit(request)
    decoder.step()
    assert chunked.state is DecodeState.PREFILL  # 51 prefix positions, 8 a step
    before = running.step
    decoder.step()
    assert running.step == before + 1  # the running job keeps drawing while the prompt is prefilled
    decoder.run_until_idle()
    assert torch.equal(chunked.codes, whole.codes)
    assert torch.equal(running.codes, run_alone(tiny_backend, TARGET).codes)


def test_cancel_mid_run_frees_the_slot_and_the_next_job_is_unaffected(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=2, max_positions=200)
    first = decoder.submit(GenerationRequest("jazz drums", 2.0, variations=2, seed=1))
    for _ in range(10):
        decoder.step()
    assert decoder.free_slots() == 0 and first.step == 10
    first.cancel()
    nxt = decoder.submit(TARGET)
    decoder.step()
    assert first.state is DecodeState.CANCELLED and first.step == 10
    assert nxt.state is DecodeState.RUNNING and nxt.first_step == decoder.steps_run
    decoder.run_until_idle()
    assert torch.equal(nxt.codes, run_alone(tiny_backend, TARGET).codes)
    assert decoder.free_slots() == 2
    with pytest.raises(Exception, match="cancelled"):
        first.result()


def test_a_job_leaves_at_its_own_length_with_its_progress(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    seen: list[tuple[int, int]] = []
    long = decoder.submit(GenerationRequest("jazz drums", 2.0, seed=1))
    short = decoder.submit(GenerationRequest("calm", 0.5, seed=2), progress=lambda p: seen.append((p.step, p.total)))
    for _ in range(tokens_for(0.5)):
        decoder.step()
    assert short.state is DecodeState.DONE and long.state is DecodeState.RUNNING
    assert short.result()[0].samples.shape == (1, 16000)
    assert seen == [(s, tokens_for(0.5)) for s in range(1, tokens_for(0.5) + 1)]
    assert decoder.free_slots() == 3
    decoder.run_until_idle()
    assert long.result()[0].samples.shape == (1, 64000)


def test_a_text_job_joins_at_the_next_step(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=4, max_positions=200)
    decoder.submit(GenerationRequest("jazz drums", 1.0, seed=1))
    for _ in range(3):
        decoder.step()
    late = decoder.submit(GenerationRequest("calm", 0.5, seed=2))
    decoder.step()
    assert late.first_step - late.submitted_step == 1


def test_a_job_waits_for_free_slots(tiny_backend):
    decoder = MusicGenDecoder(tiny_backend, slots=2, max_positions=200)
    decoder.submit(GenerationRequest("jazz drums", 0.5, seed=1))
    big = decoder.submit(GenerationRequest("calm", 0.5, variations=2, seed=2))
    decoder.step()
    assert big.state is DecodeState.QUEUED
    decoder.run_until_idle()
    assert big.state is DecodeState.DONE
    assert big.first_step == tokens_for(0.5) + 1  # admitted the step after the first job left


def test_decoder_backend_runs_mixed_sampling_in_one_call(tiny_backend):
    requests = [GenerationRequest("jazz drums", 0.5, seed=3, sampling=SamplingParams(top_k=20)),
                GenerationRequest("calm ambient synth", 0.8, variations=2, seed=4, sampling=SamplingParams(guidance=1.5))]
    backend = DecoderBackend(MusicGenDecoder(tiny_backend, slots=4, max_positions=200))
    progress = []
    results = backend.generate(requests, progress=progress.append)
    for request, got in zip(requests, results):
        assert same_audio(got, tiny_backend.generate([request])[0])
    assert progress[-1].step == progress[-1].total == tokens_for(0.8)


def test_decoder_backend_should_stop_cancels(tiny_backend):
    backend = DecoderBackend(MusicGenDecoder(tiny_backend, slots=2, max_positions=200))
    with pytest.raises(Exception, match="cancelled"):
        backend.generate([GenerationRequest("jazz drums", 1.0)], should_stop=lambda: True)
    assert backend.free_slots() == 2


@pytest.mark.parametrize("request_, message", [
    (GenerationRequest("a", 0.0), "more than 0"),
    (GenerationRequest("a", 1.0, variations=3), "between 1 and 2"),
    (GenerationRequest("a", 31.0), "at most 30"),
    (GenerationRequest("a", 5.0), "too long"),
    (GenerationRequest("a", 1.0, melody=Audio(np.zeros((1, 32000), np.float32), 32000)), "cannot follow a melody"),
])
def test_bad_requests_are_refused_with_a_message(tiny_backend, request_, message):
    decoder = MusicGenDecoder(tiny_backend, slots=2, max_positions=200)
    with pytest.raises(ValueError, match=message):
        decoder.submit(request_)


def test_cuda_graphs_need_a_cuda_device(tiny_backend):
    with pytest.raises(ValueError, match="CUDA"):
        MusicGenDecoder(tiny_backend, slots=2, max_positions=200, mode=StepMode.STATIC, cuda_graphs=True)


# -- MusicGen-melody ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def melody_backend():
    from pathlib import Path

    from generation.melody import MelodyBackend

    return MelodyBackend.load(str(Path(__file__).parent / "fixtures" / "tiny-musicgen-melody"), device="cpu",
                              dtype="fp32")


def tune(freqs: list[float], seconds_each: float = 0.5) -> Audio:
    t = np.arange(int(seconds_each * 32000)) / 32000
    return Audio(np.concatenate([0.4 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)[None, :], 32000)


MELODY_JOBS = [
    GenerationRequest("jazz drums", 1.0, variations=2, seed=1, melody=tune([261.63, 329.63, 392.0])),
    GenerationRequest("calm ambient synth", 0.8, seed=5, melody=tune([440.0, 493.88], 1.0),
                      sampling=SamplingParams(guidance=1.0, top_k=40)),
]


@pytest.mark.parametrize("index", [0, 1])
def test_melody_alone_matches_remix_path(melody_backend, index):
    request = MELODY_JOBS[index]
    decoder = MusicGenDecoder(melody_backend, slots=4, max_positions=400)
    handle = decoder.submit(request)
    decoder.run_until_idle()
    assert same_audio(handle.result(), melody_backend.generate([request])[0])


@pytest.mark.parametrize("k", [0, 9])
def test_melody_joined_at_step_k_matches_alone(melody_backend, k):
    decoder = MusicGenDecoder(melody_backend, slots=4, max_positions=400)
    alone = []
    for request in MELODY_JOBS:
        handle = decoder.submit(request)
        decoder.run_until_idle()
        alone.append(handle.codes)
    early = decoder.submit(MELODY_JOBS[1])
    for _ in range(k):
        decoder.step()
    late = decoder.submit(MELODY_JOBS[0])
    decoder.run_until_idle()
    assert torch.equal(late.codes, alone[0]) and torch.equal(early.codes, alone[1])


def test_melody_decoder_refuses_what_it_cannot_do(melody_backend, tiny_backend, source_audio):
    decoder = MusicGenDecoder(melody_backend, slots=2, max_positions=400)
    with pytest.raises(ValueError, match="needs a melody"):
        decoder.submit(GenerationRequest("a", 1.0))
    with pytest.raises(ValueError, match="cannot continue"):
        decoder.submit(GenerationRequest("a", 1.0, melody=tune([440.0]), audio_prompt=source_audio))
    assert DecoderBackend(decoder).family == "musicgen-melody"


@pytest.mark.parametrize("chunk", [1, 64, 100])
def test_chunked_melody_prefill_gives_the_same_codes_as_unchunked_and_the_remix_path(melody_backend, chunk):
    request, other = MELODY_JOBS
    whole = MusicGenDecoder(melody_backend, slots=4, max_positions=400)
    unchunked, other_alone = whole.submit(request), whole.submit(other)
    whole.run_until_idle()
    decoder = MusicGenDecoder(melody_backend, slots=4, max_positions=400, prefill_chunk=chunk)
    running = decoder.submit(other)
    while running.state is not DecodeState.RUNNING:
        decoder.step()
    chunked = decoder.submit(request)
    decoder.step()
    assert chunked.state is DecodeState.PREFILL  # its chroma and text prefix (~240 positions) is longer than a chunk
    before = running.step
    decoder.step()
    assert running.step == before + 1  # the running job keeps drawing while the prefix is prefilled
    decoder.run_until_idle()
    assert torch.equal(chunked.codes, unchunked.codes)
    assert torch.equal(running.codes, other_alone.codes)
    assert same_audio(chunked.result(), melody_backend.generate([request])[0])


LONG_PROMPT = "lo-fi piano, rainy night, " * 12  # 300 characters: the bot's longest (71 tokens of the tiny fixture)


def test_the_longest_prompt_the_bot_sends_fits_a_slot_with_the_generate_path_codes(tiny_backend):
    prompt = LONG_PROMPT  # the bot cuts prompts at 300 characters
    request = GenerationRequest(prompt, 0.5, seed=3)
    assert len(tiny_backend.tokenizer(prompt)["input_ids"]) > 64  # more than the old text room
    decoder = MusicGenDecoder(tiny_backend, slots=2)  # the default sizes
    assert decoder.prompt_fits(prompt)
    handle = decoder.submit(request)
    decoder.run_until_idle()
    assert torch.equal(handle.codes, generate_path_codes(tiny_backend, request))


def test_a_remix_of_the_longest_duration_fits_the_melody_decoder(melody_backend):
    decoder = MusicGenDecoder(melody_backend, slots=1)  # the default sizes: room for the chroma and text prefix
    longest = GenerationRequest(LONG_PROMPT, melody_backend.max_duration_s, melody=tune([440.0]))
    decoder.check(longest)  # no "too long for one model call" (the plain remix path takes 30 s too)
    assert decoder.prompt_fits(longest.prompt)

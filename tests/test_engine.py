"""The MusicGen backend on the tiny fixture: seeds, batching, exact lengths, continuation, load errors."""

from __future__ import annotations

import numpy as np
import pytest

from generation.backend import ModelLoadError
from generation.continuation import ContinuationError, continue_audio, plan_windows
from generation.musicgen import MusicGenBackend
from generation.types import GenerationRequest, SamplingParams, tokens_for


def test_tokens_for_exact_durations():
    assert tokens_for(5.0) == 253  # 50 per second plus the delay pattern's 3
    assert tokens_for(0.5) == 28
    assert tokens_for(7.33) == 370  # rounded up to whole frames, cropped to the sample later


def test_same_seed_same_audio_alone_and_in_a_batch(tiny_backend):
    alone = tiny_backend.generate([GenerationRequest("lo-fi piano rainy night", 2.0, variations=2, seed=7)])[0]
    others = [GenerationRequest("jazz drums", 1.6, seed=3), GenerationRequest("epic orchestral strings", 2.3, seed=9)]
    batch = tiny_backend.generate([others[0], GenerationRequest("lo-fi piano rainy night", 2.0, 2, seed=7), others[1]])
    for a, b in zip(alone, batch[1]):
        assert a.samples.shape == b.samples.shape == (1, 64000)
        assert np.abs(a.samples - b.samples).max() < 1e-5
    # the other jobs in the batch are also the same as alone, at their own lengths
    for request, got in zip(others, (batch[0][0], batch[2][0])):
        own = tiny_backend.generate([request])[0][0]
        assert own.samples.shape == got.samples.shape == (1, round(request.duration_s * 32000))
        assert np.abs(own.samples - got.samples).max() < 1e-5


def test_variations_and_seeds_differ(tiny_backend):
    a, b = tiny_backend.generate([GenerationRequest("jazz drums", 1.0, variations=2, seed=1)])[0]
    c = tiny_backend.generate([GenerationRequest("jazz drums", 1.0, seed=2)])[0][0]
    assert np.abs(a.samples - b.samples).max() > 1e-3
    # variation 1 of seed 1 is seed 2
    assert np.abs(b.samples - c.samples).max() < 1e-5


def test_prompt_and_sampling_change_the_audio(tiny_backend):
    a = tiny_backend.generate([GenerationRequest("jazz drums", 1.0, seed=4)])[0][0]
    b = tiny_backend.generate([GenerationRequest("calm ambient synth", 1.0, seed=4)])[0][0]
    c = tiny_backend.generate([GenerationRequest("jazz drums", 1.0, seed=4, sampling=SamplingParams(guidance=1.0))])[0][0]
    assert np.abs(a.samples - b.samples).max() > 1e-3
    assert np.abs(a.samples - c.samples).max() > 1e-3


def test_mixed_sampling_in_one_batch_is_refused(tiny_backend):
    with pytest.raises(ValueError):
        tiny_backend.generate([GenerationRequest("a", 1.0), GenerationRequest("b", 1.0, sampling=SamplingParams(top_k=5))])


def test_continuation_starts_with_the_given_audio_and_is_longer(tiny_backend):
    source = tiny_backend.generate([GenerationRequest("jazz drums", 2.0, seed=5)])[0][0]
    out = continue_audio(tiny_backend, source, "jazz drums", 3.0, variations=2, seed=6)
    assert len(out) == 2
    for piece in out:
        assert piece.samples.shape == (1, 64000 + 96000)
        head = piece.samples[:, : 64000 - 1280]  # the last 40 ms crossfade into the continuation
        assert np.array_equal(head, source.samples[:, : 64000 - 1280])
        assert np.abs(piece.samples[:, 64000:]).max() > 1e-3
    assert np.abs(out[0].samples - out[1].samples).max() > 1e-3


def test_long_continuation_is_windowed_into_one_piece(tiny_backend):
    source = tiny_backend.generate([GenerationRequest("calm ambient", 1.0, seed=1)])[0][0]
    steps = []
    out = continue_audio(tiny_backend, source, "calm ambient", 40.0, seed=2, progress=steps.append)
    assert out[0].samples.shape == (1, 41 * 32000)
    windows = plan_windows(1.0, 40.0, max_call_s=30.0)
    assert len(windows) == 2 and windows[1][0] == 10.0
    assert steps[-1].step == steps[-1].total  # progress runs over all windows
    assert sorted({s.total for s in steps}) == [steps[-1].total]


def test_continuation_limits():
    with pytest.raises(ContinuationError, match="limit is 5 minutes"):
        plan_windows(100.0, 250.0, max_call_s=30.0)
    with pytest.raises(ContinuationError):
        plan_windows(10.0, 0.0, max_call_s=30.0)


def test_progress_and_cancellation(tiny_backend):
    seen = []

    def stop() -> bool:
        return len(seen) >= 5

    from generation.backend import GenerationCancelled

    with pytest.raises(GenerationCancelled):
        tiny_backend.generate([GenerationRequest("jazz", 3.0)], progress=seen.append, should_stop=stop)
    assert len(seen) == 5 and seen[0].total == tokens_for(3.0)


def test_model_load_error_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        MusicGenBackend.load("facebook/musicgen-does-not-exist", device="cpu")
    message = str(error.value)
    assert "python bot.py download facebook/musicgen-does-not-exist" in message
    assert "BANDMATE_MODEL" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="does not hold a loadable MusicGen checkpoint"):
        MusicGenBackend.load(str(tmp_path / "empty"), device="cpu")


def test_bf16_on_cpu_runs(tiny_model_path):
    backend = MusicGenBackend.load(tiny_model_path, device="cpu", dtype="bf16")
    assert backend.dtype == "bfloat16"
    audio = backend.generate([GenerationRequest("jazz", 0.5, seed=1)])[0][0]
    assert audio.samples.shape == (1, 16000) and np.isfinite(audio.samples).all()

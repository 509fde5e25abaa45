"""Remix through MusicGen-melody on the tiny melody fixture: chroma, seeds, batching, lengths, the runner, errors."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from generation.backend import ModelLoadError
from generation.jobs import Job, JobKind, Operation
from generation.melody import MelodyBackend, chroma_from_audio, loop_chroma, melody_backend
from generation.models import ModelRegistry
from generation.musicgen import MusicGenBackend
from generation.runner import JobRunner
from generation.types import Audio, GenerationRequest, SamplingParams, tokens_for
from storage.files import FileStore

ROOT = Path(__file__).resolve().parent.parent
TINY_MELODY = str(ROOT / "tests" / "fixtures" / "tiny-musicgen-melody")
SR = 32_000
C4, E4, G4, A4, B4, D4 = 261.63, 329.63, 392.00, 440.00, 493.88, 293.66



@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def melody_model(registry) -> MelodyBackend:
    return registry.get(TINY_MELODY)


def notes(freqs: list[float], seconds_each: float, rate: int, *, harmonics: int = 4, channels: int = 1) -> np.ndarray:
    """Harmonic tones one after another (amplitude halving per harmonic), shaped (channels, frames)."""
    n = int(seconds_each * rate)
    t = np.arange(n) / rate
    parts = []
    for f in freqs:
        tone = sum(0.5 ** h * np.sin(2 * np.pi * f * (h + 1) * t) for h in range(harmonics))
        parts.append(0.4 * tone * np.hanning(n) ** 0.1)
    mono = np.concatenate(parts).astype(np.float32)
    return np.repeat(mono[None, :], channels, axis=0)


def melody(freqs: list[float], seconds_each: float = 1.0) -> Audio:
    return Audio(notes(freqs, seconds_each, SR), SR)


# --- chroma --------------------------------------------------------------------------------------------------------


def test_chroma_of_a_c_major_arpeggio_peaks_at_c_e_g():
    samples = notes([C4, E4, G4], 1.5, 44_100, channels=2)  # stereo, 44.1 kHz: resampled inside
    chroma = chroma_from_audio(samples, 44_100)
    assert chroma.shape == (1 + int(4.5 * SR) // 4096, 12)  # 4.5 s at 32 kHz, hop 4096: not padded to 30 s
    assert chroma.dtype == np.float32 and np.array_equal(chroma.sum(axis=1), np.ones(len(chroma)))
    peaks = chroma.argmax(axis=1)
    assert set(peaks.tolist()) == {0, 4, 7}  # C, E, G and nothing else
    frame_s = 4096 / SR
    for index, pitch_class in enumerate((0, 4, 7)):  # the frames well inside each note
        middle = [peaks[f] for f in range(len(peaks)) if index * 1.5 + 0.4 < f * frame_s < index * 1.5 + 1.1]
        assert middle and set(middle) == {pitch_class}


def _extractor_chroma(waveform: np.ndarray) -> np.ndarray:
    """transformers' MusicgenMelodyFeatureExtractor._torch_extract_fbank_features, run as is, with torchaudio's
    Spectrogram(n_fft=win=16384, hop=4096, power=2, center=True, normalized=True) written out with torch.stft."""
    from transformers.audio_utils import chroma_filter_bank
    from transformers.models.musicgen_melody.feature_extraction_musicgen_melody import (
        MusicgenMelodyFeatureExtractor,
    )

    n_fft, hop = 16384, 4096
    window = torch.hann_window(n_fft)

    def spectrogram(wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                          pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        spec = spec / window.pow(2.0).sum().sqrt()
        return spec.abs().pow(2.0)

    fake_self = types.SimpleNamespace(
        n_fft=n_fft, spectrogram=spectrogram,
        chroma_filters=torch.from_numpy(chroma_filter_bank(sampling_rate=SR, num_frequency_bins=n_fft, tuning=0,
                                                           num_chroma=12)).float(),
    )
    wave = torch.from_numpy(waveform.mean(axis=0, dtype=np.float32))[None, :]
    return MusicgenMelodyFeatureExtractor._torch_extract_fbank_features(fake_self, wave)[0].numpy()


@pytest.mark.parametrize("seconds", [6.3, 0.3])  # the second is shorter than one window: centred in zeros
def test_chroma_matches_the_extractor_recipe(seconds):
    rng = np.random.default_rng(3)
    freqs = list(rng.choice([C4, D4, E4, G4, A4, B4, 2 * C4, 2 * A4], size=9))
    samples = notes(freqs, seconds / 9, SR, channels=2)
    samples[1] *= 0.6  # a stereo mix with unequal channels
    samples = samples + 0.01 * rng.standard_normal(samples.shape).astype(np.float32)
    ours = chroma_from_audio(samples, SR)
    theirs = _extractor_chroma(samples)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    assert np.array_equal(ours, theirs)


def test_chroma_is_looped_not_padded():
    chroma = chroma_from_audio(notes([C4, G4], 1.0, SR), SR)
    looped = loop_chroma(chroma, 235)
    assert looped.shape == (235, 12)
    assert np.array_equal(looped[: len(chroma)], chroma)
    assert np.array_equal(looped[len(chroma): 2 * len(chroma)], chroma)
    with pytest.raises(ValueError):
        chroma_from_audio(np.zeros((1, 0), np.float32), SR)


# --- remix ---------------------------------------------------------------------------------------------------------


def test_registry_picks_the_melody_backend(melody_model):
    assert isinstance(melody_model, MelodyBackend)
    assert melody_model.family == "musicgen-melody" and not melody_model.supports_continuation
    assert melody_model.sample_rate == SR and melody_model.chroma_length == 235


def test_remix_exact_durations_seeds_and_variations(melody_model):
    tune = melody([C4, E4, G4])
    a, b = melody_model.generate([GenerationRequest("jazz drums", 1.0, variations=2, seed=1, melody=tune)])[0]
    c = melody_model.generate([GenerationRequest("jazz drums", 1.0, seed=2, melody=tune)])[0][0]
    assert a.samples.shape == (1, SR) and np.isfinite(a.samples).all()
    assert np.abs(a.samples - b.samples).max() > 1e-3  # variations differ
    assert np.abs(b.samples - c.samples).max() < 1e-5  # variation 1 of seed 1 is seed 2
    odd = melody_model.generate([GenerationRequest("jazz drums", 0.73, seed=1, melody=tune)])[0][0]
    assert odd.samples.shape == (1, round(0.73 * SR))


def test_remix_follows_the_melody_and_the_prompt(melody_model):
    def make(prompt: str, tune: Audio) -> np.ndarray:
        return melody_model.generate([GenerationRequest(prompt, 1.0, seed=4, melody=tune)])[0][0].samples

    base = make("jazz drums", melody([C4, E4, G4]))
    assert np.abs(base - make("jazz drums", melody([A4, D4, B4]))).max() > 1e-3  # another melody, same seed/prompt
    assert np.abs(base - make("calm ambient synth", melody([C4, E4, G4]))).max() > 1e-3
    assert np.abs(base - make("jazz drums", melody([C4, E4, G4]))).max() < 1e-5  # and it is deterministic


def test_remix_alone_equals_batched(melody_model):
    """Other jobs in the batch (other melodies and lengths, other prompt token counts) change nothing."""
    requests = [
        GenerationRequest("calm ambient synth", 0.8, seed=5, melody=melody([A4, B4], 1.5)),
        GenerationRequest("jazz drums", 1.0, variations=2, seed=1, melody=melody([C4, E4, G4])),
        GenerationRequest("rock", 1.1, seed=3, melody=melody([D4, G4, C4, E4], 0.5)),
        GenerationRequest("lo-fi piano", 0.9, seed=8, melody=melody([G4, E4, C4])),
    ]
    steps = []
    batch = melody_model.generate(requests, progress=steps.append)
    for request, got in zip(requests, batch):
        alone = melody_model.generate([request])[0]
        assert len(got) == len(alone) == request.variations
        for x, y in zip(alone, got):
            assert x.samples.shape == y.samples.shape == (1, round(request.duration_s * SR))
            assert np.abs(x.samples - y.samples).max() < 1e-5
    # progress runs once over every model call of the batch (one per prompt token count)
    assert steps[-1].step == steps[-1].total >= tokens_for(1.1)
    assert [s.step for s in steps] == list(range(1, steps[-1].total + 1))


def test_bf16_on_cpu_runs():
    backend = MelodyBackend.load(TINY_MELODY, device="cpu", dtype="bf16")
    assert backend.dtype == "bfloat16" and backend.model.audio_enc_to_dec_proj.weight.dtype == torch.bfloat16
    audio = backend.generate([GenerationRequest("jazz", 0.5, seed=1, melody=melody([C4, G4]))])[0][0]
    assert audio.samples.shape == (1, SR // 2) and np.isfinite(audio.samples).all()


def test_remix_requests_are_checked(melody_model):
    with pytest.raises(ValueError, match="needs a melody"):
        melody_model.generate([GenerationRequest("jazz", 1.0)])
    with pytest.raises(ValueError, match="sampling"):
        melody_model.generate([GenerationRequest("a", 1.0, melody=melody([C4])),
                               GenerationRequest("b", 1.0, melody=melody([C4]), sampling=SamplingParams(top_k=5))])
    with pytest.raises(ValueError, match="cannot continue"):
        melody_model.generate([GenerationRequest("a", 1.0, melody=melody([C4]), audio_prompt=melody([C4]))])


def test_remix_job_through_the_runner(registry, tmp_path):
    media = FileStore(tmp_path / "data")
    source_rel = media.path_for("source1", "wav")
    source = media.absolute(source_rel)
    source.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(source), notes([C4, E4, G4], 0.8, 44_100, channels=2).T, 44_100)
    runner = JobRunner(registry, media)
    job = Job(user_id="u1", prompt="epic orchestral strings", duration_s=1.2, model=TINY_MELODY, kind=JobKind.REMIX,
              operation=Operation.REMIX, variations=2, seed=21, input_audio=source_rel, parent_track_id="source1")
    steps = []
    audios = runner.generate([job], progress=steps.append)
    assert list(audios) == [job.id] and len(audios[job.id]) == 2
    assert all(a.samples.shape == (1, round(1.2 * SR)) for a in audios[job.id])
    assert steps[-1].step == steps[-1].total == tokens_for(1.2)
    tracks = runner.render(job, audios[job.id])
    assert [t.seed for t in tracks] == [21, 22]
    for track in tracks:
        assert track.params["kind"] == "remix" and track.params["parent_track_id"] == "source1"
        assert abs(track.duration_s - 1.2) < 1e-6
        for rel in (track.mp3, track.flac, track.png):
            assert media.absolute(rel).is_file()


# --- errors --------------------------------------------------------------------------------------------------------


def test_missing_melody_model_says_what_to_set(tmp_path, registry, tiny_model_path):
    with pytest.raises(ModelLoadError) as error:
        MelodyBackend.load("facebook/musicgen-melody-does-not-exist", device="cpu")
    message = str(error.value)
    assert message.startswith("Remix needs a melody model: set BANDMATE_MELODY_MODEL to facebook/musicgen-melody")
    assert "python bot.py download facebook/musicgen-melody-does-not-exist" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="does not hold a loadable MusicGen-melody checkpoint"):
        MelodyBackend.load(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(ModelLoadError, match="cannot follow a melody"):
        MelodyBackend.load(tiny_model_path, device="cpu")

    # Through the runner: no model configured, a model that is missing, a plain MusicGen model.
    runner = JobRunner(registry, FileStore(tmp_path / "data"))
    for model_id, detail in (("", "No melody model is configured"),
                              (str(tmp_path / "empty"), "does not hold a loadable MusicGen checkpoint"),
                              (tiny_model_path, "is a musicgen model, which cannot follow a melody")):
        job = Job(user_id="u1", prompt="x", duration_s=1.0, model=model_id, kind=JobKind.REMIX, input_audio="a.wav")
        with pytest.raises(ModelLoadError, match="^Remix needs a melody model: set BANDMATE_MELODY_MODEL") as error:
            runner.generate([job])
        assert detail in str(error.value)
    assert isinstance(registry.get(tiny_model_path), MusicGenBackend)
    with pytest.raises(ModelLoadError):
        melody_backend(registry, None)

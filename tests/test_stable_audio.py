"""The Stable Audio backend on the tiny fixture (tests/fixtures/tiny-stable-audio, loaded with from_pretrained
offline): exact stereo durations, per-row seeds, progress, cancellation, audio-to-audio strength, load errors,
registry dispatch, the job runner and the scheduler's batching rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from generation.backend import GenerationCancelled, ModelLoadError
from generation.continuation import ContinuationError
from generation.jobs import Job, JobKind, Operation
from generation.models import ModelRegistry, is_stable_audio
from generation.musicgen import choose_device
from generation.runner import JobRunner
from generation.spec import JobSpec
from generation.batching import batch_compatible, job_steps
from generation.stable_audio import NO_CONTINUATION, StableAudioBackend, sigma_for_strength
from generation.types import Audio, GenerationRequest, SamplingParams
from storage.files import FileStore

ROOT = Path(__file__).resolve().parent.parent
TINY_SA = str(ROOT / "tests" / "fixtures" / "tiny-stable-audio")
SR = 44_100
GUIDANCE = SamplingParams(guidance=7.0)
STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is far faster on one thread, and does not crawl when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sa(registry) -> StableAudioBackend:
    return registry.get(TINY_SA)


def req(prompt: str, seconds: float, seed: int = 0, variations: int = 1, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, seconds, variations=variations, seed=seed, sampling=GUIDANCE,
                             steps=kw.pop("steps", STEPS), **kw)


def gap(a: Audio, b: Audio) -> float:
    return float(np.abs(a.samples - b.samples).max())


# --- the backend ---------------------------------------------------------------------------------------------------


def test_registry_dispatch_and_what_the_backend_says(registry, sa, tiny_model_path):
    assert isinstance(sa, StableAudioBackend)
    assert (sa.family, sa.license, sa.supports_continuation) == ("stable-audio", "Stability AI Community License",
                                                                 False)
    assert sa.sample_rate == SR and sa.channels == 2
    assert sa.window_s == pytest.approx(32 * 2048 / SR)  # the fixture's window: 32 latent frames
    assert sa.max_duration_s == 1.0  # whole seconds of the window, as 47 s of stable-audio-open's 47.55 s
    assert is_stable_audio(TINY_SA) and not is_stable_audio(tiny_model_path)
    assert is_stable_audio("stabilityai/stable-audio-open-1.0")  # not cached, offline: the name decides


def test_exact_stereo_durations(sa):
    out = sa.generate([req("jazz drums", 0.73, seed=1, variations=2), req("calm piano", 1.0, seed=2)])
    assert [len(v) for v in out] == [2, 1]
    for audio, seconds in ((out[0][0], 0.73), (out[0][1], 0.73), (out[1][0], 1.0)):
        assert audio.sample_rate == SR
        assert audio.samples.shape == (2, round(seconds * SR)) and audio.samples.dtype == np.float32
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 1e-3
        assert np.abs(audio.samples[0] - audio.samples[1]).max() > 1e-4  # two channels, not mono copied
    with pytest.raises(ValueError, match="0 to 1 s"):
        sa.generate([req("too long", 1.2)])


def test_same_seed_same_audio_alone_and_in_a_batch(sa):
    alone = sa.generate([req("lo-fi piano rainy night", 0.6, seed=7, variations=2)])[0]
    others = [req("jazz drums", 1.0, seed=3), req("epic orchestral strings", 0.25, seed=9)]
    batch = sa.generate([others[0], req("lo-fi piano rainy night", 0.6, seed=7, variations=2), others[1]])
    for a, b in zip(alone, batch[1]):
        assert a.samples.shape == b.samples.shape == (2, round(0.6 * SR))
        assert gap(a, b) < 1e-5
    for request, got in zip(others, (batch[0][0], batch[2][0])):  # each row keeps its own duration conditioning
        assert gap(sa.generate([request])[0][0], got) < 1e-5
    # variations differ, and variation 1 of seed 7 is seed 8
    assert gap(alone[0], alone[1]) > 1e-2
    assert gap(alone[1], sa.generate([req("lo-fi piano rainy night", 0.6, seed=8)])[0][0]) < 1e-5
    # the duration is conditioning, not only a crop, so the batch test above is a real one
    shorter = sa.generate([req("lo-fi piano rainy night", 0.4, seed=7)])[0][0]
    assert gap(shorter, Audio(alone[0].samples[:, :shorter.samples.shape[1]], SR)) > 1e-4


def test_prompt_guidance_and_negative_prompt_change_the_audio(sa):
    base = sa.generate([req("jazz drums", 0.5, seed=4)])[0][0]
    assert gap(base, sa.generate([req("calm ambient synth", 0.5, seed=4)])[0][0]) > 1e-3
    plain = GenerationRequest("jazz drums", 0.5, seed=4, sampling=SamplingParams(guidance=1.0), steps=STEPS)
    assert gap(base, sa.generate([plain])[0][0]) > 1e-3
    negative = sa.generate([req("jazz drums", 0.5, seed=4, negative_prompt="calm")])[0][0]
    assert gap(base, negative) > 1e-3
    # per-row negative prompts share a call; with and without one cannot
    pair = sa.generate([req("jazz drums", 0.5, seed=4, negative_prompt="calm"),
                        req("jazz drums", 0.5, seed=4, negative_prompt="bright")])
    assert gap(pair[0][0], negative) < 1e-5 and gap(pair[1][0], negative) > 1e-4
    with pytest.raises(ValueError, match="negative prompt"):
        sa.generate([req("a", 0.5), req("b", 0.5, negative_prompt="c")])
    with pytest.raises(ValueError, match="steps"):
        sa.generate([req("a", 0.5), req("b", 0.5, steps=STEPS + 1)])


def test_progress_per_step_and_cancellation(sa):
    seen = []
    sa.generate([req("jazz", 0.5, steps=5)], progress=seen.append)
    assert [(p.step, p.total) for p in seen] == [(i, 5) for i in range(1, 6)]

    seen.clear()
    with pytest.raises(GenerationCancelled):
        sa.generate([req("jazz", 0.5, steps=8)], progress=seen.append, should_stop=lambda: len(seen) >= 3)
    assert len(seen) == 3 and seen[-1].total == 8
    # the backend is usable again after a cancelled call
    assert sa.generate([req("jazz", 0.5, steps=2)])[0][0].samples.shape == (2, SR // 2)


def test_variation_strength_stays_closer_to_the_input_when_low(sa):
    a = sa.generate([req("epic orchestral strings", 1.0, seed=5)])[0][0]
    b = sa.generate([req("calm ambient", 1.0, seed=6)])[0][0]
    # What the fixture's autoencoder makes of `a` unchanged: the output the input's own latents would give.
    window = torch.from_numpy(sa._init_waveform(a))[None]
    with torch.no_grad():
        reconstruction = sa.pipe.vae.decode(sa.pipe.vae.encode(window).latent_dist.mean).sample[0, :, :SR].numpy()

    def vary(source: Audio, strength: float) -> list[Audio]:
        return sa.generate([req("jazz drums", 1.0, seed=7, variations=3, init_audio=source, strength=strength)])[0]

    def closeness(outs: list[Audio]) -> float:
        return float(np.mean([np.corrcoef(o.samples.ravel(), reconstruction.ravel())[0, 1] for o in outs]))

    low_a, high_a = vary(a, 0.1), vary(a, 1.0)
    low_b, high_b = vary(b, 0.1), vary(b, 1.0)
    assert all(o.samples.shape == (2, SR) for o in low_a + high_a)
    assert closeness(low_a) > closeness(high_a) + 0.2
    # at the model's own noise level the input hardly matters; at a low one it does
    low_effect = np.mean([gap(x, y) for x, y in zip(low_a, low_b)])
    high_effect = np.mean([gap(x, y) for x, y in zip(high_a, high_b)])
    assert low_effect > 20 * high_effect
    # a mono 22.05 kHz input is resampled to 44.1 kHz stereo
    mono = Audio(a.samples.mean(axis=0, keepdims=True)[:, ::2].copy(), 22_050)
    assert sa.generate([req("jazz drums", 1.0, seed=7, init_audio=mono, strength=0.1)])[0][0].samples.shape == (2, SR)
    with pytest.raises(ValueError, match="text and audio-to-audio"):
        sa.generate([req("a", 0.5), req("b", 0.5, init_audio=a, strength=0.5)])


def test_strength_maps_to_sigma_max():
    assert sigma_for_strength(1.0, 500.0, 0.3) == pytest.approx(500.0)
    assert sigma_for_strength(0.0, 500.0, 0.3) == pytest.approx(1.0)
    assert 1.0 < sigma_for_strength(0.5, 500.0, 0.3) < 500.0
    assert sigma_for_strength(0.5, 500.0, 0.3) == pytest.approx(500.0 ** 0.5)  # log-linear
    assert sigma_for_strength(-1.0, 500.0, 0.3) == pytest.approx(1.0)  # clamped to [0, 1]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchsde's float-edge warnings about the Brownian interval
def test_the_real_models_scheduler_keeps_rows_independent():
    """stable-audio-open-1.0 uses CosineDPMSolverMultistepScheduler (SDE noise from torchsde, seeded per row from
    the row's generator): batching must not change a row with it either."""
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(TINY_SA)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
        prediction_type="v_prediction", rho=7.0, final_sigmas_type="zero",
    )
    backend = StableAudioBackend(pipe, "tiny-cosine", choose_device("cpu", "fp32"))
    alone = backend.generate([req("jazz drums", 0.5, seed=3, variations=2)])[0]
    batch = backend.generate([req("calm", 1.0, seed=11), req("jazz drums", 0.5, seed=3, variations=2)])[1]
    assert all(gap(x, y) < 1e-5 for x, y in zip(alone, batch))
    assert gap(alone[0], alone[1]) > 1e-2


def test_bf16_on_cpu_runs():
    backend = StableAudioBackend.load(TINY_SA, device="cpu", dtype="bf16")
    assert backend.dtype == "bfloat16"
    audio = backend.generate([req("jazz", 0.5, seed=1, steps=3)])[0][0]
    assert audio.samples.shape == (2, SR // 2) and audio.samples.dtype == np.float32
    assert np.isfinite(audio.samples).all()


def test_load_errors_say_what_to_do(tmp_path, registry):
    with pytest.raises(ModelLoadError) as error:
        StableAudioBackend.load("stabilityai/stable-audio-open-1.0", device="cpu")
    message = str(error.value)
    assert "accept the licence on the model's hub page" in message and "HF_TOKEN" in message
    assert "python bot.py download stabilityai/stable-audio-open-1.0" in message
    # through the registry too: a hub id named stable-audio goes to this loader even when nothing can be read
    with pytest.raises(ModelLoadError, match="HF_TOKEN"):
        registry.get("stabilityai/stable-audio-open-1.0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="does not hold a loadable Stable Audio pipeline"):
        StableAudioBackend.load(str(tmp_path / "empty"), device="cpu")


# --- runner and scheduler ------------------------------------------------------------------------------------------


def sa_job(**kw) -> Job:
    spec = JobSpec.from_dict({"steps": STEPS, **kw.pop("spec", {})})
    return Job(user_id="u1", prompt=kw.pop("prompt", "lo-fi piano"), duration_s=kw.pop("duration_s", 0.8),
               model=TINY_SA, sampling=kw.pop("sampling", GUIDANCE), spec=spec, **kw)


def test_jobs_through_the_runner_make_stereo_tracks(registry, sa, tmp_path):
    media = FileStore(tmp_path / "data")
    runner = JobRunner(registry, media)
    job = sa_job(variations=2, seed=21, spec={"negative_prompt": "calm"})
    steps = []
    audios = runner.generate([job], progress=steps.append)
    assert [a.samples.shape for a in audios[job.id]] == [(2, round(0.8 * SR))] * 2
    assert steps[-1].step == steps[-1].total == STEPS == job_steps(job)
    tracks = runner.render(job, audios[job.id])
    assert [t.seed for t in tracks] == [21, 22]
    for track in tracks:
        assert track.params["steps"] == STEPS and track.params["negative_prompt"] == "calm"
        assert abs(track.duration_s - 0.8) < 1e-6
        flac = sf.info(str(media.absolute(track.flac)))
        assert (flac.channels, flac.samplerate) == (2, SR)
        mp3 = media.absolute(track.mp3)
        assert mp3.is_file() and mp3.stat().st_size > 1000 and media.absolute(track.png).is_file()
        assert sf.info(str(mp3)).channels == 2

    # A variation of the stored track with a strength varies that audio (audio-to-audio).
    variation = sa_job(seed=40, operation=Operation.VARIATION, input_audio=tracks[0].flac,
                       parent_track_id=tracks[0].id, spec={"strength": 0.2})
    plain = sa_job(seed=40, operation=Operation.VARIATION, parent_track_id=tracks[0].id)
    varied, fresh = runner.generate([variation])[variation.id][0], runner.generate([plain])[plain.id][0]
    assert varied.samples.shape == fresh.samples.shape == (2, round(0.8 * SR))
    assert gap(varied, fresh) > 1e-3
    assert runner.render(variation, [varied])[0].params["strength"] == 0.2

    # Stable Audio cannot continue audio: the job fails with a message for the user.
    for kind in (JobKind.CONTINUE, JobKind.SONG):
        with pytest.raises(ContinuationError) as error:
            runner.generate([sa_job(kind=kind, input_audio=tracks[0].flac)])
        assert str(error.value) == NO_CONTINUATION == ("Stable Audio can't continue audio; switch this server to "
                                                       "MusicGen for that.")


def test_scheduler_batches_stable_audio_by_settings_not_duration():
    head = sa_job(duration_s=1.0)
    assert batch_compatible(head, sa_job(duration_s=0.2), [1.0])  # any durations: the whole window is denoised
    assert not batch_compatible(head, sa_job(spec={"steps": STEPS + 1}), [1.0])
    assert not batch_compatible(head, sa_job(spec={"strength": 0.5}), [1.0])
    assert not batch_compatible(head, sa_job(spec={"negative_prompt": "calm"}), [1.0])
    assert not batch_compatible(head, sa_job(sampling=SamplingParams(guidance=3.0)), [1.0])
    assert job_steps(sa_job(spec={"steps": 50})) == 50 and job_steps(sa_job(spec={"steps": None})) == 100
    # MusicGen jobs keep the duration rule
    musicgen = Job(user_id="u", prompt="x", duration_s=10.0, model="m")
    assert not batch_compatible(musicgen, Job(user_id="v", prompt="y", duration_s=5.0, model="m"), [10.0])


@pytest.mark.asyncio
async def test_a_compose_without_guidance_gets_the_familys_default(tmp_path):
    """The command line and /compose share one path: a Stable Audio model runs at its own guidance (7), not
    MusicGen's 3, unless guidance is given."""
    from bot.planner import ComposeOptions, CoreConfig, Planner
    from bot.request import Request, Requester
    from generation.models import Family, model_info
    from storage.database import Database
    from storage.jobstore import ConversationLinks

    db = Database(tmp_path / "bandmate.db")
    try:
        planner = Planner(scheduler=None, store=None, links=ConversationLinks(db), files=None,
                          config=CoreConfig(default_model=TINY_SA), model_info=model_info)
        who = Request(Requester("cli"))
        assert model_info(TINY_SA).family is Family.STABLE_AUDIO
        default = await planner.plan_compose(who, ComposeOptions(prompt="rain", duration_s=2.0))
        chosen = await planner.plan_compose(who, ComposeOptions(prompt="rain", duration_s=2.0, guidance=4.0))
        assert default.job.sampling.guidance == 7.0 and chosen.job.sampling.guidance == 4.0
    finally:
        db.close()

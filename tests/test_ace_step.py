"""The ACE-Step backend on the tiny fixture (tests/fixtures/tiny-ace-step, loaded with AceStepPipeline.from_pretrained
offline): every task type's shapes, rates and durations; repaint keeps the source exactly outside its range; seeds;
stems; reference audio; progress and cancellation; refusals; load errors; the fixture matches its build script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from generation.ace_audio import splice_repaint
from generation.ace_requests import (
    AceRequest, AceRequestError, AceTask, batch_key, from_generation_request, resolved_duration,
)
from generation.ace_step import AceStepBackend, is_ace_step, model_facts
from generation.backend import GenerationCancelled, ModelLoadError
from generation.lyrics import LyricsError, estimate_duration
from generation.types import Audio, GenerationRequest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-ace-step"
SR = 48_000
STEPS = 3
LYRICS = "[verse]\nwalking down the street tonight\n[chorus]\noh we sing"


@pytest.fixture(scope="module")
def ace() -> AceStepBackend:
    return AceStepBackend.load(str(TINY), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def song(ace) -> Audio:
    """A 1.5 s song of the tiny model, the source for the audio-to-audio tasks."""
    return ace.generate([AceRequest("jazz piano", lyrics=LYRICS, duration_s=1.5, seed=11, steps=STEPS)])[0][0]


def req(prompt: str = "calm piano", **kw) -> AceRequest:
    kw.setdefault("steps", STEPS)
    return AceRequest(prompt, **kw)


def gap(a: Audio, b: Audio) -> float:
    return float(np.abs(a.samples - b.samples).max())


# --- loading and what the backend says -----------------------------------------------------------------------------


def test_loads_through_from_pretrained_and_states_its_facts(ace):
    index = json.loads((TINY / "model_index.json").read_text())
    assert index["_class_name"] == "AceStepPipeline"
    assert (ace.family, ace.license, ace.supports_continuation) == ("ace-step", "MIT", False)
    assert (ace.sample_rate, ace.channels, ace.hop) == (SR, 2, 1920)
    assert ace.max_duration_s == 600.0
    assert ace.is_turbo and ace.default_steps == 8 and ace.default_guidance == 1.0
    assert ace.supports_cover and ace.tasks == frozenset(AceTask)
    assert (ace.device, ace.dtype) == ("cpu", "float32")


def test_family_detection_and_facts_without_loading():
    assert is_ace_step("AceStepPipeline", str(TINY)) and not is_ace_step("StableAudioPipeline", str(TINY))
    assert is_ace_step(None, "ACE-Step/acestep-v15-xl-turbo-diffusers")  # offline, not cached: the name decides
    assert not is_ace_step(None, "facebook/musicgen-small") and not is_ace_step(None, str(TINY.parent))
    facts = model_facts("ACE-Step/acestep-v15-xl-turbo-diffusers")
    assert (facts["license"], facts["sample_rate"], facts["max_duration_s"], facts["default_steps"]) == (
        "MIT", 48_000, 600.0, 8)
    assert facts["tasks"] == ("text2music", "repaint", "cover", "extract", "lego", "complete")


def test_fixture_matches_its_build_script_and_stays_small(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import build_tiny_ace_step

    out = build_tiny_ace_step.build(tmp_path / "tiny-ace-step")
    weights = sorted(p.relative_to(TINY) for p in TINY.rglob("*.safetensors"))
    assert len(weights) == 6
    for path in weights:
        assert (out / path).read_bytes() == (TINY / path).read_bytes(), path
    assert sum(p.stat().st_size for p in TINY.rglob("*") if p.is_file()) < 2 * 1024 * 1024


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="does not hold a loadable ACE-Step pipeline"):
        AceStepBackend.load(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="bot.py download ACE-Step/no-such-model"):
        AceStepBackend.load("ACE-Step/no-such-model", device="cpu")


# --- text to music -------------------------------------------------------------------------------------------------


def test_songs_batch_with_exact_stereo_durations_and_seeds(ace):
    meta = dict(duration_s=1.2, bpm=120, key="C major", time_signature="4")
    out = ace.generate([req("jazz piano", lyrics=LYRICS, variations=2, seed=3, **meta),
                        req("rock", lyrics="[chorus]\nhey hey", seed=9, language="de", **meta)])
    assert [len(v) for v in out] == [2, 1]
    for audio in (out[0][0], out[0][1], out[1][0]):
        assert audio.sample_rate == SR and audio.samples.shape == (2, round(1.2 * SR))
        assert audio.samples.dtype == np.float32 and np.isfinite(audio.samples).all()
        assert np.abs(audio.samples).max() == pytest.approx(10 ** (-1 / 20), abs=1e-4)  # the pipeline's -1 dBFS
    assert gap(out[0][0], out[0][1]) > 1e-2  # seeds 3 and 4
    alone = ace.generate([req("jazz piano", lyrics=LYRICS, seed=4, **meta)])[0][0]
    assert gap(alone, out[0][1]) < 1e-4  # variation 1 is seed 4, batched or alone (up to rounding and padding)
    again = ace.generate([req("jazz piano", lyrics=LYRICS, seed=4, **meta)])[0][0]
    assert np.array_equal(again.samples, alone.samples)  # the same request, the same samples


def test_lyrics_and_metadata_condition_the_song(ace):
    base = dict(duration_s=1.0, seed=5)
    plain = ace.generate([req(lyrics=LYRICS, **base)])[0][0]
    other_words = ace.generate([req(lyrics="[verse]\nsomething else entirely", **base)])[0][0]
    faster = ace.generate([req(lyrics=LYRICS, bpm=170, **base)])[0][0]
    assert gap(plain, other_words) > 1e-3 and gap(plain, faster) > 1e-3


def test_duration_follows_the_lyrics_when_not_given():
    words = "\n".join(["[verse]"] + ["walking down the street tonight under neon light"] * 8 + ["[chorus]"]
                      + ["oh we sing through the night"] * 4)
    r = AceRequest("pop", lyrics=words)
    assert resolved_duration(r) == estimate_duration(words) and 20 <= resolved_duration(r) <= 120
    assert resolved_duration(AceRequest("pop")) == 30.0  # an instrumental
    assert resolved_duration(r, max_duration_s=15.0) == 15.0  # the server's cap


def test_generation_requests_are_accepted(ace, song):
    plain = ace.generate([GenerationRequest("calm piano", 0.8, seed=2, steps=STEPS)])[0][0]
    assert plain.samples.shape == (2, round(0.8 * SR))
    cover = from_generation_request(GenerationRequest("metal", 1.0, init_audio=song, strength=0.25))
    assert cover.task is AceTask.COVER and cover.cover_strength == 0.75 and cover.source is song
    with pytest.raises(AceRequestError, match="can't continue"):
        ace.generate([GenerationRequest("x", 1.0, audio_prompt=song)])


# --- repaint -------------------------------------------------------------------------------------------------------


def test_repaint_changes_only_the_range(ace, song):
    start, end = 0.5, 1.0
    out = ace.generate([req("guitar solo", task=AceTask.REPAINT, source=song, start_s=start, end_s=end, seed=1)])
    audio = out[0][0]
    assert audio.sample_rate == SR and audio.samples.shape == song.samples.shape
    a, b = round(start * SR), round(end * SR)
    assert np.array_equal(audio.samples[:, :a], song.samples[:, :a])  # sample-exact before the range
    assert np.array_equal(audio.samples[:, b:], song.samples[:, b:])  # and after it
    fade = round(0.05 * SR)
    inside = np.abs(audio.samples[:, a + fade:b - fade] - song.samples[:, a + fade:b - fade]).max()
    assert inside > 1e-2  # the range itself is new
    again = ace.generate([req("guitar solo", task=AceTask.REPAINT, source=song, start_s=start, end_s=end, seed=1)])
    assert np.array_equal(again[0][0].samples, audio.samples)  # same seed, same audio
    other = ace.generate([req("guitar solo", task=AceTask.REPAINT, source=song, start_s=start, end_s=end, seed=2)])
    assert gap(other[0][0], audio) > 1e-3


def test_repaint_keeps_a_foreign_source_exact_at_its_own_rate(ace, song):
    t = np.arange(int(1.3 * 44_100)) / 44_100
    mono = Audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None, :], 44_100)
    out = ace.generate([req(task=AceTask.REPAINT, source=mono, start_s=0.2, end_s=0.7)])[0][0]
    assert out.sample_rate == 44_100 and out.samples.shape == mono.samples.shape
    a, b = round(0.2 * 44_100), round(0.7 * 44_100)
    assert np.array_equal(out.samples[:, :a], mono.samples[:, :a])
    assert np.array_equal(out.samples[:, b:], mono.samples[:, b:])
    assert np.abs(out.samples[:, a:b] - mono.samples[:, a:b]).max() > 1e-3


def test_crossfade_is_inside_the_range_and_continuous():
    source = np.zeros((2, 1000), dtype=np.float32)
    generated = np.ones((2, 1000), dtype=np.float32)
    out = splice_repaint(source, generated, 300, 600, 50)
    assert np.array_equal(out[:, :300], source[:, :300]) and np.array_equal(out[:, 600:], source[:, 600:])
    assert np.all(out[:, 350:550] == 1.0)
    assert np.all(np.diff(out[0, 300:350]) > 0) and np.all(np.diff(out[0, 550:600]) < 0)
    assert out[0, 300] < 0.01 and out[0, 599] < 0.01  # no step at either edge
    tight = splice_repaint(source, generated, 0, 10, 50)  # at the track's start: no fade-in, a 5-sample fade-out
    assert tight[0, 0] == 1.0 and tight[0, 9] < 0.1


@pytest.mark.parametrize("start, end, message", [
    (0.9, 0.9, "empty"), (1.0, 0.5, "empty"), (0.5, 2.0, "outside the track, which is 1.5 s long"),
    (-0.5, 0.4, "outside"), (0.0, 1.5, "whole 1.5 s track"), (None, 0.4, "needs a start and an end"),
])
def test_repaint_refuses_bad_ranges_naming_the_length(ace, song, start, end, message):
    with pytest.raises(AceRequestError, match=message):
        ace.generate([req(task=AceTask.REPAINT, source=song, start_s=start, end_s=end)])


# --- cover, stems, reference ---------------------------------------------------------------------------------------


def test_cover_keeps_the_source_length_and_strength_matters(ace, song):
    strong = ace.generate([req("death metal", task=AceTask.COVER, source=song, strength=1.0, seed=4)])[0][0]
    loose = ace.generate([req("death metal", task=AceTask.COVER, source=song, strength=0.2, seed=4)])[0][0]
    for audio in (strong, loose):
        assert audio.sample_rate == SR and audio.samples.shape == song.samples.shape
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0.5
    assert gap(strong, loose) > 1e-3
    with pytest.raises(AceRequestError, match="strength must be 0 to 1"):
        ace.generate([req(task=AceTask.COVER, source=song, strength=1.5)])


def test_stems_one_audio_per_stem_adding_up_to_the_mix(ace, song):
    stems = ace.generate([req("", task=AceTask.EXTRACT, source=song)])[0]
    assert len(stems) == 4  # vocals, drums, bass, other
    for audio in stems:
        assert audio.sample_rate == SR and audio.samples.shape == song.samples.shape
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() <= 1.0 + 1e-6
    total = sum(a.samples for a in stems)
    scale = float(np.sum(total * song.samples) / np.sum(song.samples ** 2))  # one factor when any stem would clip
    assert 0 < scale <= 1.0 + 1e-6 and np.allclose(total, scale * song.samples, atol=1e-5)
    assert gap(stems[0], stems[1]) > 1e-4  # each row has its own stem's instruction
    drums = ace.generate([req("", task=AceTask.EXTRACT, source=song, stems=("drums",))])[0]
    named = ace.generate([req("", task=AceTask.EXTRACT, source=song, stems=("vocals", "drums", "bass"))])[0]
    assert len(drums) == 1 and len(named) == 3
    assert np.abs(drums[0].samples - named[1].samples).max() < 5e-3  # the stem batched or alone (see padding)


def test_lego_adds_one_part_and_complete_fills_in_the_rest(ace, song):
    """The two remaining task types: a part made to fit the source (lego), and the source completed with the
    parts named (complete); both at the source's length, 48 kHz stereo, deterministic, the part name mattering."""
    guitar = ace.generate([req("warm guitar", task=AceTask.LEGO, source=song, instruments=("guitar",), seed=3)])[0]
    drums = ace.generate([req("warm guitar", task=AceTask.LEGO, source=song, instruments=("drums",), seed=3)])[0]
    full = ace.generate([req("full band", task=AceTask.COMPLETE, source=song, instruments=("drums", "bass"),
                             variations=2, seed=3)])[0]
    default = ace.generate([req("full band", task=AceTask.COMPLETE, source=song, seed=3)])[0]
    for audio in (*guitar, *drums, *full, *default):
        assert audio.sample_rate == SR and audio.samples.shape == song.samples.shape
        assert np.isfinite(audio.samples).all() and 0.0 < np.abs(audio.samples).max() <= 1.0 + 1e-6
    assert all(np.abs(a.samples).max() > 0.5 for a in (*full, *default))  # a whole track, at -1 dBFS peak
    assert len(guitar) == 1 and len(full) == 2 and gap(full[0], full[1]) > 1e-3
    assert gap(guitar[0], drums[0]) > 1e-4  # the instruction names the part
    assert gap(full[0], default[0]) > 1e-4
    again = ace.generate([req("warm guitar", task=AceTask.LEGO, source=song, instruments=("guitar",), seed=3)])[0]
    assert np.array_equal(again[0].samples, guitar[0].samples)
    with pytest.raises(AceRequestError, match="exactly one instrument"):
        ace.generate([req(task=AceTask.LEGO, source=song, instruments=("guitar", "bass"))])
    with pytest.raises(AceRequestError, match="unknown part kazoo"):
        ace.generate([req(task=AceTask.COMPLETE, source=song, instruments=("kazoo",))])
    with pytest.raises(AceRequestError, match="needs a source track"):
        ace.generate([req(task=AceTask.LEGO, instruments=("guitar",))])


def test_stems_refusals(ace, song):
    with pytest.raises(AceRequestError, match="unknown stem kazoo"):
        ace.generate([req(task=AceTask.EXTRACT, source=song, stems=("vocals", "kazoo"))])
    with pytest.raises(AceRequestError, match="needs a source track"):
        ace.generate([req(task=AceTask.EXTRACT)])
    with pytest.raises(AceRequestError, match="one take"):
        ace.generate([req(task=AceTask.EXTRACT, source=song, variations=2)])


def test_reference_audio_sets_the_sound_deterministically(ace, song):
    base = dict(duration_s=0.8, seed=6)
    plain = ace.generate([req(**base)])[0][0]
    like = ace.generate([req(reference=song, **base)])[0][0]
    again = ace.generate([req(reference=song, **base)])[0][0]
    assert like.samples.shape == (2, round(0.8 * SR))
    assert np.array_equal(like.samples, again.samples) and gap(plain, like) > 1e-3


# --- the scheduler's side: batching, progress, cancellation, bad input ---------------------------------------------


def test_incompatible_requests_are_refused_together(ace):
    with pytest.raises(ValueError, match="cannot share a call"):
        ace.generate([req(duration_s=1.0), req(duration_s=0.5)])
    assert batch_key(req(duration_s=1.0, seed=1)) == batch_key(req("other words", duration_s=1.0, seed=7))
    assert batch_key(req(duration_s=1.0), strict=True) != batch_key(req("other", duration_s=1.0), strict=True)
    assert batch_key(req(duration_s=1.0, bpm=90)) != batch_key(req(duration_s=1.0, bpm=120))


def test_progress_every_step_and_cancellation(ace):
    seen = []
    ace.generate([req(duration_s=0.5)], progress=seen.append)
    assert [(p.step, p.total) for p in seen] == [(i, STEPS) for i in range(1, STEPS + 1)]
    with pytest.raises(GenerationCancelled, match="step 1 of 3"):
        ace.generate([req(duration_s=0.5)], should_stop=lambda: True)


def test_bad_input_gets_clear_errors(ace, song):
    with pytest.raises(AceRequestError, match="up to 600 s"):
        ace.generate([req(duration_s=601)])
    with pytest.raises(AceRequestError, match="bpm must be 30 to 300"):
        ace.generate([req(duration_s=1.0, bpm=10)])
    with pytest.raises(LyricsError, match="limit is 4000"):
        ace.generate([req(duration_s=1.0, lyrics="la " * 2000)])
    with pytest.raises(AceRequestError, match="takes no source"):
        ace.generate([req(duration_s=1.0, source=song)])
    cleaned = ace.prepare(req(duration_s=1.0, lyrics="[Verse]\r\nhello\x00 there\x1b\n\n\n\nbye"))
    assert cleaned.lyrics == "[verse]\nhello there\n\nbye"

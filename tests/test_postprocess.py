"""Audio post-processing against the real tools: pyloudnorm, libsndfile, ffmpeg/libmp3lame, mutagen, Pillow."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
from mutagen.id3 import ID3
from mutagen.mp3 import MP3
from PIL import Image

from generation import __version__
from generation.postprocess import (
    MP3_BITRATE_LADDER_KBPS,
    Provenance,
    RenderedTrack,
    apply_fades,
    display_title,
    encode_mp3,
    fit_mp3,
    normalize_loudness,
    read_provenance,
    render_track,
    tag_mp3,
    write_atomic,
    write_flac,
    write_mp3,
)
from generation.types import Audio
from generation.waveform import render_waveform

SR = 32000
PEAK_LIMIT = 10 ** (-1 / 20)
MP3_FRAME = 1152
USER_ID = "123456789012345678"  # a Discord snowflake that must never reach a file

LONG_PROMPT = (
    "uplifting synthwave with arpeggiated bass, gated reverb snare, shimmering pads and a soaring lead, 118 bpm"
)


def music_like(seconds: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Sine chord + noise with a pulsing envelope, quiet-ish like raw model output. (channels, frames) float32."""
    frames = int(round(seconds * SR))
    t = np.arange(frames) / SR
    rng = np.random.default_rng(seed)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * (1 + seed) * t) ** 2
    tone = sum(np.sin(2 * np.pi * f * (1 + 0.01 * seed) * t) for f in (220.0, 277.2, 329.6)) / 3
    mono = 0.2 * envelope * (tone + 0.05 * rng.standard_normal(frames))
    return np.tile(mono, (channels, 1)).astype(np.float32)


def lufs(samples: np.ndarray) -> float:
    return pyloudnorm.Meter(SR).integrated_loudness(samples.T.astype(np.float64))


def decode_mp3(path: Path) -> np.ndarray:
    """Mono float32 samples as ffmpeg decodes them (it honours the Xing/LAME delay and padding)."""
    raw = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-ac", "1", "-f", "f32le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype="<f4")


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".") or name.endswith(".tmp")]


@pytest.fixture
def provenance() -> Provenance:
    return Provenance(
        track_id="trk_01HZX",
        prompt=LONG_PROMPT,
        seed=1234,
        model_id="facebook/musicgen-small",
        model_license="CC-BY-NC-4.0",
        params={"duration_s": 5.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0, "guidance": 3.0},
    )


# --- loudness and fades ------------------------------------------------------------------------------------------


def test_loudness_reaches_target_for_sine_and_noise() -> None:
    t = np.arange(5 * SR) / SR
    noise = np.random.default_rng(7).standard_normal(t.size)
    x = (0.05 * np.sin(2 * np.pi * 440 * t) + 0.01 * noise).astype(np.float32)[None]
    out = normalize_loudness(x, SR)
    assert out.shape == x.shape and out.dtype == np.float32
    assert abs(lufs(out) + 14.0) < 0.5
    assert np.max(np.abs(out)) <= PEAK_LIMIT


def test_loudness_target_is_respected_in_stereo_and_1d() -> None:
    stereo = music_like(3.0, channels=2)
    assert abs(lufs(normalize_loudness(stereo, SR)) + 14.0) < 0.5
    mono_1d = music_like(3.0)[0]
    out = normalize_loudness(mono_1d, SR, target_lufs=-16.0)
    assert out.shape == mono_1d.shape
    assert abs(lufs(out) + 16.0) < 0.5


def test_loud_square_wave_peaks_below_minus_1_dbfs() -> None:
    t = np.arange(3 * SR) / SR
    square = np.sign(np.sin(2 * np.pi * 100 * t)).astype(np.float32)[None]
    out = normalize_loudness(square, SR)
    assert np.max(np.abs(out)) <= PEAK_LIMIT


def test_peak_limit_wins_over_loudness_for_spiky_audio() -> None:
    # Sparse clicks: reaching -14 LUFS would need peaks far above full scale, so the peak limit decides the gain.
    x = np.zeros((1, 4 * SR), dtype=np.float32)
    x[0, :: SR // 4] = 0.05
    out = normalize_loudness(x, SR)
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out)) <= PEAK_LIMIT
    assert np.max(np.abs(out)) > 0.8 * PEAK_LIMIT  # limited, not squashed
    assert lufs(out) < -14.0


def test_silence_stays_silence() -> None:
    for frames in (0, 10, SR // 10, 3 * SR):
        out = normalize_loudness(np.zeros((1, frames), dtype=np.float32), SR)
        assert out.shape == (1, frames)
        assert np.all(out == 0.0)


def test_short_and_broken_audio_gives_finite_output() -> None:
    short = music_like(0.1)  # shorter than one 400 ms loudness block
    out = normalize_loudness(short, SR)
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) > 0.0
    assert np.max(np.abs(out)) <= PEAK_LIMIT
    single = normalize_loudness(np.array([[0.5]], dtype=np.float32), SR)
    assert np.all(np.isfinite(single))
    broken = music_like(1.0)
    broken[0, 100:200] = np.nan
    broken[0, 300] = np.inf
    out = normalize_loudness(broken, SR)
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= PEAK_LIMIT


def test_fades_start_and_end_at_zero_and_keep_length() -> None:
    x = np.full((2, SR), 0.5, dtype=np.float32)
    out = apply_fades(x, SR)
    assert out.shape == x.shape
    assert np.all(out[:, 0] == 0.0) and np.all(out[:, -1] == 0.0)
    fade_out = out[0, -int(0.05 * SR) :]
    assert np.all(np.diff(fade_out) <= 0)  # monotonic
    np.testing.assert_array_equal(out[:, int(0.005 * SR) : -int(0.05 * SR)], x[:, int(0.005 * SR) : -int(0.05 * SR)])
    tiny = apply_fades(np.ones((1, 7), dtype=np.float32), SR)  # shorter than the fades
    assert tiny.shape == (1, 7) and np.all(np.isfinite(tiny))


# --- FLAC and MP3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [int(7.3 * SR), 100_003])
def test_flac_is_exact_to_the_sample(tmp_path: Path, frames: int) -> None:
    x = normalize_loudness(music_like(frames / SR, channels=2)[:, :frames], SR)
    x[0, 5] = 1.0  # full scale must not wrap around in 24-bit
    path = write_flac(x, SR, tmp_path / "master.flac")
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    assert rate == SR and data.shape == (frames, 2)
    np.testing.assert_allclose(data.T, np.clip(x, -1, 1), atol=2.0**-22)
    assert soundfile.info(path).subtype == "PCM_24"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("seconds", [2.0, 5.0, 7.3])
def test_mp3_decodes_to_the_exact_duration(tmp_path: Path, seconds: float) -> None:
    frames = int(round(seconds * SR))
    x = normalize_loudness(music_like(seconds), SR)
    path = tmp_path / "clip.mp3"
    path.write_bytes(encode_mp3(x, SR))
    decoded = decode_mp3(path)
    assert abs(decoded.size - frames) <= MP3_FRAME
    assert np.max(np.abs(decoded)) <= 1.0  # the -1 dBTP headroom survives encoding
    info = MP3(path).info
    assert info.bitrate == 192_000 and info.sample_rate == SR and info.channels == 1


def test_encode_mp3_rejects_what_mp3_cannot_carry() -> None:
    x = music_like(0.5)
    with pytest.raises(ValueError):
        encode_mp3(np.tile(x, (3, 1)), SR)
    with pytest.raises(ValueError):
        encode_mp3(x, 96000)
    with pytest.raises(ValueError):
        encode_mp3(x, SR, bitrate_kbps=150)


def test_tags_round_trip_without_any_user_id(tmp_path: Path, provenance: Provenance) -> None:
    path = write_mp3(music_like(2.0), SR, tmp_path / "tagged.mp3", provenance)
    tags = read_provenance(path)
    assert set(tags) == {
        "ai_generated", "model", "model_license", "prompt", "seed", "params", "software", "track_id"
    }  # fmt: skip
    assert tags["ai_generated"] == "true"
    assert tags["model"] == "facebook/musicgen-small"
    assert tags["model_license"] == "CC-BY-NC-4.0"
    assert tags["prompt"] == LONG_PROMPT
    assert tags["seed"] == "1234"
    assert json.loads(tags["params"]) == provenance.params
    assert tags["software"] == f"bandmate {__version__}"
    assert tags["track_id"] == "trk_01HZX"

    id3 = ID3(path)
    assert id3.version == (2, 4, 0)
    title = str(id3["TIT2"])
    assert len(title) <= 60 and title.endswith("…") and LONG_PROMPT.startswith(title[:-1])
    assert str(id3["TPE1"]) == "Bandmate"

    assert not any("user" in f.name for f in dataclasses.fields(Provenance))
    assert not any("user" in key.lower() for key in tags)
    assert USER_ID.encode() not in path.read_bytes()
    # ffmpeg still decodes it to the right length with the tag in front
    assert abs(decode_mp3(path).size - 2 * SR) <= MP3_FRAME


def test_retagging_replaces_the_tags(tmp_path: Path, provenance: Provenance) -> None:
    path = write_mp3(music_like(1.0), SR, tmp_path / "t.mp3", provenance)
    size = path.stat().st_size
    tag_mp3(path, dataclasses.replace(provenance, seed=99, track_id="trk_2"), title="Renamed")
    tags = read_provenance(path)
    assert tags["seed"] == "99" and tags["track_id"] == "trk_2"
    assert len(ID3(path).getall("TXXX")) == 8
    assert str(ID3(path)["TIT2"]) == "Renamed"
    assert abs(path.stat().st_size - size) < 100
    assert leftovers(tmp_path) == []


def test_provenance_refuses_personal_or_unserialisable_params(provenance: Provenance) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(provenance, params={"user_id": USER_ID})
    with pytest.raises(ValueError):
        dataclasses.replace(provenance, params={"request": {"author": USER_ID}})
    with pytest.raises(ValueError):
        dataclasses.replace(provenance, params={"when": object()})
    params = {"temperature": 1.0}
    frozen = dataclasses.replace(provenance, params=params)
    params["temperature"] = 2.0
    assert frozen.params == {"temperature": 1.0}


def test_display_title() -> None:
    assert display_title("  calm   piano \n at night ") == "calm piano at night"
    short = display_title(LONG_PROMPT)
    assert len(short) <= 60 and short.endswith("…")
    assert display_title("x" * 100).startswith("x" * 50)


def test_read_provenance_of_untagged_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "plain.mp3"
    path.write_bytes(encode_mp3(music_like(0.5), SR))
    assert read_provenance(path) == {}


def test_fit_mp3_steps_the_bitrate_down(tmp_path: Path, provenance: Provenance) -> None:
    x = normalize_loudness(music_like(5.0), SR)
    roomy = fit_mp3(x, SR, provenance, 10_000_000, tmp_path / "roomy.mp3")
    assert roomy is not None and MP3(roomy).info.bitrate == 192_000

    limit = 60_000  # 192 kbps * 5 s is ~120 kB
    path = fit_mp3(x, SR, provenance, limit, tmp_path / "fit.mp3")
    assert path == tmp_path / "fit.mp3"
    assert path.stat().st_size <= limit
    bitrate = MP3(path).info.bitrate // 1000
    assert bitrate in MP3_BITRATE_LADDER_KBPS and bitrate < 192
    # the highest one that fits: the next step up, tags included, would not have
    higher = MP3_BITRATE_LADDER_KBPS[MP3_BITRATE_LADDER_KBPS.index(bitrate) - 1]
    too_big = write_mp3(x, SR, tmp_path / "higher.mp3", provenance, bitrate_kbps=higher)
    assert too_big.stat().st_size > limit
    assert read_provenance(path)["track_id"] == provenance.track_id

    assert fit_mp3(x, SR, provenance, 5_000, tmp_path / "impossible.mp3") is None
    assert not (tmp_path / "impossible.mp3").exists()
    assert leftovers(tmp_path) == []


# --- waveform ----------------------------------------------------------------------------------------------------


def test_waveform_png_size_content_and_determinism(tmp_path: Path) -> None:
    a = render_waveform(music_like(5.0, seed=1), SR, tmp_path / "a.png", title="first")
    b = render_waveform(music_like(5.0, seed=2), SR, tmp_path / "b.png", title="first")
    again = render_waveform(music_like(5.0, seed=1), SR, tmp_path / "again.png", title="first")
    with Image.open(a) as image:
        assert image.format == "PNG" and image.size == (1200, 300)
        pixels_a = np.asarray(image.convert("L"), dtype=np.float64)
    with Image.open(b) as image:
        pixels_b = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels_a.var() > 100  # not blank
    assert np.abs(pixels_a - pixels_b).mean() > 1.0  # different audio, different picture
    assert a.read_bytes() == again.read_bytes()

    small = render_waveform(
        music_like(7.3, channels=2), SR, tmp_path / "small.png", width=800, height=200,
        title=LONG_PROMPT, sections=[(0.0, "intro"), (3.5, "chorus"), (99.0, "off the end")],
    )  # fmt: skip
    with Image.open(small) as image:
        assert image.size == (800, 200)
    silent = render_waveform(np.zeros((1, 0), dtype=np.float32), SR, tmp_path / "silent.png")
    with Image.open(silent) as image:
        assert image.size == (1200, 300)
    assert leftovers(tmp_path) == []


def test_waveform_sections_are_drawn(tmp_path: Path) -> None:
    x = music_like(10.0)
    plain = render_waveform(x, SR, tmp_path / "plain.png")
    marked = render_waveform(x, SR, tmp_path / "marked.png", sections=[(5.0, "chorus")])
    with Image.open(plain) as p, Image.open(marked) as m:
        difference = np.abs(np.asarray(p, dtype=np.int16) - np.asarray(m, dtype=np.int16)).sum(axis=2)
    changed_columns = np.nonzero(difference.any(axis=0))[0]
    assert changed_columns.size > 0
    assert abs(np.median(changed_columns) - 600) < 100  # around the middle of the picture


# --- the whole track ---------------------------------------------------------------------------------------------


def test_render_track_writes_three_files_atomically(tmp_path: Path, provenance: Provenance) -> None:
    frames = int(7.3 * SR)
    audio = Audio(samples=music_like(7.3)[:, :frames], sample_rate=SR)
    out_dir = tmp_path / "tracks"
    track = render_track(audio, provenance, out_dir, "trk_01HZX")
    assert isinstance(track, RenderedTrack)
    assert sorted(os.listdir(out_dir)) == ["trk_01HZX.flac", "trk_01HZX.mp3", "trk_01HZX.png"]
    assert track.duration_s == frames / SR
    assert (track.flac, track.mp3, track.png) == tuple(out_dir / f"trk_01HZX.{e}" for e in ("flac", "mp3", "png"))

    master, _ = soundfile.read(track.flac, dtype="float32", always_2d=True)
    assert master.shape == (frames, 1)
    assert abs(lufs(master.T) + 14.0) < 0.5
    assert master[0, 0] == 0.0 and master[-1, 0] == 0.0  # faded
    assert abs(decode_mp3(track.mp3).size - frames) <= MP3_FRAME
    assert read_provenance(track.mp3)["ai_generated"] == "true"
    assert (track.mp3.stat().st_mode & 0o777) == 0o644

    # Rendering again replaces the files in place, still without temporaries.
    render_track(audio, provenance, out_dir, "trk_01HZX", bitrate_kbps=128, title="Second take")
    assert sorted(os.listdir(out_dir)) == ["trk_01HZX.flac", "trk_01HZX.mp3", "trk_01HZX.png"]
    assert MP3(track.mp3).info.bitrate == 128_000
    assert str(ID3(track.mp3)["TIT2"]) == "Second take"


def test_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path: Path, provenance: Provenance) -> None:
    path = write_mp3(music_like(1.0), SR, tmp_path / "keep.mp3", provenance)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_mp3(np.zeros((3, SR), dtype=np.float32), SR, path, provenance)  # 3 channels: cannot encode
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]  # fails after the temporary file exists
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.mp3"]


def test_render_track_refuses_path_like_stems(tmp_path: Path, provenance: Provenance) -> None:
    audio = Audio(samples=music_like(0.5), sample_rate=SR)
    for stem in ("../escape", ".hidden", ""):
        with pytest.raises(ValueError):
            render_track(audio, provenance, tmp_path, stem)


def test_fit_mp3_raises_for_audio_mp3_cannot_carry(tmp_path: Path, provenance: Provenance) -> None:
    with pytest.raises(ValueError):  # an error, not "too big": splitting would not help
        fit_mp3(np.zeros((3, SR), dtype=np.float32), SR, provenance, 10_000_000, tmp_path / "x.mp3")

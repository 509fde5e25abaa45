"""Tests for generation.upload: a corpus of good and hostile uploads, built at test time (nothing downloaded).

Needs ffmpeg/ffprobe on PATH (the module under test needs them too).
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from generation.types import Audio
from generation.upload import (
    ALLOWED_EXTENSIONS,
    AudioDecodeError,
    UploadLimits,
    decode_audio_bytes,
    decode_audio_file,
    probe_audio_bytes,
)



@pytest.fixture(autouse=True)
def ffmpeg_installed():
    """The guard decodes with ffmpeg: a machine without it fails these tests, it never skips them."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run the README's test command (it installs them)")

SR = 44_100
TARGET = 32_000
DUR = 2.0
FREQ = 440.0
AMP = 0.5

UNSUPPORTED = "doesn't look like an audio file"
DAMAGED = "cut off or damaged"
NO_AUDIO = "couldn't find any audio"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _sine(seconds: float = DUR, rate: int = SR, freq: float = FREQ) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (AMP * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_hz(audio: Audio) -> float:
    x = audio.samples[0]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * audio.sample_rate / len(x))


def _no_leak(err: AudioDecodeError, *paths: Path) -> None:
    """User messages are short sentences: no paths, no ffmpeg chatter, no tracebacks."""
    msg = str(err)
    assert msg == err.user_message
    assert 0 < len(msg) < 160
    assert "Traceback" not in msg and "ffmpeg" not in msg.lower() and "/" not in msg.replace("ogg/opus", "")
    for p in paths:
        assert str(p) not in msg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    c: dict[str, Path] = {}

    mono = _sine()
    c["wav"] = d / "sine.wav"
    sf.write(c["wav"], mono, SR, subtype="PCM_16")
    c["flac"] = d / "sine.flac"
    sf.write(c["flac"], mono, SR)
    c["stereo_wav"] = d / "stereo.wav"
    sf.write(c["stereo_wav"], np.stack([mono, mono], axis=1), SR, subtype="FLOAT")

    src = str(c["wav"])
    for name, codec in {
        "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
        "ogg": ["-c:a", "libvorbis"],
        "opus": ["-c:a", "libopus"],
        "m4a": ["-c:a", "aac"],
        "aac": ["-c:a", "aac"],
    }.items():
        c[name] = d / f"sine.{name}"
        _ffmpeg("-i", src, *codec, str(c[name]))
    c["alac_m4a"] = d / "alac.m4a"
    _ffmpeg("-i", src, "-c:a", "alac", str(c["alac_m4a"]))

    # Truncated files: the container says 2 s, half the bytes are there.
    for name in ("mp3", "flac"):
        data = c[name].read_bytes()
        c[f"trunc_{name}"] = d / f"truncated.{name}"
        c[f"trunc_{name}"].write_bytes(data[: len(data) // 2])

    c["wav_as_mp3"] = d / "really_a_wav.mp3"
    c["wav_as_mp3"].write_bytes(c["wav"].read_bytes())
    c["text_as_mp3"] = d / "notes.mp3"
    c["text_as_mp3"].write_text("These are my lyrics, not a song.\n" * 20)
    c["text"] = d / "notes.txt"
    c["text"].write_text("hello\n")
    c["noise_bytes"] = d / "noise.bin"
    c["noise_bytes"].write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    c["empty"] = d / "empty.wav"
    c["empty"].write_bytes(b"")

    # WAV headers that lie. Canonical soundfile PCM_16 mono: data chunk size at offset 40.
    wav = bytearray(c["wav"].read_bytes())
    assert wav[36:40] == b"data"
    lying = bytearray(wav)
    struct.pack_into("<I", lying, 4, 0xC0000000 + 36)
    struct.pack_into("<I", lying, 40, 0xC0000000)  # "3 GB of samples follow"
    c["wav_lying_length"] = d / "lying_length.wav"
    c["wav_lying_length"].write_bytes(bytes(lying))
    streaming = bytearray(wav)
    struct.pack_into("<I", streaming, 4, 0xFFFFFFFF)
    struct.pack_into("<I", streaming, 40, 0xFFFFFFFF)  # the "length unknown" marker of streaming writers
    c["wav_streaming"] = d / "streaming.wav"
    c["wav_streaming"].write_bytes(bytes(streaming))
    slow = bytearray(wav)
    struct.pack_into("<I", slow, 24, 8)  # sample rate 8 Hz ...
    struct.pack_into("<I", slow, 28, 16)  # ... byte rate to match: 176 KB of data "lasts" 3 hours
    c["wav_lying_rate"] = d / "lying_rate.wav"
    c["wav_lying_rate"].write_bytes(bytes(slow))
    stereo_bytes = c["stereo_wav"].read_bytes()  # 2 s, float32 stereo: 352800 bytes a second
    c["wav_truncated"] = d / "truncated.wav"
    c["wav_truncated"].write_bytes(stereo_bytes[: int(len(stereo_bytes) * 0.45)])  # 0.9 s of 2 s: refused
    c["wav_slightly_truncated"] = d / "slightly_truncated.wav"
    c["wav_slightly_truncated"].write_bytes(stereo_bytes[: int(len(stereo_bytes) * 0.8)])  # 0.4 s short: used
    c["wav_float_nan"] = d / "nan.wav"
    nan = _sine().copy()
    nan[1000:1100] = np.nan
    nan[2000] = np.inf
    sf.write(c["wav_float_nan"], nan, SR, subtype="FLOAT")
    c["wav_adpcm"] = d / "adpcm.wav"
    _ffmpeg("-i", src, "-c:a", "adpcm_ms", str(c["wav_adpcm"]))

    # Playlists and scripts that would make ffmpeg open other things.
    c["ffconcat"] = d / "list.ffconcat"
    c["ffconcat"].write_text(f"ffconcat version 1.0\nfile '{c['wav']}'\nfile '{c['wav']}'\n")
    c["hls_local"] = d / "local.m3u8"
    c["hls_local"].write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{c['wav']}\n#EXTINF:2.0,\nfile:/etc/passwd\n#EXT-X-ENDLIST\n"
    )

    # Hours long, made cheaply: 10 s of 8 kbps mp3 (no Xing header, no tags) repeated 720 times.
    chunk = d / "chunk.mp3"
    mp3_raw = ["-c:a", "libmp3lame", "-write_xing", "0", "-id3v2_version", "0", "-write_id3v1", "0", "-f", "mp3"]
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "10", "-b:a", "8k", *mp3_raw, str(chunk))
    c["hours_mp3"] = d / "hours.mp3"
    c["hours_mp3"].write_bytes(chunk.read_bytes() * 720)
    # Longer than its estimate: 1 s at 64 kbps, then 60 s at 8 kbps; ffprobe guesses ~24 s from the bitrate.
    loud = d / "loud.mp3"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=8000:duration=1", "-b:a", "64k", *mp3_raw, str(loud))
    c["underestimated_mp3"] = d / "underestimated.mp3"
    c["underestimated_mp3"].write_bytes(loud.read_bytes() + chunk.read_bytes() * 6)

    c["png"] = d / "cover.png"
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=16x16", "-frames:v", "1", str(c["png"]))
    c["video_only"] = d / "clip.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=32x32:r=5:d=1", "-c:v", "mpeg4", "-an", str(c["video_only"]))
    return c


# --------------------------------------------------------------------------------------------------------
# Good files


# Lossy tolerance: two codec frames at 44.1 kHz (mp3 1152, aac 1024, vorbis up to 2048/2) or opus 2x20 ms.
@pytest.mark.parametrize(
    ("name", "tol_s"),
    [
        ("wav", 1 / TARGET),
        ("flac", 1 / TARGET),
        ("alac_m4a", 1 / TARGET),
        ("mp3", 2 * 1152 / SR),
        ("ogg", 2 * 1024 / SR),
        ("opus", 0.04),
        ("m4a", 2 * 1024 / SR),
        ("aac", 2 * 1024 / SR),
    ],
)
def test_decodes_known_sine(corpus: dict[str, Path], name: str, tol_s: float) -> None:
    audio = decode_audio_file(corpus[name], target_rate=TARGET)
    assert isinstance(audio, Audio)
    assert audio.sample_rate == TARGET
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 2
    assert audio.samples.shape[0] == 1
    assert audio.samples.flags.c_contiguous
    assert abs(audio.duration_s - DUR) <= tol_s, audio.duration_s
    assert abs(_dominant_hz(audio) - FREQ) < 2.0
    peak = float(np.abs(audio.samples).max())
    assert 0.4 < peak <= 1.0


def test_bytes_and_file_agree_and_probe_reports(corpus: dict[str, Path]) -> None:
    data = corpus["flac"].read_bytes()
    a = decode_audio_bytes(data, target_rate=TARGET, filename="song.flac")
    b = decode_audio_file(corpus["flac"], target_rate=TARGET)
    np.testing.assert_array_equal(a.samples, b.samples)

    p = probe_audio_bytes(data)
    assert (p.format, p.codec, p.sample_rate, p.channels) == ("flac", "flac", SR, 1)
    assert p.duration_s == pytest.approx(DUR, abs=1e-3)
    assert probe_audio_bytes(corpus["m4a"].read_bytes()).format == "mov"
    assert probe_audio_bytes(corpus["opus"].read_bytes()).codec == "opus"


def test_stereo_to_mono_averages(corpus: dict[str, Path]) -> None:
    p = probe_audio_bytes(corpus["stereo_wav"].read_bytes())
    assert p.channels == 2 and p.codec == "pcm_f32le"
    audio = decode_audio_file(corpus["stereo_wav"], target_rate=TARGET, channels=1)
    assert audio.samples.shape == (1, int(DUR * TARGET))
    # L == R == 0.5 sine: the mean keeps 0.5 (ffmpeg's own -ac 1 would give 0.71).
    assert float(np.abs(audio.samples).max()) == pytest.approx(AMP, abs=0.01)


def test_mono_to_stereo_and_other_rates(corpus: dict[str, Path]) -> None:
    audio = decode_audio_file(corpus["mp3"], target_rate=48_000, channels=2)
    assert audio.samples.shape[0] == 2 and audio.sample_rate == 48_000
    np.testing.assert_array_equal(audio.samples[0], audio.samples[1])
    assert abs(audio.duration_s - DUR) <= 2 * 1152 / SR
    stereo = decode_audio_file(corpus["stereo_wav"], target_rate=16_000, channels=2)
    assert stereo.samples.shape == (2, int(DUR * 16_000))


def test_wrong_extension_on_valid_file_is_accepted(corpus: dict[str, Path]) -> None:
    """Decision: the content decides, so a wav named .mp3 decodes (as wav)."""
    audio = decode_audio_file(corpus["wav_as_mp3"], target_rate=TARGET)
    assert abs(audio.duration_s - DUR) <= 1 / TARGET
    assert probe_audio_bytes(corpus["wav_as_mp3"].read_bytes()).format == "wav"


def test_streaming_wav_with_unknown_length_marker_is_accepted(corpus: dict[str, Path]) -> None:
    audio = decode_audio_file(corpus["wav_streaming"], target_rate=TARGET)
    assert abs(audio.duration_s - DUR) <= 1 / TARGET


def test_slightly_truncated_wav_decodes_what_is_there(corpus: dict[str, Path]) -> None:
    """Within the tolerance (1 s or 5 %) a short WAV is used as is, like mp3/flac would be."""
    audio = decode_audio_file(corpus["wav_slightly_truncated"], target_rate=TARGET)
    assert audio.duration_s == pytest.approx(0.8 * DUR, abs=0.01)


def test_nan_and_inf_in_float_wav_come_out_finite(corpus: dict[str, Path]) -> None:
    audio = decode_audio_file(corpus["wav_float_nan"], target_rate=TARGET)
    assert np.isfinite(audio.samples).all()
    assert float(np.abs(audio.samples).max()) <= 1.0


def test_audio_exactly_at_the_cap_is_accepted(corpus: dict[str, Path]) -> None:
    limits = UploadLimits(max_duration_s=DUR)
    audio = decode_audio_file(corpus["wav"], target_rate=TARGET, limits=limits)
    assert audio.samples.shape[1] <= int(DUR * TARGET)


def test_allowed_extensions() -> None:
    assert ALLOWED_EXTENSIONS == frozenset({".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a", ".aac"})


# --------------------------------------------------------------------------------------------------------
# Bad files: each raises AudioDecodeError with a message fit for the user


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("trunc_mp3", DAMAGED),
        ("trunc_flac", DAMAGED),
        ("text_as_mp3", UNSUPPORTED),
        ("text", UNSUPPORTED),
        ("noise_bytes", UNSUPPORTED),
        ("empty", "That file is empty."),
        ("wav_lying_length", DAMAGED),
        ("wav_truncated", DAMAGED),
        ("wav_adpcm", UNSUPPORTED),
        ("ffconcat", UNSUPPORTED),
        ("hls_local", UNSUPPORTED),
        ("png", UNSUPPORTED),
        ("video_only", NO_AUDIO),
    ],
)
def test_bad_files_rejected(corpus: dict[str, Path], name: str, expected: str) -> None:
    with pytest.raises(AudioDecodeError) as exc_info:
        decode_audio_file(corpus[name], target_rate=TARGET)
    assert expected in str(exc_info.value)
    _no_leak(exc_info.value, corpus[name], corpus[name].parent)
    # The bytes path gives the same answer (the Discord layer uses it).
    with pytest.raises(AudioDecodeError) as again:
        decode_audio_bytes(corpus[name].read_bytes(), target_rate=TARGET, filename=corpus[name].name)
    assert str(again.value) == str(exc_info.value)


def test_lying_wav_length_does_not_allocate_or_hang(corpus: dict[str, Path]) -> None:
    start = time.monotonic()
    with pytest.raises(AudioDecodeError, match=DAMAGED):
        decode_audio_bytes(corpus["wav_lying_length"].read_bytes(), target_rate=TARGET)
    assert time.monotonic() - start < 5


def test_lying_wav_sample_rate_is_too_long(corpus: dict[str, Path]) -> None:
    with pytest.raises(AudioDecodeError) as exc_info:
        decode_audio_file(corpus["wav_lying_rate"], target_rate=TARGET)
    msg = str(exc_info.value)
    assert msg.startswith("That audio is too long (") and " h " in msg and msg.endswith("the limit is 10 min.")


def test_hls_playlist_to_url_is_rejected_without_network(tmp_path: Path) -> None:
    """A playlist pointing at a listening local socket: rejected fast, and nothing ever connects."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        playlist = (
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:10.0,\nhttp://127.0.0.1:{port}/seg0.ts\n#EXTINF:10.0,\nhttp://127.0.0.1:{port}/seg1.ts\n"
            "#EXT-X-ENDLIST\n"
        )
        master = f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\nhttp://127.0.0.1:{port}/index.m3u8\n"
        path = tmp_path / "stream.m3u8"
        for text, name in ((playlist, "stream.m3u8"), (master, "song.mp3"), (playlist.replace("\n", "\r\n"), None)):
            path.write_text(text)
            start = time.monotonic()
            with pytest.raises(AudioDecodeError, match=UNSUPPORTED):
                decode_audio_bytes(text.encode(), target_rate=TARGET, filename=name)
            with pytest.raises(AudioDecodeError, match=UNSUPPORTED):
                decode_audio_file(path, target_rate=TARGET)
            with pytest.raises(AudioDecodeError, match=UNSUPPORTED):
                probe_audio_bytes(text.encode())
            assert time.monotonic() - start < 3
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # no connection attempt was ever made


def test_hours_long_file_rejected_from_probe(corpus: dict[str, Path]) -> None:
    assert corpus["hours_mp3"].stat().st_size < UploadLimits().max_bytes  # small, but 2 hours
    start = time.monotonic()
    with pytest.raises(AudioDecodeError) as exc_info:
        decode_audio_file(corpus["hours_mp3"], target_rate=TARGET)
    assert time.monotonic() - start < 5
    msg = str(exc_info.value)
    assert msg.startswith("That audio is too long (2 h ") and msg.endswith("the limit is 10 min.")
    with pytest.raises(AudioDecodeError, match="too long"):
        probe_audio_bytes(corpus["hours_mp3"].read_bytes())


def test_duration_cap_enforced_while_decoding(corpus: dict[str, Path]) -> None:
    """The probe underestimates (~24 s from the first frames' bitrate); the decode-time cap catches it."""
    data = corpus["underestimated_mp3"].read_bytes()
    limits = UploadLimits(max_duration_s=30.0)
    p = probe_audio_bytes(data, limits=limits)
    assert p.duration_s is not None and p.duration_s < 30.0
    with pytest.raises(AudioDecodeError) as exc_info:
        decode_audio_bytes(data, target_rate=TARGET, limits=limits)
    assert str(exc_info.value) == "That audio is too long (over 30 s); the limit is 30 s."
    # Under a cap it fits, it decodes in full (about 62 s: 1 s + 6 x 10.15 s of whole frames).
    audio = decode_audio_bytes(data, target_rate=8000, limits=UploadLimits(max_duration_s=120.0))
    assert 61.0 < audio.duration_s < 63.0


def test_oversize_rejected_before_reading(corpus: dict[str, Path], tmp_path: Path) -> None:
    limits = UploadLimits(max_bytes=64 * 1024)
    with pytest.raises(AudioDecodeError) as exc_info:
        decode_audio_file(corpus["wav"], target_rate=TARGET, limits=limits)
    assert str(exc_info.value) == "That file is too large (172 KB); the limit is 64 KB."
    with pytest.raises(AudioDecodeError, match=r"too large \(172 KB\)"):
        decode_audio_bytes(corpus["wav"].read_bytes(), target_rate=TARGET, limits=limits)
    with pytest.raises(AudioDecodeError, match="too large"):
        probe_audio_bytes(corpus["wav"].read_bytes(), limits=limits)
    # A sparse 31 MB file against the default 25 MB: refused from stat alone, instantly.
    sparse = tmp_path / "huge.wav"
    with sparse.open("wb") as fh:
        fh.truncate(31 * 1024 * 1024)
    start = time.monotonic()
    with pytest.raises(AudioDecodeError) as exc_info:
        decode_audio_file(sparse, target_rate=TARGET)
    assert time.monotonic() - start < 0.5
    assert str(exc_info.value) == "That file is too large (31 MB); the limit is 25 MB."
    # One byte over: no "(25 MB); the limit is 25 MB".
    with pytest.raises(AudioDecodeError, match="just over the 25 MB limit"):
        decode_audio_bytes(b"\0" * (25 * 1024 * 1024 + 1), target_rate=TARGET)


def test_timeouts_become_polite_errors(corpus: dict[str, Path]) -> None:
    with pytest.raises(AudioDecodeError, match="took too long"):
        decode_audio_file(corpus["flac"], target_rate=TARGET, limits=UploadLimits(probe_timeout_s=0.001))
    with pytest.raises(AudioDecodeError, match="took too long"):
        decode_audio_file(corpus["flac"], target_rate=TARGET, limits=UploadLimits(decode_timeout_s=0.001))


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="couldn't read that file") as exc_info:
        decode_audio_file(tmp_path, target_rate=TARGET)
    _no_leak(exc_info.value, tmp_path)
    with pytest.raises(AudioDecodeError, match="couldn't read that file"):
        decode_audio_file(tmp_path / "missing.mp3", target_rate=TARGET)


def test_caller_mistakes_are_value_errors(corpus: dict[str, Path]) -> None:
    data = corpus["wav"].read_bytes()
    with pytest.raises(ValueError):
        decode_audio_bytes(data, target_rate=TARGET, channels=3)
    with pytest.raises(ValueError):
        decode_audio_bytes(data, target_rate=0)


def test_temp_files_cleaned_up(corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    decode_audio_file(corpus["m4a"], target_rate=TARGET)
    probe_audio_bytes(corpus["ogg"].read_bytes())
    for name in ("trunc_flac", "text_as_mp3", "ffconcat", "hours_mp3", "video_only"):
        with pytest.raises(AudioDecodeError):
            decode_audio_file(corpus[name], target_rate=TARGET)
    with pytest.raises(AudioDecodeError):
        decode_audio_file(corpus["flac"], target_rate=TARGET, limits=UploadLimits(decode_timeout_s=0.001))
    assert list(scratch.iterdir()) == []

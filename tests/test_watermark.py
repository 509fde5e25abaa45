"""The AudioSeal watermark code path on a tiny randomly initialised generator and detector (tests/fixtures).

Random weights hide no message, so these tests check the plumbing: shapes, that embedding changes the audio only
slightly, that the 16-bit message reaches the model and comes back through the API, MP3/FLAC decoding for
detection, the report inside `/verify`'s answer, and the errors for missing or broken weights.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from audioseal import AudioSealDetector, AudioSealWM

from generation.credentials import ContentCredentials, Credential
from generation.postprocess import Provenance, write_flac, write_mp3
from generation.verification import CredentialStatus
from generation.watermark import (
    DETECTOR_FILE,
    GENERATOR_FILE,
    NBITS,
    AudioSealWatermarker,
    WatermarkError,
    WatermarkReport,
    bits_to_message,
    download_weights,
    load_watermarker,
    message_to_bits,
    server_message,
    weights_present,
)

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-audioseal"
SERVER = "Bandmate test server"
SR = 32000


def music(seconds: float, rate: int = SR, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    noise = 0.02 * np.random.default_rng(0).standard_normal(t.size)
    return np.tile(0.25 * (tone + noise), (channels, 1)).astype(np.float32)


def snr_db(clean: np.ndarray, marked: np.ndarray) -> float:
    noise = (marked - clean).astype(np.float64)
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise**2)))


@pytest.fixture(scope="module")
def marker() -> AudioSealWatermarker:
    return load_watermarker(TINY, server_name=SERVER)


@pytest.fixture
def always_yes(marker) -> AudioSealWatermarker:
    """The tiny detector with its last layer set to say "watermarked, carrying this server's message" everywhere."""
    detector = load_watermarker(TINY, server_name=SERVER).detector
    last = detector.detector[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-10.0, 10.0] + [10.0 if b else -10.0 for b in message_to_bits(marker.message)]))
    return AudioSealWatermarker(marker.generator, detector, message=marker.message)


def test_fixture_loads_through_the_package_builders(marker) -> None:
    assert isinstance(marker.generator, AudioSealWM) and isinstance(marker.detector, AudioSealDetector)
    assert marker.detector.nbits == NBITS and marker.generator.msg_processor.nbits == NBITS
    assert weights_present(TINY)
    assert sum(f.stat().st_size for f in TINY.iterdir()) < 200_000  # small enough for the repository


def test_committed_fixture_is_what_its_build_script_makes(tmp_path) -> None:
    sys.path.insert(0, str(TINY.parent))
    from build_tiny_audioseal import build

    build(tmp_path)
    for name in (GENERATOR_FILE, DETECTOR_FILE):
        built = torch.load(tmp_path / name, weights_only=True)
        committed = torch.load(TINY / name, weights_only=True)
        assert built["xp.cfg"] == committed["xp.cfg"] and built["model"].keys() == committed["model"].keys()
        assert all(torch.equal(built["model"][k], committed["model"][k]) for k in built["model"])


@pytest.mark.parametrize("rate", [32000, 44100, 48000])
def test_embedding_keeps_the_shape_and_changes_the_audio_slightly(marker, rate) -> None:
    clean = music(1.5, rate)
    marked = marker.embed(clean, rate)
    assert marked.shape == clean.shape and marked.dtype == np.float32
    assert not np.array_equal(marked, clean)
    assert snr_db(clean, marked) > 30.0
    assert np.max(np.abs(marked)) <= 1.0
    mono = clean[0]
    assert marker.embed(mono, rate).shape == mono.shape
    assert marker.embed(clean[:, :0], rate).shape == (2, 0)


def test_the_message_reaches_the_model_and_round_trips(marker) -> None:
    clean = music(1.0)
    first = marker.watermark_for(clean, SR, message=0x1234)
    second = marker.watermark_for(clean, SR, message=0xBEEF)
    assert first.shape == (clean.shape[1],) and not np.allclose(first, second)
    assert np.array_equal(marker.watermark_for(clean, SR, message=0x1234), first)  # deterministic
    for value in (0, 1, 0x1234, 0xBEEF, 2**NBITS - 1):
        assert bits_to_message(message_to_bits(value)) == value and len(message_to_bits(value)) == NBITS
    with pytest.raises(ValueError):
        message_to_bits(2**NBITS)
    with pytest.raises(ValueError):
        bits_to_message([1, 0, 2] + [0] * 13)
    assert server_message(SERVER) == marker.message == server_message(SERVER)
    assert 0 <= marker.message < 2**NBITS and server_message("another server") != marker.message


def test_detection_reads_mp3_and_flac(marker, tmp_path) -> None:
    marked = marker.embed(music(2.0), SR)
    provenance = Provenance(track_id="w1", prompt="p", seed=1, model_id="m", model_license="l", params={})
    mp3 = write_mp3(marked, SR, tmp_path / "w.mp3", provenance)
    flac = write_flac(marked, SR, tmp_path / "w.flac")
    for path in (mp3, flac):
        report = marker.detect_file(path)
        assert report.checked and report.error is None
        assert 0.0 <= report.probability <= 1.0 and 0 <= report.message < 2**NBITS
        assert isinstance(report.matches_server, bool)
    short = marker.detect(music(0.05), SR)
    assert not short.checked and "too short" in short.error


def test_a_detector_that_finds_the_mark_reports_this_server(always_yes, tmp_path) -> None:
    report = always_yes.detect(music(1.0), SR)
    assert report.detected and report.probability == 1.0
    assert report.message == always_yes.message and report.matches_server


def test_verify_reports_the_watermark_even_without_credentials(always_yes, tmp_path) -> None:
    creds = ContentCredentials(tmp_path / "keys")
    provenance = Provenance(track_id="w2", prompt="p", seed=1, model_id="m", model_license="l", params={})
    mp3 = write_mp3(always_yes.embed(music(2.0), SR), SR, tmp_path / "w.mp3", provenance)
    creds.sign(mp3, Credential("w2", "m", "l", "compose", datetime.datetime.now(datetime.timezone.utc)),
               include_prompt=False)  # fmt: skip
    signed = creds.verify(mp3, watermark=always_yes)
    assert signed.trusted and signed.watermark.detected
    assert json.loads(signed.to_json())["watermark"]["matches_server"] is True
    stripped = tmp_path / "stripped.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(mp3), "-map_metadata", "-1", "-b:a", "96k",
                    str(stripped)], check=True)  # fmt: skip
    report = creds.verify(stripped, watermark=always_yes)
    assert report.status is CredentialStatus.NO_CREDENTIALS and report.watermark.detected
    assert "watermark" in report.message and "Watermark: found, this server's" in report.lines()
    # Another server's mark is recognised as a watermark, but not as this server's.
    elsewhere = AudioSealWatermarker(always_yes.generator, always_yes.detector, message=server_message("elsewhere"))
    foreign = creds.verify(stripped, watermark=elsewhere)
    assert foreign.watermark.detected and foreign.watermark.matches_server is False
    assert "an AudioSeal watermark" in foreign.message and "this server" not in foreign.message
    # Files refused before decoding (not audio) are never handed to the decoder.
    text = tmp_path / "notes.mp3"
    text.write_text("not audio")
    assert creds.verify(text, watermark=always_yes).watermark is None
    # A file the decoder cannot read still gets its credentials answer, with the watermark error beside it.
    m4a = tmp_path / "fake.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00" + bytes(64))
    broken = creds.verify(m4a, watermark=always_yes)
    assert isinstance(broken.watermark, WatermarkReport) and not broken.watermark.checked and broken.watermark.error


def test_missing_weights_say_what_to_do(tmp_path) -> None:
    with pytest.raises(WatermarkError, match=r"python bot\.py download audioseal") as error:
        load_watermarker(tmp_path, server_name=SERVER)
    assert GENERATOR_FILE in str(error.value) and DETECTOR_FILE in str(error.value)
    (tmp_path / GENERATOR_FILE).write_bytes((TINY / GENERATOR_FILE).read_bytes())
    with pytest.raises(WatermarkError, match=f"{DETECTOR_FILE} is missing"):
        load_watermarker(tmp_path, server_name=SERVER)
    (tmp_path / DETECTOR_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(WatermarkError, match=r"cannot load the AudioSeal detector.*download audioseal"):
        load_watermarker(tmp_path, server_name=SERVER)
    assert not weights_present(tmp_path / "nowhere")


def test_download_fails_clearly_offline(tmp_path) -> None:
    # conftest sets HF_HUB_OFFLINE=1: the hub is unreachable, as on this machine.
    with pytest.raises(WatermarkError, match=r"could not download .*HF_HUB_OFFLINE"):
        download_weights(tmp_path / "audioseal")
    assert not (tmp_path / "audioseal" / GENERATOR_FILE).exists()


def test_a_replaced_part_takes_the_mark_only_inside_its_range(marker, tmp_path) -> None:
    """A replace's source already carries its mark; re-marking the whole track would change every sample the
    replace promised to keep (generation/runner.py JobRunner._marked)."""
    from generation.jobs import Job, JobKind
    from generation.runner import JobRunner
    from generation.types import Audio
    from storage.files import FileStore

    runner = JobRunner(lambda model: None, FileStore(tmp_path), watermark=marker)
    samples = music(3.0, rate=SR)
    job = Job(user_id="u", prompt="solo", duration_s=3.0, model="m", kind=JobKind.REPAINT)
    job.spec.repaint, job.spec.watermark = (1.0, 2.0), server_message(SERVER)
    out = runner._marked(job, Audio(samples, SR)).samples
    a, b = SR, 2 * SR
    assert np.array_equal(out[..., :a], samples[..., :a]) and np.array_equal(out[..., b:], samples[..., b:])
    assert np.abs(out[..., a:b] - samples[..., a:b]).max() > 0  # the new part is marked
    whole = Job(user_id="u", prompt="song", duration_s=3.0, model="m")
    whole.spec.watermark = server_message(SERVER)
    assert np.abs(runner._marked(whole, Audio(samples, SR)).samples[..., :a] - samples[..., :a]).max() > 0

"""The ACE-Step command line contract on the tiny fixture: compose --lyrics, replace, cover and stems, each through
`python bot.py` as a user runs it; durations checked by decoding the MP3s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ACE = ROOT / "tests" / "fixtures" / "tiny-ace-step"
MP3_FRAME_S = 1152 / 48_000


def mp3_seconds(path: str) -> float:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "f32le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    return len(np.frombuffer(raw, dtype=np.float32)) / 48_000


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    data = tmp_path_factory.mktemp("ace-cli")
    env = {**os.environ, "BANDMATE_MODEL": str(ACE), "BANDMATE_DATA": str(data / "data"), "HF_HUB_OFFLINE": "1",
           "BANDMATE_TORCH_THREADS": "1", "BANDMATE_LOG_LEVEL": "warning"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, str(ROOT / "bot.py"), *args], cwd=data, env=env, capture_output=True,
                              text=True, timeout=300)
        if ok:
            assert done.returncode == 0, done.stderr[-3000:]
        return done

    run.dir = data
    return run


RESULT: dict = {}


def test_compose_with_lyrics_from_a_file(cli):
    lyrics = cli.dir / "song.txt"
    lyrics.write_text("[verse]\nwalking down the street\n[chorus]\noh we sing\n", encoding="utf-8")
    done = cli("compose", "indie pop", "--lyrics", f"@{lyrics}", "--language", "en", "--bpm", "120", "--key",
               "C major", "--duration", "4", "--seed", "2", "--json", "--out", str(cli.dir / "out"))
    (row,) = json.loads(done.stdout)
    assert row["lyrics"] == "[verse]\nwalking down the street\n[chorus]\noh we sing"
    assert [s["label"] for s in row["sections"]] == ["Verse", "Chorus"] and row["sections"][-1]["end_s"] == 4.0
    assert abs(mp3_seconds(row["mp3"]) - 4.0) <= MP3_FRAME_S
    RESULT["song"] = row


def test_replace_a_range_of_that_track(cli):
    song = RESULT["song"]
    done = cli("replace", song["mp3"], "--start", "1", "--end", "2.5", "--prompt", "a guitar solo", "--json",
               "--out", str(cli.dir / "out"))
    (row,) = json.loads(done.stdout)
    assert row["replaced"] == {"start_s": 1.0, "end_s": 2.5} and row["prompt"] == "indie pop, a guitar solo"
    assert row["lyrics"] == song["lyrics"]  # the same song: its words stay
    assert abs(mp3_seconds(row["mp3"]) - 4.0) <= MP3_FRAME_S
    refused = cli("replace", song["mp3"], "--start", "3", "--end", "9", "--json", ok=False)
    assert refused.returncode == 2 and "runs past its end" in refused.stderr


def test_cover_and_stems_of_a_file(cli, tmp_path):
    rate = 32_000
    t = np.arange(int(3.0 * rate)) / rate
    wav = tmp_path / "tune.wav"
    import soundfile as sf

    sf.write(wav, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    (cover,) = json.loads(cli("cover", str(wav), "--style", "rock band", "--strength", "0.7", "--json",
                              "--out", str(cli.dir / "cover")).stdout)
    assert abs(mp3_seconds(cover["mp3"]) - 3.0) <= MP3_FRAME_S
    stems = json.loads(cli("stems", str(wav), "--json", "--out", str(cli.dir / "stems")).stdout)
    assert [s["stem"] for s in stems] == ["vocals", "drums", "bass", "other"]
    assert len({s["mp3"] for s in stems}) == 4
    for s in stems:
        assert abs(mp3_seconds(s["mp3"]) - 3.0) <= MP3_FRAME_S
    bad = cli("cover", str(wav), "--style", "x", "--strength", "2", ok=False)
    assert bad.returncode == 2 and "strength" in bad.stderr

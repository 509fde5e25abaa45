"""`python bot.py compose|continue` (a contract other tools drive): one path through the core and the queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-musicgen"


def bot(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BANDMATE_MODEL": str(TINY), "BANDMATE_DATA": str(tmp_path / "data"),
           "HF_HUB_OFFLINE": "1", "BANDMATE_LOG_LEVEL": "warning", "BANDMATE_TORCH_THREADS": "1"}
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run([sys.executable, str(ROOT / "bot.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_compose_then_continue_past_one_window(tmp_path):
    made = bot(tmp_path, "compose", "jazz trio", "--duration", "1.5", "--variations", "2", "--seed", "4",
               "--out", "out", "--json")
    assert made.returncode == 0, made.stderr
    rows = json.loads(made.stdout)
    assert [r["seed"] for r in rows] == [4, 5] and {r["prompt"] for r in rows} == {"jazz trio"}
    for row in rows:
        assert sf.info(tmp_path / row["flac"]).frames == int(1.5 * 32000)  # exact to the sample
        assert (tmp_path / row["mp3"]).stat().st_size > 0 and (tmp_path / row["png"]).exists()
    # Past one 30 s model window: the queue makes it window by window and delivers one file.
    longer = bot(tmp_path, "continue", rows[0]["flac"], "--duration", "31", "--out", "out2", "--json")
    assert longer.returncode == 0, longer.stderr
    [row] = json.loads(longer.stdout)
    assert row["duration_s"] == 32.5 and sf.info(tmp_path / row["flac"]).frames == int(32.5 * 32000)


def test_bad_input_gets_a_clear_message_and_exit_2(tmp_path):
    too_long = bot(tmp_path, "compose", "jazz", "--duration", "90", "--json")
    [error] = [line for line in too_long.stderr.splitlines() if line.startswith("error:")]
    assert too_long.returncode == 2 and "Duration must be between 1 and 30 seconds" in error
    assert "`" not in error and "**" not in error  # terminal text, not Discord Markdown
    (tmp_path / "notes.txt").write_text("not audio")
    hostile = bot(tmp_path, "continue", "notes.txt", "--duration", "5")
    assert hostile.returncode == 2 and "error:" in hostile.stderr
    missing = bot(tmp_path, "continue", "nowhere.wav")
    assert missing.returncode == 2 and "cannot read nowhere.wav" in missing.stderr
    assert not list((tmp_path / "data" / "audio").rglob("*.mp3"))  # nothing was made

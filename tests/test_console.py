"""The console transport: `python bot.py` without a token, driven line by line like a person at a terminal."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-musicgen"


try:
    from consoleprocess import Console
except ImportError:  # tests/ as a package
    from tests.consoleprocess import Console


def test_the_console_runs_the_same_core(tmp_path):
    console = Console(tmp_path, args=(), BANDMATE_MODEL=str(TINY))
    try:
        console.expect(r"Bandmate console")
        console.send("/compose smooth jazz trio --duration 1 --seed 1")
        console.expect(r"^job \w+: Composing: smooth jazz trio")
        jazz = console.expect(r"track (\w+): reply").group(1)
        console.send(f"vote {jazz}")
        console.expect(r"votes: " + jazz + " 1")
        console.send("style add piano")
        console.expect(r"Added piano")
        console.send('prefer set dreamy "soft pads, reverb"')
        console.expect(r"dreamy")
        console.send("/compose ballad --dreamy --duration 1.5")
        console.expect(r"Composing: ballad soft pads, reverb")
        ballad = console.expect(r"track (\w+): reply").group(1)
        console.send(f"reply {ballad} extend 2s")
        console.expect(r"Extending")
        extended = console.expect(r"track (\w+): reply").group(1)
        data, rate = sf.read(tmp_path / "audio" / extended[:2] / f"{extended}.flac")
        assert len(data) == int(3.5 * rate)
        console.send(f"like {ballad}")
        console.expect(r"More like this")
        console.send("taste")
        console.expect(r"piano")
        console.send("top all")
        console.expect(r"Top tracks of all time")
        console.send("privacy")
        console.expect(r"\d+ track")
        console.send("forget tracks")
        console.expect(r"[Dd]eleted|[Ff]orgot")
        console.send("help")
        console.expect(r"Bandmate makes music")
        # The console shows the core's structure as terminal text, never Discord Markdown.
        assert not [line for line in console.seen if "**" in line or "`" in line], console.seen
    finally:
        assert console.close() == 0

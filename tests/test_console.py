"""The console transport: `python bot.py` without a token, driven line by line like a person at a terminal."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import Path

import soundfile as sf

from app.services import Application
from app.settings import Settings
from bot.console import run_console

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


def test_a_fault_in_one_command_is_said_and_the_console_goes_on(tmp_path, monkeypatch, caplog):
    """Any exception from a command (not only a refusal or a bad file) is answered in one line and logged with its
    traceback; the console keeps reading and the piece queued before it is still made."""
    out = io.StringIO()

    async def main() -> int:
        settings = Settings(data_dir=tmp_path, model=str(TINY), torch_threads=1, rate_per_min=0.0)
        async with Application(settings, operator=True) as app:
            def broken(requester):
                raise KeyError("queue_position")

            monkeypatch.setattr(app.core, "queue_text", broken)
            stdin = io.StringIO("/compose smooth jazz trio --duration 1 --seed 1\nqueue\nhelp\n")
            return await run_console(app, stdin, out)

    with caplog.at_level(logging.ERROR, logger="bot.console"):
        assert asyncio.run(main()) == 0
    printed = out.getvalue()
    assert "Sorry, queue failed: that is a fault in Bandmate" in printed
    assert printed.index("Sorry, queue failed") < printed.index("Console commands:")  # the next command ran
    assert re.search(r"track (\w+): reply \1", printed)  # the piece queued before the fault was delivered
    (record,) = [r for r in caplog.records if "console command 'queue' failed" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError

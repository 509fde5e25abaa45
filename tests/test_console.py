"""The console transport: `python bot.py` without a token, driven line by line like a person at a terminal."""

from __future__ import annotations

import os
import queue as stdlib_queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-musicgen"


class Console:
    def __init__(self, data: Path) -> None:
        env = {**os.environ, "BANDMATE_MODEL": str(TINY), "BANDMATE_DATA": str(data), "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "BANDMATE_TORCH_THREADS": "1"}
        env.pop("DISCORD_TOKEN", None)
        self.log = open(data / "console.log", "w")  # a pipe nobody reads would fill up and block the console
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bot.py")], cwd=data, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.lines: stdlib_queue.Queue[str] = stdlib_queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except stdlib_queue.Empty:
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; saw:\n" + "\n".join(self.seen[-30:]))

    def close(self) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.log.close()


def test_the_console_runs_the_same_core(tmp_path):
    console = Console(tmp_path)
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

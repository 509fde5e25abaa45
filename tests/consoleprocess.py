"""`python bot.py [console]` as a child process with its stdin piped, driven line by line like a person at a
terminal: every stdout line is kept and can be awaited; the database can be read alongside."""

from __future__ import annotations

import json
import os
import queue as stdlib_queue
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Console:
    """`python bot.py console` with its stdin piped; every stdout line is kept and can be awaited."""

    def __init__(self, data: Path, *, args: tuple[str, ...] = ("console",), **env: str) -> None:
        """`args`: bot.py's arguments (none: the default command, which is the console without a token)."""
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        full = {**os.environ, "BANDMATE_DATA": str(data), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "BANDMATE_TORCH_THREADS": "1", "BANDMATE_LOG_LEVEL": "warning", **env}
        full.pop("DISCORD_TOKEN", None)
        self.log = open(data / "console.log", "w")  # a pipe nobody reads would fill up and block the console
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bot.py"), *args], cwd=data, env=full,
                                     text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.lines: stdlib_queue.Queue[str] = stdlib_queue.Queue()
        self.seen: list[str] = []
        self._results_read = 0  # how far into `seen` results() has taken its track ids
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match:
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
        raise AssertionError(f"no line matching {pattern!r}; saw:\n" + "\n".join(self.seen[-40:]))

    def ask(self, line: str, pattern: str) -> re.Match:
        """Send a line and wait for its answer."""
        mark = len(self.seen)
        self.send(line)
        match = self.expect(pattern)
        self.answer = self.seen[mark:]
        return match

    def results(self, count: int) -> list[str]:
        """The next `count` results' track ids (each result ends on its "track ID: reply ID ..." line), in the
        order printed. A result printed while `ask` waited for its own answer counts too: it was already seen."""
        result = re.compile(r"track (\w+): reply \1")
        ids: list[str] = []
        while len(ids) < count:
            if self._results_read == len(self.seen):
                self.expect(result.pattern)
            line = self.seen[self._results_read]
            self._results_read += 1
            if match := result.search(line):
                ids.append(match.group(1))
        return ids

    def jobs(self) -> int:
        return len(self.rows("SELECT id FROM jobs"))

    def rows(self, sql: str, args=()) -> list[tuple]:
        with sqlite3.connect(f"file:{self.data / 'bandmate.db'}?mode=ro", uri=True) as db:
            return db.execute(sql, args).fetchall()

    def track(self, track_id: str) -> dict:
        (row,) = self.rows("SELECT operation, parent_track_id, params, mp3, job_id FROM tracks WHERE id = ?",
                           (track_id,))
        return {"operation": row[0], "parent": row[1], "params": json.loads(row[2]), "mp3": self.data / row[3],
                "job_id": row[4]}

    def close(self) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=120)
        finally:
            self.log.close()

    def assert_clean(self) -> None:
        """Plain terminal text: no Discord Markdown, and no traceback anywhere."""
        assert not [line for line in self.seen if "**" in line or "`" in line], self.seen
        assert "Traceback" not in "\n".join(self.seen) + (self.data / "console.log").read_text()

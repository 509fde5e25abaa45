"""`python bot.py` as a child process pointed at the fake Discord, and the fixtures the end-to-end tests share.

Test modules import `fake` and `no_spec_violations` from here and build their bot with `start_bot`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytest_asyncio

try:
    from fakediscord import FakeDiscord
    from openapi_validation import format_violations
except ImportError:  # tests/ as a package
    from tests.fakediscord import FakeDiscord
    from tests.openapi_validation import format_violations

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-musicgen"
TINY_MELODY = ROOT / "tests" / "fixtures" / "tiny-musicgen-melody"


class BotProcess:
    """`python bot.py` in a child process, its log collected so tests can wait for lines in it."""

    def __init__(self, fake, data: Path, **env: str) -> None:
        self.fake, self.data, self.extra_env = fake, data, env
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        env = {**os.environ, "DISCORD_TOKEN": self.fake.token, "DISCORD_API_BASE": self.fake.api_base,
               "DISCORD_GATEWAY_URL": str(self.fake.gateway_url), "DISCORD_GUILD_IDS": str(self.fake.guild.id),
               "BANDMATE_MODEL": str(TINY), "BANDMATE_DATA": str(self.data), "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "BANDMATE_LOG_LEVEL": "info",
               "BANDMATE_RATE_PER_MIN": "0", "BANDMATE_TORCH_THREADS": "1", "BANDMATE_MELODY_MODEL": str(TINY_MELODY),
               **self.extra_env}
        self.lines = []
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bot.py")], cwd=self.data, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        with open(self.data / "bot.log", "a") as log:
            for line in proc.stdout:
                self.lines.append(line.rstrip())
                log.write(line)
                log.flush()

    async def wait_log(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None:
                raise AssertionError("bot exited:\n" + "\n".join(self.lines[-30:]))
            await asyncio.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines[-30:]))

    async def stop(self) -> int:
        """SIGTERM, then wait without blocking the loop: the fake Discord in this loop must keep answering."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.wait, 60)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake():
    async with FakeDiscord() as server:
        yield server


@pytest.fixture(autouse=True)
def no_spec_violations(fake):
    """Fail the test if the bot sent any body that Discord's OpenAPI spec rejects."""
    yield
    violations = fake.take_violations()
    if violations:
        pytest.fail(format_violations(violations), pytrace=False)


async def running_bot(fake, data: Path, **env: str):
    """Start the bot, wait until it is connected, and at the end check it stopped cleanly with no traceback."""
    process = BotProcess(fake, data, **env)
    process.start()
    await process.wait_log(r"connected as")
    yield process
    assert await process.stop() == 0, "\n".join(process.lines[-30:])
    assert "Traceback" not in "\n".join(process.lines), "\n".join(process.lines)


# Where things are, not how the bot behaves: these stay the test's own even with the shipped settings.
_NOT_LIMITS = {"BANDMATE_MODEL", "BANDMATE_MELODY_MODEL", "BANDMATE_DATA", "BANDMATE_TORCH_THREADS",
               "BANDMATE_DEVICE", "BANDMATE_LOG_LEVEL"}


def shipped_settings() -> dict[str, str]:
    """The limits and queue settings `.env.example` ships, as a new operator runs them: pass them to
    `running_bot` (they win over the relaxed test ones) to test what people actually meet."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("BANDMATE_") and value.strip() and key not in _NOT_LIMITS:
            values[key] = value.strip()
    return values

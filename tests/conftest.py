"""Shared fixtures: the tiny MusicGen, a data directory with a real SQLite file, a real Redis server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "tests" / "fixtures" / "tiny-musicgen"

# Tests never reach a model hub: everything loads from the fixtures through from_pretrained.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    """The tiny models gain nothing from threads, and on 2 shared cores threads only fight each other."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    return str(TINY_MODEL)


@pytest.fixture(scope="session")
def models():
    """A registry with the tiny model loaded once for the whole run."""
    from generation.models import ModelRegistry

    registry = ModelRegistry(device="cpu", dtype="fp32")
    registry.get(str(TINY_MODEL))
    return registry


@pytest.fixture(scope="session")
def tiny_backend(models):
    return models.get(str(TINY_MODEL))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, in its own directory; can be restarted empty."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run the README's test command (it installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def harness(tmp_path, models, tiny_model_path):
    """Makes scheduler harnesses (tests/queue_harness.py), each in its own data directory."""
    from generation.scheduler import SchedulerConfig
    from queue_harness import Harness

    made = []

    def make(config: SchedulerConfig | None = None, backend_for=None) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", models, config or SchedulerConfig(), backend_for,
                    model=tiny_model_path)
        made.append(h)
        return h

    yield make

"""Kill -9 the process that holds the in-process queue mid-generation; a restart delivers every job exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

CHILD = Path(__file__).with_name("queue_child.py")


def spawn(data: Path, model: str, mode: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), str(data), model, mode, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def test_sigkill_mid_generation_then_restart_delivers_each_job_once(tmp_path, tiny_model_path):
    n = 3
    child = spawn(tmp_path, tiny_model_path, "submit", n)
    submitted, delivered, killed_during = [], [], None
    for line in child.stdout:  # event-driven: read until the moment, then kill
        word, *rest = line.split()
        if word == "submitted":
            submitted.append(rest[0])
        elif word == "delivered":
            delivered.append(rest[0])
        elif word == "progress" and delivered and rest[0] not in delivered:
            killed_during = rest[0]  # the second job is mid-generation; the first is already delivered
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(submitted) == n and len(delivered) == 1 and killed_during in submitted

    restarted = spawn(tmp_path, tiny_model_path, "resume", n)
    out, _ = restarted.communicate(timeout=240)
    assert restarted.returncode == 0, out
    assert "all delivered" in out
    lines = (tmp_path / "deliveries.txt").read_text().splitlines()
    counts = Counter(line.split()[0] for line in lines)
    assert counts == Counter({job_id: 1 for job_id in submitted})
    assert all(line.endswith(" done 1") for line in lines)
    # the job delivered before the crash was not generated again
    assert f"started {delivered[0]}" not in out

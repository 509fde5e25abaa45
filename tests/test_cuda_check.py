"""The GPU check's exactness script, dry-run on the CPU: it runs at most once per lent GPU, so it must not rot here.

`bench/cuda_check.py --device cpu` runs every check a CPU can (each step mode against `generate`, fp32 and bf16,
the static step joined at step k against alone) and every one must hold; `--oom` refuses without CUDA.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_check.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_cuda_checks_dry_run_on_the_cpu_passes_every_check():
    done = run_check("--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.startswith(("cpu_", "load_")))
    for dtype in ("fp32", "bf16"):
        for mode in ("exact", "batched", "static"):
            assert lines[f"cpu_{dtype}_{mode}_alone_matches_generate"] == "True"
    for k in (0, 1, 7, 23):
        assert lines[f"cpu_bf16_graphs_joined_at_{k}_matches_alone"] == "True"
    assert all(value in ("True", "ok") for value in lines.values()), lines


def test_the_out_of_memory_check_needs_cuda_and_says_so():
    done = run_check("--device", "cpu", "--oom")
    assert done.returncode == 2 and "needs CUDA" in done.stdout

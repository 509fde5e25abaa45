"""The committed tiny models are exactly what their build scripts make, and stay small."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


@pytest.mark.parametrize("script, fixture", [("build_tiny_musicgen", "tiny-musicgen"),
                                             ("build_tiny_musicgen_melody", "tiny-musicgen-melody")])
def test_fixture_matches_its_build_script(tmp_path, script, fixture):
    module = __import__(script)
    out = module.build(tmp_path / fixture)
    committed = ROOT / "tests" / "fixtures" / fixture
    assert (out / "model.safetensors").read_bytes() == (committed / "model.safetensors").read_bytes()
    assert sum(p.stat().st_size for p in committed.rglob("*") if p.is_file()) < 2 * 1024 * 1024

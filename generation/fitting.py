"""Fit stored tracks under a transport's upload limit, re-encoding from the lossless master."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import soundfile as sf

from generation.postprocess import Provenance, fit_mp3, read_provenance

log = logging.getLogger(__name__)


def refit_track(mp3: Path, flac: Path, max_bytes: int, out: Path) -> Path | None:
    """A copy of `mp3` (same tags) at the highest bitrate that fits `max_bytes`, or None if none does.

    Re-encodes from the FLAC master rather than the MP3, so lowering the bitrate never stacks two lossy passes.
    """
    if mp3.stat().st_size <= max_bytes:
        return mp3
    tags = read_provenance(mp3)
    provenance = Provenance(
        track_id=tags.get("track_id", ""), prompt=tags.get("prompt", ""), seed=int(tags.get("seed", 0) or 0),
        model_id=tags.get("model", ""), model_license=tags.get("model_license", ""),
        params=json.loads(tags.get("params") or "{}"), software=tags.get("software", ""),
    )
    samples, rate = sf.read(str(flac), dtype="float32", always_2d=True)
    return fit_mp3(samples.T, rate, provenance, max_bytes, out)

"""ACE-Step 1.5's family facts, known without loading the model or importing torch: how to recognise it, its
licence and limits, and its `ModelInfo` (what /help, doctor, the planner and the scheduler ask)."""

from __future__ import annotations

import json
import os
from typing import Any

from generation.ace_requests import DEFAULT_STEMS, MODEL_STEMS, AceTask

FAMILY = "ace-step"
LICENSE = "MIT"
PIPELINE_CLASS = "AceStepPipeline"  # model_index.json's _class_name
DEFAULT_MODEL = "ACE-Step/acestep-v15-xl-turbo-diffusers"
MAX_DURATION_S = 600.0  # ACE-Step 1.5: 10 s to 10 minutes
SAMPLE_RATE = 48_000
TURBO_STEPS = 8
BASE_STEPS = 50
BASE_GUIDANCE = 7.0


def license_for(model_id: str) -> str:
    """ACE-Step 1.5's code and weights are MIT-licensed."""
    return LICENSE


def is_ace_step(pipeline_class: str | None, model_id: str) -> bool:
    """Whether a model id is this family, from model_index.json's `_class_name` (generation/models.py's
    `pipeline_class(model_id)`); a hub id whose index cannot be read (offline, not cached) counts when its name says
    ACE-Step, so its loader explains what is missing."""
    if pipeline_class is not None:
        return pipeline_class == PIPELINE_CLASS
    name = model_id.lower()
    return not os.path.isdir(model_id) and ("acestep" in name or "ace-step" in name)


def is_turbo(model_id: str) -> bool:
    """Guidance-distilled (8 steps, no guidance): a local folder's transformer config says `is_turbo`; a hub id
    says "turbo" in its name."""
    config = os.path.join(model_id, "transformer", "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                return bool(json.load(f).get("is_turbo"))
        except (OSError, ValueError):
            pass
    return "turbo" in model_id.lower()


def model_facts(model_id: str) -> dict[str, Any]:
    """What the family can do, known without loading (for ModelInfo, /help and doctor)."""
    turbo = is_turbo(model_id)
    return dict(family=FAMILY, license=LICENSE, sample_rate=SAMPLE_RATE, channels=2, max_duration_s=MAX_DURATION_S,
                default_steps=TURBO_STEPS if turbo else BASE_STEPS, default_guidance=1.0 if turbo else BASE_GUIDANCE,
                supports_continuation=False, supports_lyrics=True, tasks=tuple(t.value for t in AceTask),
                stems=DEFAULT_STEMS)


def ace_step_info(model_id: str):
    """The family's ModelInfo: lyrics, repaint, covers, stems and added parts; one duration per call; no
    continuation."""
    from generation.models import Family, ModelInfo

    facts = model_facts(model_id)
    return ModelInfo(model_id, Family.ACE_STEP, LICENSE, supports_continuation=False,
                     default_guidance=facts["default_guidance"], default_steps=facts["default_steps"],
                     lyrics=True, repaint=True, cover=True, stems=DEFAULT_STEMS, parts=MODEL_STEMS,
                     max_duration_s=MAX_DURATION_S,
                     one_duration_per_call=True)

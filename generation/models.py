"""Loaded models by id: each loaded once per process, on first use, by whichever thread asks first."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable
from enum import Enum

from generation.backend import Backend, ModelLoadError
from generation.hub import hub_load_options
from generation.spec import JobSpec
from generation.types import tokens_for

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, *, device: str = "auto", dtype: str = "auto", compile: bool = False, threads: int = 0,
                 setting_for: Callable[[str], str] = lambda model_id: "BANDMATE_MODEL", cpu_offload: bool = False) -> None:
        """setting_for(model_id): the variable that names the model, for errors that say what to change.
        cpu_offload: ACE-Step on a GPU keeps each network on the CPU until its turn (BANDMATE_CPU_OFFLOAD)."""
        self.cpu_offload = cpu_offload
        self.setting_for = setting_for
        self.threads = threads
        self.device = device
        self.dtype = dtype
        self.compile = compile
        self._loaded: dict[str, Backend] = {}
        self._failed: dict[str, ModelLoadError] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> Backend:
        with self._lock:
            if model_id in self._loaded:
                return self._loaded[model_id]
            if model_id in self._failed:
                raise self._failed[model_id]
            try:
                backend = self._load(model_id)
            except ModelLoadError as error:
                self._failed[model_id] = error
                raise
            self._loaded[model_id] = backend
            return backend

    __call__ = get

    def loaded(self) -> dict[str, Backend]:
        """The models loaded so far, by id (for the operator's memory figures)."""
        with self._lock:
            return dict(self._loaded)

    def _load(self, model_id: str) -> Backend:
        # First, before torch and transformers are even imported (seconds): a model that must come from a hub that
        # cannot be reached fails here, in one line, instead of after minutes of download retries. (Stable Audio's
        # loader makes the same check itself, adding what its gated licence needs.)
        if not is_stable_audio(model_id):
            hub_load_options(model_id, setting=self.setting_for(model_id))
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        from generation.musicgen import MusicGenBackend

        if is_ace_step_model(model_id):  # --- ACE-STEP: songs with lyrics, repaint, covers, stems ---
            from generation.ace_step import AceStepBackend

            return AceStepBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile,
                                       cpu_offload=self.cpu_offload)
        if is_stable_audio(model_id):  # --- STABLE AUDIO: a diffusers pipeline, not a transformers checkpoint ---
            from generation.stable_audio import StableAudioBackend

            return StableAudioBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)
        kind = checkpoint_model_type(model_id)
        # A hub id whose config cannot be fetched goes by its name, so its error names BANDMATE_MELODY_MODEL.
        guessed = kind is None and not os.path.isdir(model_id) and "melody" in model_id.lower()
        if kind == "musicgen_melody" or guessed:  # --- REMIX: the melody model's own backend ---
            from generation.melody import MelodyBackend

            return MelodyBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)
        return MusicGenBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)


def checkpoint_model_type(model_id: str) -> str | None:
    """config.json's model_type, or None when it cannot be read (MusicGenBackend.load then says what is wrong)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_id, **hub_load_options(model_id)).model_type
    except Exception as error:  # noqa: BLE001 - any failure falls through to the loader's own error message
        log.debug("no readable config for %s: %s", model_id, error)
        return None


# --- STABLE AUDIO: which family a model id is, from its diffusers model_index.json -----------------------------


def pipeline_class(model_id: str) -> str | None:
    """model_index.json's `_class_name` (diffusers pipelines); None when there is none or it cannot be read.

    A local folder is read directly; a hub id through `hf_hub_download`, which offline answers from the cache.
    """
    try:
        if os.path.isdir(model_id):
            path = os.path.join(model_id, "model_index.json")
            if not os.path.isfile(path):
                return None
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model_id, "model_index.json", **hub_load_options(model_id))
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("_class_name")
    except Exception as error:  # noqa: BLE001 - not a readable diffusers pipeline: the MusicGen path decides
        log.debug("no readable model_index.json for %s: %s", model_id, error)
        return None


def is_stable_audio(model_id: str) -> bool:
    """A StableAudioPipeline folder or hub repo. A hub id whose index cannot be fetched (gated without HF_TOKEN,
    offline and not cached) counts when its name says stable-audio, so its loader explains what is missing."""
    name = pipeline_class(model_id)
    if name is not None:
        return name == "StableAudioPipeline"
    return not os.path.isdir(model_id) and "stable-audio" in model_id.lower()


def is_ace_step_model(model_id: str) -> bool:
    """An AceStepPipeline folder or hub repo (or a hub id naming acestep / ace-step whose index cannot be read)."""
    from generation.ace_step_facts import is_ace_step

    return is_ace_step(pipeline_class(model_id), model_id)


# --- what a model can do, known without loading it (for refusing early, batching, /help and doctor) ------------

MUSICGEN_LICENSE = "CC-BY-NC 4.0 (weights), MIT (code)"
STABLE_AUDIO_LICENSE = "Stability AI Community License"
STABLE_AUDIO_DEFAULT_STEPS = 100  # generation.stable_audio.DEFAULT_STEPS (not imported: it pulls in torch)


class Family(str, Enum):
    MUSICGEN = "musicgen"
    MUSICGEN_MELODY = "musicgen-melody"
    STABLE_AUDIO = "stable-audio"
    ACE_STEP = "ace-step"


@dataclass(frozen=True)
class ModelInfo:
    """A family's abilities and defaults: every layer asks these instead of comparing family names."""

    model_id: str
    family: Family
    license: str
    supports_continuation: bool
    default_guidance: float
    # Diffusion families run a fixed number of denoising steps whatever the duration; None: one step per token.
    default_steps: int | None = None
    # Variations (and more like this) of a track start from its audio (audio-to-audio) at this strength.
    variation_strength: float | None = None
    # --- ACE-STEP abilities (generation/ace_step.py); other families have none of them ---
    lyrics: bool = False  # sings the words of a song
    repaint: bool = False  # makes a range of its own track anew (a thread reply "redo the bridge")
    cover: bool = False  # remakes any audio in another style
    stems: tuple[str, ...] = ()  # splits any audio into these stems
    parts: tuple[str, ...] = ()  # adds one of these parts (instruments) to any audio
    max_duration_s: float | None = None  # the longest piece one call can make (None: the bot's limit decides)
    one_duration_per_call: bool = False  # every row of a call has the same length (the pipeline takes one)

    @property
    def diffusion(self) -> bool:
        return self.default_steps is not None

    def steps_for(self, seconds: float, spec: JobSpec) -> int:
        """Model steps of a call making `seconds` of audio: what progress bars and ETAs count."""
        if self.default_steps is not None:
            return int(spec.steps or self.default_steps)
        return tokens_for(seconds)

    def batch_key(self, spec: JobSpec, has_input_audio: bool, duration_s: float | None = None) -> tuple:
        """What must match, beyond model, kind and sampling, for two jobs to share one model call."""
        if self.one_duration_per_call:  # ACE-Step: one duration, metadata, task range and reference per call
            return (None if duration_s is None else round(duration_s, 3), spec.steps, spec.bpm,
                    (spec.key or "").lower(), spec.repaint, spec.cover_strength, spec.reference_audio,
                    spec.part, has_input_audio)
        if not self.diffusion:
            return ()
        return spec.steps, spec.strength, spec.negative_prompt, has_input_audio

    @property
    def any_duration_batches(self) -> bool:
        """Every diffusion call denoises the model's whole window and crops after: durations need not match."""
        return self.diffusion and not self.one_duration_per_call


@functools.lru_cache(maxsize=64)
def model_info(model_id: str) -> ModelInfo:
    """The family of a model id (hub id or folder) from its config files; MusicGen when they cannot be read."""
    if is_ace_step_model(model_id):
        from generation.ace_step_facts import ace_step_info

        return ace_step_info(model_id)
    if is_stable_audio(model_id):
        return ModelInfo(model_id, Family.STABLE_AUDIO, STABLE_AUDIO_LICENSE, supports_continuation=False,
                         default_guidance=7.0, default_steps=STABLE_AUDIO_DEFAULT_STEPS, variation_strength=0.5)
    kind = checkpoint_model_type(model_id)
    melody = kind == "musicgen_melody" or (kind is None and "melody" in model_id.lower())
    licence = MUSICGEN_LICENSE if model_id.startswith("facebook/musicgen") else "see the model card"
    return ModelInfo(model_id, Family.MUSICGEN_MELODY if melody else Family.MUSICGEN, licence,
                     supports_continuation=not melody, default_guidance=3.0)

"""Loaded models by id: each loaded once per process, on first use, by whichever thread asks first."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from dataclasses import dataclass

from generation.backend import Backend, ModelLoadError

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, *, device: str = "auto", dtype: str = "auto", compile: bool = False, threads: int = 0) -> None:
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

    def loaded(self) -> list[Backend]:
        return list(self._loaded.values())

    def _load(self, model_id: str) -> Backend:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        from generation.musicgen import MusicGenBackend

        if is_stable_audio(model_id):  # --- STABLE AUDIO: a diffusers pipeline, not a transformers checkpoint ---
            from generation.stable_audio import StableAudioBackend

            return StableAudioBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)
        if checkpoint_model_type(model_id) == "musicgen_melody":  # --- REMIX: the melody model's own backend ---
            from generation.melody import MelodyBackend

            return MelodyBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)
        return MusicGenBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)


def checkpoint_model_type(model_id: str) -> str | None:
    """config.json's model_type, or None when it cannot be read (MusicGenBackend.load then says what is wrong)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_id).model_type
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

            path = hf_hub_download(model_id, "model_index.json")
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


# --- what a model can do, known without loading it (for refusing early, /help and doctor) ----------------------

MUSICGEN_LICENSE = "CC-BY-NC 4.0 (weights), MIT (code)"
STABLE_AUDIO_LICENSE = "Stability AI Community License"


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    family: str  # "musicgen" | "musicgen-melody" | "stable-audio"
    license: str
    supports_continuation: bool
    default_guidance: float


@functools.lru_cache(maxsize=64)
def model_info(model_id: str) -> ModelInfo:
    """The family of a model id (hub id or folder) from its config files; MusicGen when they cannot be read."""
    if is_stable_audio(model_id):
        return ModelInfo(model_id, "stable-audio", STABLE_AUDIO_LICENSE, False, 7.0)
    kind = checkpoint_model_type(model_id)
    melody = kind == "musicgen_melody" or (kind is None and "melody" in model_id.lower())
    licence = MUSICGEN_LICENSE if model_id.startswith("facebook/musicgen") else "see the model card"
    return ModelInfo(model_id, "musicgen-melody" if melody else "musicgen", licence, not melody, 3.0)

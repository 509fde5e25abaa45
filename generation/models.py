"""Loaded models by id: each loaded once per process, on first use, by whichever thread asks first."""

from __future__ import annotations

import logging
import threading

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

"""Loaded models by id: each loaded once per process, on first use, by whichever thread asks first."""

from __future__ import annotations

import logging
import threading

from generation.backend import Backend, ModelLoadError

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, *, device: str = "auto", dtype: str = "auto", compile: bool = False) -> None:
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
        from generation.musicgen import MusicGenBackend

        return MusicGenBackend.load(model_id, device=self.device, dtype=self.dtype, compile=self.compile)

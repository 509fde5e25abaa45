"""Engine figures for Prometheus, the same in the bot and in each Redis worker: model steps run and their rate,
and the memory each loaded model's weights take. The HTTP endpoint and the queue's figures live in app/metrics.py.

Everything goes into a `CollectorRegistry` the caller owns (one per process, or one per test).
"""

from __future__ import annotations

import sys
import threading
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from generation.types import Progress


def model_label(model_id: str) -> str:
    """A model's short name: a local folder's full path would leak the operator's file layout into dashboards."""
    return model_id.rstrip("/").split("/")[-1] or model_id


def weights_bytes(backend: object) -> int:
    """Bytes of the parameters and buffers of a backend's torch modules (a MusicGen model or a diffusers
    pipeline's components). Reads tensor sizes only: no torch op runs, so it is safe off the model thread."""
    modules = []
    model = getattr(backend, "model", None)
    if hasattr(model, "parameters"):
        modules.append(model)
    pipe = getattr(backend, "pipe", None)
    for component in (getattr(pipe, "components", None) or {}).values():
        if hasattr(component, "parameters"):
            modules.append(component)
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            key = (tensor.data_ptr(), tensor.numel())
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


class _ModelMemory(Collector):
    """bandmate_model_memory_bytes{model}: read at scrape time from the loaded models (cached per model)."""

    def __init__(self, loaded: Callable[[], dict[str, object]]) -> None:
        self.loaded = loaded
        self._sizes: dict[str, int] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("bandmate_model_memory_bytes", "Memory the weights of each loaded model take",
                                   labels=["model"])
        for model_id, backend in self.loaded().items():
            if model_id not in self._sizes:
                self._sizes[model_id] = weights_bytes(backend)
            family.add_metric([model_label(model_id)], self._sizes[model_id])
        yield family
        torch = sys.modules.get("torch")  # never imported for this
        if torch is not None and torch.cuda.is_available():
            cuda = GaugeMetricFamily("bandmate_cuda_memory_allocated_bytes", "GPU memory torch holds, per device",
                                     labels=["device"])
            for index in range(torch.cuda.device_count()):
                cuda.add_metric([str(index)], torch.cuda.memory_allocated(index))
            yield cuda


class EngineMetrics:
    """Model steps (decode steps for MusicGen, denoising steps for diffusion) and model memory."""

    def __init__(self, registry: CollectorRegistry, loaded_models: Callable[[], dict[str, object]] | None = None,
                 ) -> None:
        self.registry = registry
        self.steps = Counter("bandmate_decode_steps", "Model steps run (one step advances a whole batch)",
                             ["model"], registry=registry)
        self.steps_per_second = Gauge("bandmate_decode_steps_per_second",
                                      "Model steps per second of the latest batch", ["model"], registry=registry)
        self._last: dict[str, Progress] = {}
        self._lock = threading.Lock()
        if loaded_models is not None:
            registry.register(_ModelMemory(loaded_models))

    def observe_progress(self, model_id: str, progress: Progress, batch: str = "") -> None:
        """One batch's progress report (any thread); `batch` tells concurrent batches apart. Steps are counted by
        their increase; a report whose step went down is a new batch (or a job started again): from zero."""
        label = model_label(model_id)
        with self._lock:
            last = self._last.pop(batch, None)
            done = progress.step - last.step if last is not None and progress.step >= last.step else progress.step
            if progress.step < progress.total:
                self._last[batch] = progress
            while len(self._last) > 256:  # batches that never reported their last step
                self._last.pop(next(iter(self._last)))
        if done > 0:
            self.steps.labels(label).inc(done)
        if progress.step > 2 and progress.elapsed_s > 0:  # past the prefill and warm-up
            self.steps_per_second.labels(label).set(progress.step / progress.elapsed_s)

"""What the scheduler needs from a model family, and the errors a model call can end in."""

from __future__ import annotations

from typing import Callable, Protocol

from generation.types import Audio, GenerationRequest, ProgressCallback


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what the operator should do."""


class GenerationCancelled(RuntimeError):
    """Every job in the batch was cancelled; the model call stopped at its next step."""


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory for this batch; a smaller batch may fit."""


class Backend(Protocol):
    model_id: str
    family: str
    license: str
    sample_rate: int
    max_duration_s: float  # longest single model call; longer targets are windowed continuations
    supports_continuation: bool
    device: str
    dtype: str

    def generate(
        self,
        requests: list[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Audio]]:
        """Run the requests as ONE batch; return, per request, one Audio per variation.

        All requests share sampling parameters. Variation i of a request is seeded with seed + i and comes out
        the same whatever else shares the batch.
        """
        ...

"""What the queue needs from where the model runs (an Executor: in this process, in slots, or on Redis workers) and
from a transport's delivery (a DeliverySink). Protocols only, so each side can be read on its own."""

from __future__ import annotations

from typing import Callable, Protocol

from generation.jobs import Job, TrackRecord
from generation.types import Progress


class DeliverySink(Protocol):
    """A transport's way to hand a finished (or failed, or cancelled) job to its user. Must be safe to repeat."""

    async def deliver(self, job: Job, tracks: list[TrackRecord]) -> None: ...


class Executor(Protocol):
    """Runs batches: here in a model thread, or on remote workers."""

    batch_limit: int | None  # None: batch as the scheduler likes; 1: dispatch single jobs (workers batch)

    def has_capacity(self) -> bool: ...

    async def execute(
        self, jobs: list[Job], progress: Callable[[Progress], None], should_stop: Callable[[], bool]
    ) -> dict[str, list[TrackRecord]]: ...

    async def close(self) -> None: ...

"""What the queue tells the world about a job: plain values that transports may import and display."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EventKind(str, Enum):
    QUEUED = "queued"
    POSITION = "position"
    STARTED = "started"
    PROGRESS = "progress"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    NOTICE = "notice"  # something the user should know about the job meanwhile (a fault); `message` says it

    @property
    def final(self) -> bool:
        return self in (EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED)


@dataclass(frozen=True)
class JobEvent:
    kind: EventKind
    job_id: str
    user_id: str
    step: int = 0
    total: int = 0
    position: int | None = None  # 1 = next to run
    eta_s: float | None = None
    message: str | None = None

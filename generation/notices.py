"""What an executor tells the scheduler about the jobs it holds, beside their progress.

A remote executor hands a job to Redis long before a worker starts it, and faults happen out of the scheduler's
sight (a worker dies, the queue server goes away). The executor reports them as `ExecutorNotice`s through the
`on_notice` callable the scheduler sets; the scheduler turns them into job events, so a status message says what
is really happening instead of freezing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

TAKEN_OVER_TEXT = "the worker making this stopped; starting again on another (your place is kept)"
TAKEN_OVER_NOTE = "started again on another worker"  # beside its progress afterwards
OUTAGE_TEXT = "the queue server is unreachable; your job is safe and resumes on its own"


class NoticeKind(str, Enum):
    STARTED = "started"  # a worker began generating the job (until then it waited in line in Redis)
    TAKEN_OVER = "taken_over"  # its worker stopped; another worker starts it again from the beginning
    OUTAGE = "outage"  # the queue server cannot be reached; nothing is lost
    RECOVERED = "recovered"  # the queue server is back


@dataclass(frozen=True)
class ExecutorNotice:
    kind: NoticeKind
    job_ids: tuple[str, ...] = ()  # OUTAGE and RECOVERED concern every job and leave it empty

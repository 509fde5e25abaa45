"""Jobs the scheduler has handed to an executor that says when each one really starts (remote workers).

Until a worker takes it, a dispatched job waits in line in Redis: its status says "#2 in line", not "starting…",
and the jobs still at the bot count it ahead of them. Notes from faults (a takeover, an outage) live here too, so
the events that follow keep saying them.
"""

from __future__ import annotations

from generation.notices import OUTAGE_TEXT


class Handover:
    def __init__(self, reports_start: bool) -> None:
        self.reports_start = reports_start
        self._waiting: dict[str, None] = {}  # job ids handed over, not yet started, in hand-over order
        self.notes: dict[str, str] = {}  # job id -> what its progress keeps saying (e.g. it was taken over)
        self.outage = False

    def handed(self, job_id: str) -> None:
        if self.reports_start:
            self._waiting[job_id] = None

    def started(self, job_id: str) -> bool:
        """The executor says the job started; True when it was waiting until now."""
        return self._waiting.pop(job_id, False) is None

    def is_waiting(self, job_id: str) -> bool:
        return job_id in self._waiting

    def waiting(self) -> list[str]:
        return list(self._waiting)

    def forget(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)
        self.notes.pop(job_id, None)

    def note(self, job_id: str) -> str | None:
        """What a status of this job should add now: the outage first, then the job's own note."""
        return OUTAGE_TEXT if self.outage else self.notes.get(job_id)

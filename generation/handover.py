"""Jobs the scheduler has handed to an executor that says when each one really starts (remote workers).

Until a worker takes it, a dispatched job waits in line in Redis: its status says "#2 in line", not "starting…",
and the jobs still at the bot count it ahead of them. Notes from faults (a takeover, an outage) live here too, so
the events that follow keep saying them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from generation.events import EventKind, JobEvent
from generation.jobs import Job
from generation.notices import OUTAGE_TEXT, TAKEN_OVER_NOTE, TAKEN_OVER_TEXT, ExecutorNotice, NoticeKind

if TYPE_CHECKING:
    from generation.scheduler import Scheduler, _Batch


class Handover:
    """Works through the scheduler it is given (its batches, its events), on the event loop."""

    def __init__(self, queue: "Scheduler", reports_start: bool) -> None:
        self.queue = queue
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

    def line(self) -> list[Job]:
        """Everyone waiting, in order: handed to the workers but not started, then the queue at the bot."""
        handed = {j.id: j for j in self.queue.running_jobs()}
        return [handed[i] for i in self._waiting if i in handed] + self.queue.queued_jobs()

    def relay(self, notice: ExecutorNotice) -> None:
        """A job started at a worker, was taken over, or the queue server went away or came back: say so."""
        if notice.kind is NoticeKind.STARTED:
            for job_id in notice.job_ids:
                if self.started(job_id):
                    batch = self._batch_of(job_id)
                    job = next(j for j in batch.jobs if j.id == job_id) if batch else None
                    if job is not None:
                        self.queue._emit(JobEvent(EventKind.STARTED, job.id, job.user_id, total=batch.total,
                                                  eta_s=self.queue.eta(job.id), message=self.note(job.id)))
            self.queue._emit_positions()
        elif notice.kind is NoticeKind.TAKEN_OVER:
            for job_id in notice.job_ids:
                batch = self._batch_of(job_id)
                if batch is None:
                    continue
                self.started(job_id)
                self.notes[job_id] = TAKEN_OVER_NOTE
                batch.step = 0
                job = next(j for j in batch.jobs if j.id == job_id)
                self.queue._emit(JobEvent(EventKind.NOTICE, job.id, job.user_id, step=0, total=batch.total,
                                          eta_s=self.queue.eta(job.id), message=TAKEN_OVER_TEXT))
        elif notice.kind in (NoticeKind.OUTAGE, NoticeKind.RECOVERED):
            self.outage = notice.kind is NoticeKind.OUTAGE
            for batch in self.queue._batches:
                for job in batch.jobs:
                    if self.is_waiting(job.id):
                        continue  # its line position follows, with the note
                    kind = EventKind.NOTICE if self.outage else EventKind.PROGRESS
                    self.queue._emit(JobEvent(kind, job.id, job.user_id, step=batch.step, total=batch.total,
                                              eta_s=self.queue.eta(job.id), message=self.note(job.id)))
            self.queue._emit_positions()

    def _batch_of(self, job_id: str) -> "_Batch | None":
        return next((b for b in self.queue._batches if any(j.id == job_id for j in b.jobs)), None)

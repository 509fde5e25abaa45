"""Who is admitted next into the decoder's free slots: fair round robin across users, and the queue's caps.

Pure bookkeeping (no torch, no I/O), so the rules are tested without a model. The queue is served in the fair
order of `generation/scheduler.py`: each user's oldest job, user by user, then each user's second, and so on; a
user whose job is admitted goes to the back of the rotation. Jobs are admitted one by one in that order while
they fit; the first that does not fit (too many variations for the free slots, or a different model from the one
running) stops admission, so no job is overtaken and none starves. The only compatibility rule is the model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Candidate:
    """A queued job as admission sees it."""

    job_id: str
    user_id: str
    model: str
    rows: int = 1  # slots it takes: its variations (guidance's twin rides in the same slot)


@dataclass(frozen=True)
class QueueLimits:
    max_rows: int = 4  # sequences running at once (BANDMATE_MAX_BATCH); the decoder's slots may cap it lower
    per_user_pending: int = 3  # one user's queued + running jobs
    max_depth: int = 100  # queued jobs in all


def submit_refusal(*, user_pending: int, depth: int, limits: QueueLimits) -> str | None:
    """Why a new job may not be queued (a message for the user), or None when it may."""
    if user_pending >= limits.per_user_pending:
        return (f"You already have {user_pending} pieces waiting (the limit is {limits.per_user_pending}). "
                "Wait for one to finish, or cancel one with /cancel.")
    if depth >= limits.max_depth:
        return f"The queue is full ({depth} pieces waiting). Please try again in a few minutes."
    return None


class FairQueue:
    """Queued candidates per user, and the rotation that decides whose turn it is."""

    def __init__(self, candidates: Iterable[Candidate] = ()) -> None:
        self._queued: dict[str, deque[Candidate]] = {}
        self._rotation: list[str] = []
        for candidate in candidates:
            self.add(candidate)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queued.values())

    def add(self, candidate: Candidate) -> None:
        if candidate.rows < 1:
            raise ValueError("a job takes at least one slot")
        self._queued.setdefault(candidate.user_id, deque()).append(candidate)
        if candidate.user_id not in self._rotation:
            self._rotation.append(candidate.user_id)

    def remove(self, job_id: str) -> Candidate | None:
        """Take a job out (cancelled while queued); None when it is not queued."""
        for user, queue in self._queued.items():
            for candidate in queue:
                if candidate.job_id == job_id:
                    queue.remove(candidate)
                    self._forget_empty()
                    return candidate
        return None

    def pending_for(self, user_id: str) -> int:
        return len(self._queued.get(user_id, ()))

    def order(self) -> list[Candidate]:
        """Round robin: each user's oldest job, user by user, then each user's second, and so on."""
        queues = [list(self._queued.get(u, ())) for u in self._rotation]
        out, depth = [], max((len(q) for q in queues), default=0)
        for i in range(depth):
            out.extend(q[i] for q in queues if i < len(q))
        return out

    def position(self, job_id: str) -> int | None:
        for i, candidate in enumerate(self.order(), start=1):
            if candidate.job_id == job_id:
                return i
        return None

    def admit(self, *, free_slots: int, running: Iterable[Candidate] = (), limits: QueueLimits = QueueLimits(),
              model: str | None = None) -> list[Candidate]:
        """Take, in fair order, the jobs to admit now, and update the rotation.

        free_slots: the decoder's free slots; running: the jobs in it (their model and rows); model: the model
        loaded, when the decoder has one and nothing runs (None: the first job in line picks it).
        """
        running = list(running)
        room = min(free_slots, limits.max_rows - sum(c.rows for c in running))
        active = running[0].model if running else model
        admitted: list[Candidate] = []
        while True:
            order = self.order()
            if not order:
                break
            head = order[0]
            if active is not None and head.model != active:
                break  # it waits for the running jobs to drain, and nobody overtakes it
            if head.rows > room:
                break
            active = head.model
            room -= head.rows
            self._queued[head.user_id].popleft()
            self._rotation.remove(head.user_id)
            self._rotation.append(head.user_id)
            admitted.append(head)
        self._forget_empty()
        return admitted

    def _forget_empty(self) -> None:
        for user in [u for u in self._rotation if not self._queued.get(u)]:
            self._rotation.remove(user)
            self._queued.pop(user, None)

"""Which jobs may share one model call, and how many steps a call takes: the queue's rules, shared by the scheduler
and the Redis workers (which batch what they read by the same rules). No torch here."""

from __future__ import annotations

from typing import Callable

from generation import chain
from generation.jobs import Job, JobKind
from generation.models import ModelInfo, model_info

ModelInfoFor = Callable[[str], ModelInfo]


def job_steps(job: Job, info_for: ModelInfoFor = model_info) -> int:
    """The model steps of this job's call (a chain's owner: its own last window)."""
    return info_for(job.model).steps_for(chain.window_add_s(job), job.spec)


def batch_compatible(head: Job, other: Job, durations: list[float], padding_waste: float = 0.25,
                     info_for: ModelInfoFor = model_info) -> bool:
    """May `other` join a batch led by `head` whose jobs have `durations`? Shared with the Redis workers."""
    if (other.model, other.kind, other.sampling) != (head.model, head.kind, head.sampling):
        return False
    if head.kind in (JobKind.CONTINUE, JobKind.SONG):  # windowed, one piece per model thread
        return False
    info = info_for(head.model)  # same model id, same family
    if info.batch_key(other.spec, other.input_audio is not None, other.duration_s) != info.batch_key(
            head.spec, head.input_audio is not None, head.duration_s):
        return False
    if info.any_duration_batches:
        return True
    longest, shortest = max(durations + [other.duration_s]), min(durations + [other.duration_s])
    return shortest >= (1.0 - padding_waste) * longest

"""Long continuations as chains of window jobs: each model window is a job of its own in the queue.

A continuation longer than one model window (an `/extend` to 5 minutes) would otherwise hold the model for minutes in
one call. As a chain, window k is a queued job that continues window k-1's audio: other people's jobs run between
windows, a window that fails is retried on its own, and a restart resumes at the window it stopped in.

The user's own job (the chain's *owner*) is held back while its helper windows run, then runs the last window
itself, from the audio they made, and is rendered and delivered like any continuation: one file, its own lineage.
Helper windows store their audio unprocessed (float WAV, no loudness or fades), so the joins stay sample-exact.
Their progress is reported as the owner's, across all windows.

The chain lives in the typed spec (generation/spec.py): the owner's `spec.chain` holds the windows and the audio
of each finished helper; a helper's `spec.window` names its owner, its index and (once done) its output.
"""

from __future__ import annotations

from generation.continuation import plan_windows
from generation.jobs import Job, JobKind
from generation.spec import ChainPlan, JobSpec, WindowRef
from generation.types import tokens_for


def plan_chain(job: Job, window_s: float) -> list[tuple[float, float]] | None:
    """The windows of a continuation that needs more than one, or None (one window, or not a continuation).

    Needs `spec.source_s`, the length of the audio being continued, which the conversation layer knows, and
    one variation (`/extend` makes one).
    """
    if job.kind is not JobKind.CONTINUE or job.spec.window is not None or job.spec.source_s is None:
        return None
    if job.variations != 1:  # several variations continue in one job, window by window inside it
        return None
    try:
        windows = plan_windows(job.spec.source_s, job.duration_s, max_call_s=window_s)
    except ValueError:
        return None  # the runner refuses it with the user's message
    return windows if len(windows) > 1 else None


def is_owner(job: Job) -> bool:
    return job.spec.chain is not None


def owner_of(job: Job) -> str | None:
    return job.spec.window.owner_id if job.spec.window is not None else None


def windows_of(owner: Job) -> list[tuple[float, float]]:
    return [tuple(w) for w in owner.spec.chain.windows]


def outputs_of(owner: Job) -> list[str]:
    return list(owner.spec.chain.outputs)


def helper_key(owner: Job, index: int) -> str:
    """Idempotency key of helper window `index`: resubmitting it after a restart finds the same row."""
    return f"{owner.id}/window{index}"


def start_chain(owner: Job, windows: list[tuple[float, float]]) -> None:
    """Record the chain in the owner's spec (before its row is written)."""
    owner.spec.chain = ChainPlan(windows=[tuple(w) for w in windows])


def next_window(owner: Job) -> int:
    """The window to make next: 1 .. n-1 are helpers, n is the owner's own."""
    return len(outputs_of(owner)) + 1


def helper_job(owner: Job, index: int) -> Job:
    """Helper window `index` (1-based) of the owner's chain, continuing the previous window's audio."""
    windows = windows_of(owner)
    outputs = outputs_of(owner)
    source = owner.input_audio if index == 1 else outputs[index - 2]
    return Job(
        user_id=owner.user_id, prompt=owner.prompt, duration_s=windows[index - 1][1], model=owner.model,
        kind=JobKind.CONTINUE, operation=owner.operation, variations=1, seed=owner.seed, sampling=owner.sampling,
        input_audio=source, parent_track_id=owner.parent_track_id, guild_id=owner.guild_id,
        channel_id=owner.channel_id, spec=JobSpec(window=WindowRef(owner.id, index)),
        idempotency_key=helper_key(owner, index),
    )


def window_index(job: Job) -> int:
    """Which window of its chain a job makes (1-based); 1 for a job that is not part of a chain."""
    if job.spec.window is not None:
        return job.spec.window.index
    if is_owner(job):
        return len(windows_of(job))
    return 1


def window_add_s(job: Job) -> float:
    """Seconds this job's model window adds (the owner adds only the last window)."""
    return windows_of(job)[-1][1] if is_owner(job) else job.duration_s


def chain_steps(owner: Job) -> tuple[list[int], int]:
    """Model steps of each window, and their sum: the progress bar spans the whole chain."""
    steps = [tokens_for(new) for _, new in windows_of(owner)]
    return steps, sum(steps)

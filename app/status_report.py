"""`python bot.py status`: the queue as the database holds it, for an operator without Prometheus. Safe while the
bot runs (SQLite readers do not block its writer)."""

from __future__ import annotations

import time
from collections import Counter

from bot.words import human_seconds
from generation.jobs import Job, JobState
from generation.metrics import model_label


def status_report(jobs: list[Job], now: float | None = None) -> str:
    """Queued and running jobs per user and model, and the oldest waiting job. `jobs`: the unfinished ones."""
    now = time.time() if now is None else now
    queued = [j for j in jobs if j.state is JobState.QUEUED]
    running = [j for j in jobs if j.state is JobState.RUNNING]
    lines = [f"{len(queued)} queued, {len(running)} running"]
    if not jobs:
        return lines[0] + ": the queue is empty."
    per = Counter((j.user_id, model_label(j.model), j.state) for j in jobs)
    rows = sorted({(user, model) for user, model, _ in per})
    width = max(len(user) for user, _ in rows)
    lines.append("")
    lines.append(f"{'user'.ljust(width)}  {'model'.ljust(24)}  queued  running")
    for user, model in rows:
        lines.append(f"{user.ljust(width)}  {model.ljust(24)}  {per[(user, model, JobState.QUEUED)]:>6}  "
                     f"{per[(user, model, JobState.RUNNING)]:>7}")
    if queued:
        oldest = min(queued, key=lambda j: j.created_at)
        lines.append("")
        lines.append(f"oldest waiting: job {oldest.id} of {oldest.user_id} ({model_label(oldest.model)}), queued "
                     f"{human_seconds(max(0.0, now - oldest.created_at))} ago: {oldest.prompt[:80]!r}")
    return "\n".join(lines)

"""A process holding the in-process queue, for the crash tests: python tests/queue_child.py DATA MODEL submit|resume N.

Prints one line per event to stdout (flushed), so the test can kill it at an exact moment, and appends each
delivery to DATA/deliveries.txt (fsynced) so the test can count them across processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation.jobs import DeliveryAddress  # noqa: E402
from generation.jobs import Job  # noqa: E402
from generation.models import ModelRegistry  # noqa: E402
from generation.runner import JobRunner  # noqa: E402
from generation.local_executor import LocalExecutor
from generation.scheduler import EventKind, Scheduler, SchedulerConfig  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.jobstore import SqliteJobStore  # noqa: E402


class FileSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, job, tracks) -> None:
        with open(self.path, "a") as f:
            f.write(f"{job.id} {job.state.value} {len(tracks)}\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"delivered {job.id}", flush=True)


async def main(data: Path, model: str, mode: str, n: int) -> None:
    db = Database(data / "bandmate.db")
    files = FileStore(data)
    registry = ModelRegistry(device="cpu", dtype="fp32", threads=1)
    scheduler = Scheduler(SqliteJobStore(db), LocalExecutor(JobRunner(registry, files)),
                          SchedulerConfig(max_batch=1, per_user_pending=100))
    scheduler.listen(lambda e: print(f"{e.kind.value} {e.job_id} {e.step}", flush=True)
                     if e.kind in (EventKind.STARTED, EventKind.PROGRESS) else None)
    await scheduler.add_sink("file", FileSink(data / "deliveries.txt"))
    await scheduler.start()
    if mode == "submit":
        for i in range(n):
            job = await scheduler.submit(Job(user_id=f"u{i}", prompt="jazz drums", duration_s=12.0, model=model,
                                             seed=i, delivery=DeliveryAddress("file")))
            print(f"submitted {job.id}", flush=True)
    while True:
        lines = (data / "deliveries.txt").read_text().splitlines() if (data / "deliveries.txt").exists() else []
        if len(lines) >= n and not scheduler._tasks:
            break
        await asyncio.sleep(0.05)
    print("all delivered", flush=True)
    await scheduler.stop()
    db.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))

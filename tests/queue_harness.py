"""The scheduler with the real SQLite store, the tiny model and a recording delivery sink (test_scheduler, test_chain)."""

from __future__ import annotations

import asyncio
import time

from generation.jobs import DeliveryAddress, Job
from generation.runner import JobRunner
from generation.local_executor import LocalExecutor
from generation.scheduler import EventKind, Scheduler, SchedulerConfig
from storage.database import Database
from storage.files import FileStore
from storage.jobstore import SqliteJobStore


class Delivered:
    """Delivery that lets a test await one job's delivery: `await sink.event(job.id).wait()`."""

    def __init__(self) -> None:
        self.jobs: dict[str, asyncio.Event] = {}

    def event(self, job_id: str) -> asyncio.Event:
        return self.jobs.setdefault(job_id, asyncio.Event())

    async def deliver(self, job, tracks) -> None:
        self.event(job.id).set()


class RecordingSink:
    """Delivery that remembers what it was handed; can fail its first attempts like a flaky network."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls: list[tuple[str, str, int]] = []

    async def deliver(self, job, tracks) -> None:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("network down")
        self.calls.append((job.id, job.state.value, len(tracks)))


class Harness:
    def __init__(self, tmp_path, models, config: SchedulerConfig, backend_for=None, *, model: str,
                 executor=None) -> None:
        """executor(runner): the scheduler's executor (default: LocalExecutor)."""
        self.model = model
        self.db = Database(tmp_path / "bandmate.db")
        self.files = FileStore(tmp_path)
        self.store = SqliteJobStore(self.db)
        self.runner = JobRunner(backend_for or models, self.files)
        self.removed: list[str] = []
        self.executor = (executor or LocalExecutor)(self.runner)
        self.scheduler = Scheduler(self.store, self.executor, config, remove_files=self._remove_files)
        self.events = []
        self.scheduler.listen(self.events.append)
        self.sink = RecordingSink()

    async def start(self) -> None:
        await self.scheduler.add_sink("test", self.sink)
        await self.scheduler.start()

    def job(self, user: str, prompt: str = "jazz drums", duration: float = 1.0, **kw) -> Job:
        return Job(user_id=user, prompt=prompt, duration_s=duration, model=self.model, delivery=DeliveryAddress("test"), **kw)

    async def _remove_files(self, rels: list[str]) -> None:
        self.removed.extend(rels)
        for rel in rels:
            self.files.remove(rel)

    def started_order(self) -> list[str]:
        return [e.job_id for e in self.events if e.kind is EventKind.STARTED]

    async def wait_for(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting")
            await asyncio.sleep(0.01)

    async def wait_delivered(self, n: int, timeout: float = 60.0) -> None:
        await self.wait_for(lambda: len(self.sink.calls) >= n, timeout)

    async def close(self) -> None:
        await self.scheduler.stop(grace_s=10)
        self.db.close()

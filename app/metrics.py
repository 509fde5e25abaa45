"""The operator's view of one process for Prometheus: the queue (depth per model, jobs by state), job latencies,
deliveries, Discord's 429s, plus the engine's figures (generation/metrics.py), and what makes the process ready.

The bot and each `python bot.py worker` serve them on BANDMATE_METRICS_ADDR (app/metrics_server.py). Metric names
are listed in METRIC_NAMES; the Grafana dashboard (ops/grafana/bandmate.json) is tested against them.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import deque
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.transport_signals import TransportSignals
from generation.events import EventKind, JobEvent
from generation.jobs import Job, JobState
from generation.metrics import EngineMetrics, model_label

QUEUED_TO_STARTED = "bandmate_job_queued_to_started_seconds"
STARTED_TO_DONE = "bandmate_job_started_to_done_seconds"
DONE_TO_DELIVERED = "bandmate_job_done_to_delivered_seconds"

# Every series name this module and generation/metrics.py export (counters get `_total` added, histograms
# `_bucket`, `_sum`, `_count`).
METRIC_NAMES = (
    "bandmate_queue_depth", "bandmate_jobs", "bandmate_jobs_finished_total", QUEUED_TO_STARTED, STARTED_TO_DONE,
    DONE_TO_DELIVERED, "bandmate_deliveries_total", "bandmate_discord_rate_limited_total", "bandmate_ready",
    "bandmate_decode_steps_total", "bandmate_decode_steps_per_second", "bandmate_model_memory_bytes",
    "bandmate_cuda_memory_allocated_bytes", "bandmate_worker_jobs_held", "bandmate_worker_batches_total",
)


class Readiness:
    """Named checks; the process is ready when every one holds (model loaded, Discord connected...)."""

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], bool]] = {}

    def require(self, name: str, check: Callable[[], bool]) -> None:
        self.checks[name] = check

    def state(self) -> dict[str, bool]:
        out = {}
        for name, check in self.checks.items():
            try:
                out[name] = bool(check())
            except Exception:  # noqa: BLE001 - a failing check means not ready
                out[name] = False
        return out

    @property
    def ready(self) -> bool:
        return all(self.state().values())


class _Latencies:
    """The latest samples of each latency, for percentiles without Prometheus (a run's closing figures)."""

    def __init__(self, keep: int = 2000) -> None:
        self.samples: dict[str, deque[float]] = {}
        self.keep = keep

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, deque(maxlen=self.keep)).append(seconds)

    def percentile(self, name: str, q: float) -> float | None:
        values = sorted(self.samples.get(name, ()))
        if not values:
            return None
        return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


class _QueueCollector(Collector):
    """Queue depth per model and jobs by state, read from the scheduler at each scrape."""

    def __init__(self, scheduler, readiness: Readiness) -> None:
        self.scheduler = scheduler
        self.readiness = readiness

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queued = self.scheduler.queued_jobs()
        running = self.scheduler.running_jobs()
        handover = getattr(self.scheduler, "handover", None)
        waiting = {i for i in (handover.waiting() if handover else [])}
        depth = GaugeMetricFamily("bandmate_queue_depth", "Jobs waiting for the model, per model (at the bot and "
                                  "dispatched to workers but not started)", labels=["model"])
        per_model = Tally(model_label(j.model) for j in queued)
        per_model.update(model_label(j.model) for j in running if j.id in waiting)
        for model, count in sorted(per_model.items()):
            depth.add_metric([model], count)
        yield depth
        states = GaugeMetricFamily("bandmate_jobs", "Unfinished jobs by state", labels=["state"])
        states.add_metric(["queued"], len(queued))
        states.add_metric(["dispatched"], sum(1 for j in running if j.id in waiting))
        states.add_metric(["running"], sum(1 for j in running if j.id not in waiting))
        yield states
        ready = GaugeMetricFamily("bandmate_ready", "1 when the process is ready (see /readyz)")
        ready.add_metric([], 1.0 if self.readiness.ready else 0.0)
        yield ready


class BotMetrics:
    """The bot's figures, fed by the scheduler's events and hooks and by the transports' signals."""

    def __init__(self, registry: CollectorRegistry, scheduler, *, loaded_models: Callable[[], dict] | None = None,
                 signals: TransportSignals | None = None, count_steps: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        """count_steps: the model runs in this process (with Redis workers, each worker counts its own steps)."""
        self.registry = registry
        self.clock = clock
        self.readiness = Readiness()
        self.engine = EngineMetrics(registry, loaded_models)
        registry.register(_QueueCollector(scheduler, self.readiness))
        self.finished = Counter("bandmate_jobs_finished", "Jobs that ended, by how", ["state"], registry=registry)
        buckets = {
            QUEUED_TO_STARTED: (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            STARTED_TO_DONE: (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800),
            DONE_TO_DELIVERED: (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
        }
        helps = {QUEUED_TO_STARTED: "Seconds from a job's submission until a model starts it",
                 STARTED_TO_DONE: "Seconds from a job's start until its audio is made",
                 DONE_TO_DELIVERED: "Seconds from a job's audio being made until its user has it"}
        self.histograms = {name: Histogram(name, helps[name], ["model"], buckets=b, registry=registry)
                           for name, b in buckets.items()}
        self.deliveries = Counter("bandmate_deliveries", "Delivery attempts by outcome (delivered, retried, "
                                  "failed: every attempt failed)", ["outcome"], registry=registry)
        self.rate_limited = Counter("bandmate_discord_rate_limited", "HTTP 429 answers from Discord, by scope",
                                    ["scope"], registry=registry)
        self.latencies = _Latencies()
        self.scheduler = scheduler
        self._queued_at: dict[str, tuple[float, str]] = {}
        self._started_at: dict[str, tuple[float, str]] = {}
        self._models: dict[str, str] = {}
        scheduler.listen(self.on_event)
        scheduler.on_delivery = self.on_delivery
        if count_steps:
            scheduler.on_batch_progress = lambda jobs, p: self.engine.observe_progress(jobs[0].model, p, jobs[0].id)
        if signals is not None:
            signals.on_rate_limited = lambda transport, scope: self.rate_limited.labels(scope).inc()

    def _observe(self, name: str, model: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.histograms[name].labels(model).observe(seconds)
        self.latencies.add(name, seconds)

    def on_event(self, event: JobEvent) -> None:
        now = self.clock()
        job_id = event.job_id
        if event.kind is EventKind.QUEUED:
            self._queued_at[job_id] = (now, self._model_of(job_id))
        elif event.kind in (EventKind.STARTED, EventKind.PROGRESS) and job_id not in self._started_at:
            queued = self._queued_at.pop(job_id, None)
            model = queued[1] if queued else self._model_of(job_id)
            if queued is not None:
                self._observe(QUEUED_TO_STARTED, model, now - queued[0])
            self._started_at[job_id] = (now, model)
        elif event.kind is EventKind.DONE:
            started = self._started_at.pop(job_id, None)
            if started is not None:
                self._observe(STARTED_TO_DONE, started[1], now - started[0])
            self.finished.labels("done").inc()
        elif event.kind in (EventKind.FAILED, EventKind.CANCELLED):
            self._queued_at.pop(job_id, None)
            self._started_at.pop(job_id, None)
            self.finished.labels(event.kind.value).inc()
        if event.kind.final:
            self._models.pop(job_id, None)

    def _model_of(self, job_id: str) -> str:
        """Events carry no model: look the job up in the queue once, as it is queued (a chain: its first window)."""
        if job_id not in self._models:
            for job in self.scheduler.queued_jobs() + self.scheduler.running_jobs():
                if job.id == job_id or self.scheduler.request_id(job.id) == job_id:
                    self._models[job_id] = model_label(job.model)
                    break
        return self._models.get(job_id, "unknown")

    def on_delivery(self, job: Job, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()
        if outcome == "delivered" and job.state is JobState.DONE and job.finished_at:
            self._observe(DONE_TO_DELIVERED, model_label(job.model), self.clock() - job.finished_at)

    def percentiles(self) -> dict[str, tuple[float | None, float | None]]:
        """(p50, p95) of each latency over the latest samples."""
        return {name: (self.latencies.percentile(name, 50), self.latencies.percentile(name, 95))
                for name in self.histograms}


    def summary(self) -> str:
        """p50/p95 of each latency this run, for the log at shutdown."""
        parts = []
        for name, (p50, p95) in self.percentiles().items():
            label = name.removeprefix("bandmate_job_").removesuffix("_seconds").replace("_to_", "→")
            count = len(self.latencies.samples.get(name, ()))
            parts.append(f"{label} p50 {p50:.2f} s p95 {p95:.2f} s (n={count})" if p50 is not None
                         else f"{label} (none)")
        return "; ".join(parts)


class _WorkerCollector(Collector):
    def __init__(self, worker) -> None:
        self.worker = worker

    def collect(self) -> Iterable[GaugeMetricFamily]:
        held = GaugeMetricFamily("bandmate_worker_jobs_held", "Job entries this worker holds (running or next)")
        held.add_metric([], len(self.worker._held))
        yield held
        from prometheus_client.core import CounterMetricFamily

        batches = CounterMetricFamily("bandmate_worker_batches", "Model calls this worker finished")
        batches.add_metric([], self.worker.batches_run)
        yield batches


def observe_worker(registry: CollectorRegistry, worker) -> Readiness:
    """A Redis worker's figures: its model steps and memory, what it holds; ready once its model is loaded."""
    engine = EngineMetrics(registry, worker.models.loaded)
    worker.on_progress = lambda model, batch, progress: engine.observe_progress(model, progress, batch)
    registry.register(_WorkerCollector(worker))
    readiness = Readiness()
    readiness.require("model", lambda: worker.ready)
    return readiness

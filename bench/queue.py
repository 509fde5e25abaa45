"""The queue against the serial baseline that existing bots use (one `generate` per request, in arrival order).

    python bench/queue.py            musicgen-small's shape, random weights (no download)
    python bench/queue.py --quick    a smaller shape

Simulated users (1, 4, 8) each submit one clip at the same moment; then a staggered case where users arrive one
every few seconds. Both paths post-process (loudness, MP3, FLAC, waveform) and use the same dtype. Prints throughput
(audio seconds per wall second), p50/p95 latency, and the ratio lines:

    raw_batch4_vs_batch1      speed-up of plain generate on a batch of 4 over one request (what batching can give)
    raw_batch8_vs_batch1      the same for 8
    batched_vs_serial_4users  throughput of the queue over the serial baseline, 4 users (goal >= 0.9 x raw_batch4)
    batched_vs_serial_8users  the same, 8 users (goal >= 0.9 x raw_batch8)
    overhead_vs_raw_generate  the queue's wall time over generate + post-processing called directly on the same
                              batch (goal <= 1.10)

With --decoder the queue runs the engine's own decoder (generation/decoder_executor.py, the bot's default): jobs
join free slots at the next step. It also prints

    queue_vs_serial_1user        one job through the queue over the same job called directly (goal <= 1.05)
    staggered_vs_serial_4users   throughput with users arriving one every --stagger s, over serial (and 8 users)

With --mixed only a continuation arriving a third of a clip's time after a clip, through the slots and through
fixed batches (`mixed_{slots,fixed}_{wall_s,clip_latency_s,continuation_latency_s}` and their ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file's name would shadow the standard library's queue module (torch imports it): keep bench/ off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402 - after the path fix (it imports queue)

import numpy as np  # noqa: E402


def _load_generate_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


random_backend = _load_generate_bench().random_backend
from generation.jobs import DeliveryAddress, Job  # noqa: E402
from generation.runner import JobRunner  # noqa: E402
from generation.decoder_executor import DecoderExecutor, DecoderOptions  # noqa: E402
from generation.local_executor import LocalExecutor  # noqa: E402
from generation.models import Family, ModelInfo  # noqa: E402
from generation.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from generation.types import GenerationRequest  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.jobstore import SqliteJobStore  # noqa: E402

PROMPTS = ["lo-fi piano, rainy night", "upbeat techno", "calm ambient pads", "jazz trio", "epic orchestral",
           "funky bass groove", "sad violin", "synthwave drive"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Timings:
    def __init__(self) -> None:
        self.submitted: dict[str, float] = {}
        self.delivered: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    async def deliver(self, job, tracks) -> None:
        self.delivered[job.id] = time.perf_counter()
        if len(self.delivered) >= self.expected:
            self.done.set()


def musicgen_info(model_id: str) -> ModelInfo:
    return ModelInfo(model_id, Family.MUSICGEN, "random weights", supports_continuation=True, default_guidance=3.0)


def text_jobs(backend, seconds: float, users: int):
    """One clip per user, each its own prompt and seed."""
    def make(files: FileStore) -> list[Job]:
        return [Job(user_id=f"user{i}", prompt=PROMPTS[i % len(PROMPTS)], duration_s=seconds, model=backend.model_id,
                    seed=i, delivery=DeliveryAddress("bench")) for i in range(users)]
    return make


def text_then_continuation(backend, seconds: float):
    """A clip, then (one gap later) another user's continuation of a 2 s piece by half a clip's length."""
    def make(files: FileStore) -> list[Job]:
        from generation.jobs import JobKind, Operation
        from generation.postprocess import write_flac
        from generation.spec import JobSpec

        rate = backend.sample_rate
        t = np.arange(2 * rate) / rate
        rel = files.path_for("bench-source", "flac")
        files.absolute(rel).parent.mkdir(parents=True, exist_ok=True)
        write_flac((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None], rate, files.absolute(rel))
        return [Job(user_id="user0", prompt=PROMPTS[0], duration_s=seconds, model=backend.model_id, seed=0,
                    delivery=DeliveryAddress("bench")),
                Job(user_id="user1", prompt=PROMPTS[1], duration_s=seconds / 2, model=backend.model_id, seed=1,
                    kind=JobKind.CONTINUE, operation=Operation.EXTEND, input_audio=rel, spec=JobSpec(source_s=2.0),
                    delivery=DeliveryAddress("bench"))]
    return make


async def run_queue(backend, seconds: float, users: int, max_batch: int, gap_s: float = 0.0, *,
                    model_thread: ThreadPoolExecutor, decoder: bool = False,
                    jobs=None) -> tuple[float, list[float]]:
    """The queue's wall time and each job's latency (submit to delivered, in submission order). `jobs`: a
    function of the file store giving the jobs to submit (default: `users` text clips)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "bench.db")
        files = FileStore(tmp)
        runner = JobRunner(lambda _id: backend, files)
        if decoder:  # as the bot builds it: slots from max_batch, the decoder ready before the first job
            executor = DecoderExecutor(runner, DecoderOptions(slots=max_batch), model_thread=model_thread,
                                       info_for=musicgen_info)
            await executor.in_model_thread(executor.prepare, backend.model_id)
        else:
            executor = LocalExecutor(runner, model_thread=model_thread)
        scheduler = Scheduler(SqliteJobStore(db), executor,
                              SchedulerConfig(max_batch=max_batch, per_user_pending=10, max_depth=1000,
                                              gather_s=0.0 if decoder else SchedulerConfig.gather_s),
                              model_info=musicgen_info)
        submitted = (jobs or text_jobs(backend, seconds, users))(files)
        timings = Timings()
        timings.expected = len(submitted)
        await scheduler.add_sink("bench", timings)
        await scheduler.start()
        start = time.perf_counter()
        for i, job in enumerate(submitted):
            if gap_s and i:
                await asyncio.sleep(gap_s)
            timings.submitted[job.id] = time.perf_counter()
            await scheduler.submit(job)
        await timings.done.wait()
        wall = time.perf_counter() - start
        await scheduler.stop()
        db.close()
    return wall, [timings.delivered[j] - timings.submitted[j] for j in timings.submitted]


def run_serial(backend, seconds: float, users: int, gap_s: float = 0.0) -> tuple[float, list[float]]:
    """What hobby bots do: one generate per request, in arrival order, then post-processing."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = JobRunner(lambda _id: backend, FileStore(tmp))
        start = time.perf_counter()
        arrivals = [start + i * gap_s for i in range(users)]
        latencies = []
        for i in range(users):
            wait = arrivals[i] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            job = Job(user_id=f"user{i}", prompt=PROMPTS[i % len(PROMPTS)], duration_s=seconds, model=backend.model_id,
                      seed=i)
            audio = runner.generate([job])
            runner.render(job, audio[job.id])
            latencies.append(time.perf_counter() - arrivals[i])
        return time.perf_counter() - start, latencies


def raw(backend, seconds: float, rows: int) -> float:
    start = time.perf_counter()
    backend.generate([GenerationRequest(PROMPTS[i % len(PROMPTS)], seconds, seed=i) for i in range(rows)])
    return time.perf_counter() - start


def direct(backend, seconds: float, users: int) -> float:
    """generate + post-processing called directly on the same batch the queue makes."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = JobRunner(lambda _id: backend, FileStore(tmp))
        jobs = [Job(user_id=f"user{i}", prompt=PROMPTS[i % len(PROMPTS)], duration_s=seconds, model=backend.model_id,
                    seed=i) for i in range(users)]
        start = time.perf_counter()
        audios = runner.generate(jobs)
        for job in jobs:
            runner.render(job, audios[job.id])
        return time.perf_counter() - start


def report(name: str, seconds: float, users: int, wall: float, latencies: list[float]) -> float:
    throughput = users * seconds / wall
    print(f"{name:<28} {users} users: {wall:7.2f} s wall, {throughput:5.2f} audio s/s, "
          f"p50 {statistics.median(latencies):6.2f} s, p95 {percentile(latencies, 0.95):6.2f} s")
    return throughput


def mixed(args, backend, model_thread, on_model, best) -> int:
    """A continuation that arrives while a clip is being made: with slots it joins at the next step (its prompt
    prefilled beside the running clip); with fixed batches (BANDMATE_DECODER=generate) it waits for that batch."""
    on_model(raw, backend, args.seconds, 2)  # warm up
    gap = args.seconds / 3
    runs = {}
    for decoder in (True, False):
        runs[decoder] = best(lambda decoder=decoder: asyncio.run(run_queue(
            backend, args.seconds, 2, max_batch=8, gap_s=gap, model_thread=model_thread, decoder=decoder,
            jobs=text_then_continuation(backend, args.seconds))))
    for decoder, name in ((True, "slots"), (False, "fixed")):
        wall, (clip, continuation) = runs[decoder]
        print(f"mixed_{name}_wall_s: {wall:.2f}")
        print(f"mixed_{name}_clip_latency_s: {clip:.2f}")
        print(f"mixed_{name}_continuation_latency_s: {continuation:.2f}")
    print(f"mixed_continuation_latency_slots_vs_fixed: {runs[True][1][1] / runs[False][1][1]:.2f}")
    print(f"mixed_wall_slots_vs_fixed: {runs[True][0] / runs[False][0]:.2f}")
    model_thread.shutdown()
    return 0


def staggered_only(args, backend, model_thread, on_model, best) -> int:
    """The decoder's figures for arrivals one by one: a single job, then 4 users one every --stagger s."""
    on_model(raw, backend, args.seconds, 4)  # warm up
    serial_wall, serial_lat = best(lambda: on_model(run_serial, backend, args.seconds, 1))
    queue_wall, queue_lat = best(lambda: asyncio.run(run_queue(backend, args.seconds, 1, max_batch=8,
                                                               model_thread=model_thread, decoder=True)))
    report("serial baseline", args.seconds, 1, serial_wall, serial_lat)
    report("queue (decoder slots)", args.seconds, 1, queue_wall, queue_lat)
    serial4 = best(lambda: on_model(run_serial, backend, args.seconds, 4, args.stagger))
    queue4 = best(lambda: asyncio.run(run_queue(backend, args.seconds, 4, max_batch=8, gap_s=args.stagger,
                                                model_thread=model_thread, decoder=True)))
    s = report(f"serial, one every {args.stagger:g} s", args.seconds, 4, *serial4)
    q = report(f"queue, one every {args.stagger:g} s", args.seconds, 4, *queue4)
    print(f"queue_vs_serial_1user: {queue_wall / serial_wall:.2f}  (goal <= 1.05)")
    print(f"staggered_vs_serial_4users: {q / s:.2f}")
    print(f"staggered_p50_s: {statistics.median(queue4[1]):.2f} (serial {statistics.median(serial4[1]):.2f})")
    print(f"staggered_p95_s: {percentile(queue4[1], 0.95):.2f} (serial {percentile(serial4[1], 0.95):.2f})")
    model_thread.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stagger", type=float, default=3.0, help="seconds between arrivals in the staggered case")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each configuration, interleaved; the fastest counts (first runs after a warm-up "
                             "are measurably faster on these CPUs, so one run each would favour whichever goes first)")
    parser.add_argument("--decoder", action="store_true",
                        help="run the queue with the engine's own decoder (slots; the bot's default)")
    parser.add_argument("--staggered-only", action="store_true",
                        help="with --decoder: only queue_vs_serial_1user and the staggered 4-user figures (a short run)")
    parser.add_argument("--mixed", action="store_true",
                        help="only the mixed case: a continuation arriving while a clip runs, slots against fixed "
                             "batches")
    args = parser.parse_args(argv)
    decoder = args.decoder
    # Every torch call of this process runs on this one thread, as in the bot (see LocalExecutor): a baseline on the
    # main thread beside a queue on another would give the process two OpenMP teams and slow the second one down.
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-model")

    def on_model(fn, *fn_args):
        return model_thread.submit(fn, *fn_args).result()

    backend = on_model(random_backend, args.quick, args.device, args.dtype)
    print(f"model: {'quick' if args.quick else 'musicgen-small'} shape on {backend.device} {backend.dtype}; "
          f"{args.seconds:g} s clips, guidance 3; all torch work on one thread")
    def best(fn):
        """The fastest of --repeats runs of fn() -> (wall, latencies) or wall."""
        runs = [fn() for _ in range(args.repeats)]
        return min(runs, key=lambda r: r[0] if isinstance(r, tuple) else r)

    if args.mixed:
        return mixed(args, backend, model_thread, on_model, best)
    if decoder and args.staggered_only:
        return staggered_only(args, backend, model_thread, on_model, best)
    on_model(raw, backend, args.seconds, 8)  # warm up at the largest shape the runs will use

    t1, t4, t8 = (best(lambda n=n: on_model(raw, backend, args.seconds, n)) for n in (1, 4, 8))
    r4, r8 = 4 * t1 / t4, 8 * t1 / t8
    print(f"raw generate: batch 1 {t1:.2f} s, batch 4 {t4:.2f} s, batch 8 {t8:.2f} s")

    ratios = {}
    for users in (1, 4, 8):
        serial_wall, serial_lat = best(lambda: on_model(run_serial, backend, args.seconds, users))
        queue_wall, queue_lat = best(lambda: asyncio.run(run_queue(backend, args.seconds, users, max_batch=8,
                                                                   model_thread=model_thread, decoder=decoder)))
        s = report("serial baseline", args.seconds, users, serial_wall, serial_lat)
        q = report("queue (decoder slots)" if decoder else "queue (batched)", args.seconds, users, queue_wall,
                   queue_lat)
        ratios[users] = q / s
        if users == 1:
            one_user = queue_wall / serial_wall
        if users == 8:
            direct_wall = best(lambda: on_model(direct, backend, args.seconds, users))
            print(f"{'direct generate + render':<28} {users} users: {direct_wall:7.2f} s wall")
            overhead = queue_wall / direct_wall
    stagger_serial = best(lambda: on_model(run_serial, backend, args.seconds, 4, args.stagger))
    stagger_queue = best(lambda: asyncio.run(run_queue(backend, args.seconds, 4, max_batch=8, gap_s=args.stagger,
                                                       model_thread=model_thread, decoder=decoder)))
    s = report(f"serial, one every {args.stagger:g} s", args.seconds, 4, *stagger_serial)
    q = report(f"queue, one every {args.stagger:g} s", args.seconds, 4, *stagger_queue)
    print(f"staggered_batched_vs_serial_4users: {q / s:.2f}")
    if decoder:
        serial8 = best(lambda: on_model(run_serial, backend, args.seconds, 8, args.stagger))
        queue8 = best(lambda: asyncio.run(run_queue(backend, args.seconds, 8, max_batch=8, gap_s=args.stagger,
                                                    model_thread=model_thread, decoder=True)))
        s8 = report(f"serial, one every {args.stagger:g} s", args.seconds, 8, *serial8)
        q8 = report(f"queue, one every {args.stagger:g} s", args.seconds, 8, *queue8)
        print(f"staggered_vs_serial_4users: {q / s:.2f}")
        print(f"staggered_vs_serial_8users: {q8 / s8:.2f}")
        print(f"queue_vs_serial_1user: {one_user:.2f}  (goal <= 1.05)")
    print(f"raw_batch4_vs_batch1: {r4:.2f}")
    print(f"raw_batch8_vs_batch1: {r8:.2f}")
    print(f"batched_vs_serial_4users: {ratios[4]:.2f}  (goal >= {0.9 * r4:.2f})")
    print(f"batched_vs_serial_8users: {ratios[8]:.2f}  (goal >= {0.9 * r8:.2f})")
    print(f"overhead_vs_raw_generate: {overhead:.2f}  (goal <= 1.10)")
    model_thread.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

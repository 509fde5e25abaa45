"""The engine's own decoder against today's `generate` path, and continuous batching under staggered arrivals.

    python bench/decoder.py            musicgen-small's shape, random weights (no download)
    python bench/decoder.py --quick    a smaller shape (bench/generate.py's quick shape)
    python bench/decoder.py --profile  also print a profile of decoder steps at 1 and 4 rows

Every figure comes from this one run (bf16 by default on the CPU; 5 s clips, guidance 3); the two paths' walls are
interleaved and repeated (`--repeats`, median). Printed as `name: value`:

    generate_steps_per_s_rows{1,4,8}   today's path: MusicGenBackend.generate on N requests, steps / wall
    decoder_steps_per_s_rows{1,4,8}    the decoder on the same N requests, submit to delivered, steps / wall
    decoder_step_s_rows{1..8}          the decoder's median steady-state step time at N rows (with guidance)
    decoder_batch{4,8}_vs_batch1       the decoder's own batching gain, per sequence
    raw_batch{4,8}_vs_batch1           today's path's batching gain (N x time of 1 / time of N)
    encodec_decode_s_rows{1,4,8}       EnCodec decoding N clips' codes at the end: batched as `generate` does, and
                                       one job at a time as the decoder does
    decoder_vs_generate_rows1          (goal >= 1.5)
    decoder_vs_generate_tokens_only_rows{1,4,8}  the same walls less that decoding: the token loops compared
    bandwidth_floor_steps_per_s        4 rows: bytes a step reads (decoder weights + KV cache at the mean position)
                                       over the bandwidth of a large tensor copy measured here
    decoder_vs_floor_rows4             steady-state steps/s at 4 rows over that floor (goal >= 0.6)
    product_gmac_per_s                 the matrix product's best rate here (feed-forward shape, 8 or 64 rows)
    decoder_vs_compute_floor_rows4     steady-state steps/s at 4 rows over the step's multiply-adds at that rate:
                                       the floor that binds where products are compute-bound (bf16 on an AVX2 CPU)
    staggered_vs_serial_{4,8}users     users arriving one every third of a solo clip's time: the decoder's
                                       throughput over one job after another (serial = the solo time measured
                                       here, jobs started at max(arrival, previous finish))
    staggered_ideal_{4,8}users         the same ratio for perfect continuous batching, simulated from
                                       decoder_step_s_rows{1..8} (goal: staggered_vs_serial >= 0.9 x this)
    staggered_p50_s/p95_s_{4,8}users   latency, arrival to delivered
    admit_steps_p95                    steps from submit to a job's first token while others run (goal <= 2)
    joined_beside_{S-1}_matches_alone  a 1 s job's codes alone and joining S-1 running jobs, at the real widths
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/queue.py shadows queue
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from generation.decoder import MusicGenDecoder, native_bf16, positions_for  # noqa: E402
from generation.types import GenerationRequest, SamplingParams, tokens_for  # noqa: E402

PROMPTS = ["lo-fi piano, rainy night", "upbeat techno", "calm ambient pads", "jazz trio", "epic orchestral",
           "funky bass groove", "sad violin", "synthwave drive"]


def _generate_bench():
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def requests(n: int, seconds: float, offset: int = 0) -> list[GenerationRequest]:
    return [GenerationRequest(PROMPTS[(i + offset) % len(PROMPTS)], seconds, seed=i + offset,
                              sampling=SamplingParams(guidance=3.0)) for i in range(n)]


def sync(device) -> None:
    """On CUDA, wait for the queued kernels: a step's time is its kernels' time, not its launches'."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def generate_wall(backend, n: int, seconds: float) -> float:
    start = time.perf_counter()
    backend.generate(requests(n, seconds))
    return time.perf_counter() - start


def decoder_wall(decoder: MusicGenDecoder, n: int, seconds: float) -> tuple[float, list[float]]:
    """Submit n jobs together, run to the end: (wall, the steady-state step times)."""
    start = time.perf_counter()
    handles = [decoder.submit(r) for r in requests(n, seconds)]
    times = []
    while not decoder.idle:
        t = time.perf_counter()
        decoder.step()
        sync(decoder.device)
        times.append(time.perf_counter() - t)
    assert all(h.audio is not None for h in handles)
    return time.perf_counter() - start, times[1:-1]  # not the admitting step, not the decoding one


@torch.inference_mode()
def encodec_seconds(decoder: MusicGenDecoder, rows: int, seconds: float, batched: bool) -> float:
    """EnCodec decoding `rows` clips' codes into audio at the end of a run: `generate` decodes its batch in one
    call (batched), the decoder each job on its own as it leaves. Fastest of 2."""
    model = decoder.model
    codes = torch.randint(0, model.config.audio_encoder.codebook_size, (1, rows, decoder.k, tokens_for(seconds) - 3),
                          device=decoder.device)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for part in ([codes] if batched else codes.split(1, dim=1)):
            model.audio_encoder.decode(part, [None] * part.shape[1])
        sync(decoder.device)
        best = min(best, time.perf_counter() - t)
    return best


def step_time(decoder: MusicGenDecoder, rows: int, seconds: float, steps: int) -> float:
    """Median step time with `rows` jobs running, measured over `steps` steps in the middle of a clip."""
    handles = [decoder.submit(r) for r in requests(rows, seconds)]
    decoder.step()  # admission
    sync(decoder.device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        decoder.step()
        sync(decoder.device)
        times.append(time.perf_counter() - t)
    for h in handles:
        h.cancel()
    decoder.step()
    return statistics.median(times)


def copy_bandwidth(device="cpu", mib: int = 512) -> float:
    """Bytes per second of a large tensor copy (read + write) in the device's own memory."""
    src = torch.ones(mib * 2 ** 20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


def product_rate(device, dtype, out_features: int, in_features: int) -> float:
    """Multiply-adds per second of the device's matrix product at the decoder's feed-forward shape, its weight
    cache-resident, at 8 and 64 rows (the better of the two): the compute a step cannot beat."""
    weight = torch.randn(out_features, in_features, device=device).to(dtype)
    best = 0.0
    for rows in (8, 64):
        x = torch.randn(rows, in_features, device=device).to(dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, weight)
        sync(device)
        repeats = 20
        t = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(x, weight)
        sync(device)
        best = max(best, repeats * rows * weight.numel() / (time.perf_counter() - t))
    return best


def step_macs(model, rows: int, mean_position: float) -> float:
    """Multiply-adds of one step: every decoder weight once per sequence (x2 guidance), but the embeddings and the
    text's cross-attention keys and values (computed once at admission), plus self-attention at the mean position."""
    skip = ("embed_tokens", "encoder_attn.k_proj", "encoder_attn.v_proj")
    weights = sum(p.numel() for n, p in model.decoder.named_parameters()
                  if p.dim() == 2 and not any(s in n for s in skip))
    cfg = model.config.decoder
    attention = cfg.num_hidden_layers * 2 * cfg.hidden_size * mean_position
    return 2 * rows * (weights + attention)


def step_bytes(model, rows: int, mean_position: float, element: int) -> float:
    """What one step must read: the decoder's layers and heads, and the K/V of `rows` sequences (x2 guidance)."""
    decoder = model.decoder
    weights = sum(p.numel() * p.element_size() for n, p in decoder.named_parameters() if "embed_tokens" not in n)
    cfg = model.config.decoder
    cache = 2 * rows * cfg.num_hidden_layers * 2 * cfg.hidden_size * mean_position * element
    return weights + cache


def run_staggered(decoder: MusicGenDecoder, users: int, seconds: float, gap_s: float):
    """Users arriving every gap_s; the decoder stepping whenever anything runs. (wall, latencies, admit steps)."""
    pending = requests(users, seconds, offset=100)
    start = time.monotonic()  # the clock of DecodeHandle.finished_at
    arrivals = [start + i * gap_s for i in range(users)]
    handles, submitted_at = [], []
    while len(handles) < users or not decoder.idle:
        now = time.monotonic()
        while len(handles) < users and arrivals[len(handles)] <= now:
            handles.append(decoder.submit(pending[len(handles)]))
            submitted_at.append(arrivals[len(handles) - 1])
        if decoder.idle:
            time.sleep(max(0.0, arrivals[len(handles)] - time.monotonic()))
            continue
        decoder.step()
    wall = max(h.finished_at for h in handles) - start
    latencies = [h.finished_at - a for h, a in zip(handles, submitted_at)]
    admit = [h.first_step - h.submitted_step for h in handles[1:]]
    return wall, latencies, admit


def joined_matches_alone(decoder: MusicGenDecoder, others: int, join_at: int = 5) -> bool:
    """At this model's real widths, a 1 s job's codes alone and joining `others` running jobs at step `join_at`:
    whether the seed rule (the same audio alone or beside others) holds with this device's kernels."""
    target = GenerationRequest(PROMPTS[0], 1.0, seed=1234, sampling=SamplingParams(guidance=3.0, top_k=50))
    alone = decoder.submit(target)
    decoder.run_until_idle()
    running = [decoder.submit(r) for r in requests(others, 1.5, offset=200)]
    for _ in range(join_at):
        decoder.step()
    joined = decoder.submit(target)
    decoder.run_until_idle()
    assert all(h.audio is not None for h in running)
    return torch.equal(joined.codes, alone.codes)


def serial_wall(users: int, solo_s: float, gap_s: float) -> float:
    finish = 0.0
    for i in range(users):
        finish = max(i * gap_s, finish) + solo_s
    return finish


def ideal_wall(users: int, steps: int, gap_s: float, step_s: dict[int, float], fixed_s: float) -> float:
    """Perfect continuous batching: a job joins the step after it arrives and each step costs step_s[rows
    running]; a job's fixed cost (text encoding, EnCodec decoding: `fixed_s`) is paid half on arrival, half on
    leaving, while the others wait, as in the decoder."""
    t, arrived, left = 0.0, 0, []
    while arrived < users or left:
        while arrived < users and arrived * gap_s <= t:
            left.append(steps)
            arrived += 1
            t += fixed_s / 2
        if not left:
            t = arrived * gap_s
            continue
        t += step_s[min(len(left), max(step_s))]
        done = sum(1 for n in left if n == 1)
        left = [n - 1 for n in left if n > 1]
        t += done * fixed_s / 2
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--mode", default=None, help="exact, batched or static (default: the device's)")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path per row count, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--max-positions", type=int, default=None,
                        help="cache positions per slot (default: the bot's, for its longest call)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    built = time.perf_counter()
    backend = _generate_bench().random_backend(args.quick, args.device, args.dtype)
    steps = tokens_for(args.seconds)
    # the bot's cache width (its longest call, 30 s) by default: the static step attends over all of it
    positions = args.max_positions or positions_for(backend)
    decoder = MusicGenDecoder(backend, slots=args.slots, max_positions=positions, mode=args.mode,
                              cuda_graphs=False if args.no_cuda_graphs else None)
    print(f"model: {'quick' if args.quick else 'musicgen-small'} shape, {backend.device} {backend.dtype}, built in "
          f"{time.perf_counter() - built:.1f} s; decoder mode {decoder.mode.value}, {args.slots} slots of "
          f"{positions} positions, {args.seconds:g} s clips ({steps} steps), guidance 3, "
          f"{torch.get_num_threads()} threads")
    # Honest about what ran: the dtype the decoder's products computed in, and whether this device has native bf16
    # products (without them, on an AVX2 CPU, a bf16 linear costs the same per row and batching gains little).
    print(f"compute_dtype: {str(decoder.modules.dtype).removeprefix('torch.')}")
    print(f"cpu_capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"native_bf16: {native_bf16(backend.device)}")
    generate_wall(backend, 1, 0.3)
    decoder_wall(decoder, 2, 0.3)  # warm-up

    gen, dec, steady, decode_s = {}, {}, {}, {}
    for n in (1, 4, 8):
        # interleaved and repeated (this machine is noisy): the median wall of each path
        gen_walls, dec_walls, step_times = [], [], []
        for i in range(args.repeats):
            for path in (("generate", "decoder") if i % 2 == 0 else ("decoder", "generate")):
                if path == "generate":
                    gen_walls.append(generate_wall(backend, n, args.seconds))
                else:
                    wall, times = decoder_wall(decoder, n, args.seconds)
                    dec_walls.append(wall)
                    step_times += times
        gen[n] = steps / statistics.median(gen_walls)
        dec[n] = steps / statistics.median(dec_walls)
        steady[n] = 1.0 / statistics.median(step_times)
        decode_s[n] = (encodec_seconds(decoder, n, args.seconds, batched=True),
                       encodec_seconds(decoder, n, args.seconds, batched=False))
        if n == 1:
            solo_s = statistics.median(dec_walls)
            fixed_s = max(0.0, solo_s - steps / steady[1])
        print(f"generate_steps_per_s_rows{n}: {gen[n]:.2f}")
        print(f"decoder_steps_per_s_rows{n}: {dec[n]:.2f}")
        print(f"encodec_decode_s_rows{n}: {decode_s[n][0]:.2f} batched ({decode_s[n][1]:.2f} one by one)")
    step_s = {n: step_time(decoder, n, args.seconds, steps=8 if args.quick else 5) for n in range(1, 9)}
    for n, s in step_s.items():
        print(f"decoder_step_s_rows{n}: {s:.4f}")
    print(f"decoder_batch4_vs_batch1: {4 * dec[4] / dec[1]:.2f}")
    print(f"decoder_batch8_vs_batch1: {8 * dec[8] / dec[1]:.2f}")
    print(f"raw_batch4_vs_batch1: {4 * gen[4] / gen[1]:.2f}")
    print(f"raw_batch8_vs_batch1: {8 * gen[8] / gen[1]:.2f}")
    print(f"decoder_vs_generate_rows1: {dec[1] / gen[1]:.2f}")
    # The same walls less their EnCodec decoding (measured alone here): the token loops compared
    tokens = {n: (steps / gen[n] - decode_s[n][0], steps / dec[n] - decode_s[n][1]) for n in (1, 4, 8)}
    for n, (g, d) in tokens.items():
        print(f"decoder_vs_generate_tokens_only_rows{n}: {g / d:.2f}")

    element = torch.empty((), dtype=decoder.modules.dtype).element_size()
    bandwidth = copy_bandwidth(decoder.device, mib=2048 if decoder.device.type == "cuda" else 512)
    floor = bandwidth / step_bytes(backend.model, 4, steps / 2, element)
    print(f"copy_bandwidth_gb_s: {bandwidth / 1e9:.1f}")
    print(f"bandwidth_floor_steps_per_s: {floor:.2f}")
    print(f"decoder_vs_floor_rows4: {steady[4] / floor:.2f}")
    if decoder.device.type == "cpu":  # where products are compute-bound (bf16 on an AVX2 CPU), compute binds
        cfg = backend.model.config.decoder
        rate = product_rate(decoder.device, decoder.modules.dtype, cfg.ffn_dim, cfg.hidden_size)
        compute_floor = rate / step_macs(backend.model, 4, steps / 2)
        print(f"product_gmac_per_s: {rate / 1e9:.1f}")
        print(f"compute_floor_steps_per_s_rows4: {compute_floor:.2f}")
        print(f"decoder_vs_compute_floor_rows4: {steady[4] / compute_floor:.2f}")
    print(f"joined_beside_{args.slots - 1}_matches_alone: {joined_matches_alone(decoder, args.slots - 1)}")

    gap = solo_s / 3
    admits = []
    for users in (4, 8):
        wall, latencies, admit = run_staggered(decoder, users, args.seconds, gap)
        admits += admit
        serial = serial_wall(users, solo_s, gap)
        ideal = serial_wall(users, steps * step_s[1] + fixed_s, gap) / ideal_wall(users, steps, gap, step_s, fixed_s)
        print(f"staggered_vs_serial_{users}users: {serial / wall:.2f}")
        print(f"staggered_ideal_{users}users: {ideal:.2f}")
        print(f"staggered_p50_s_{users}users: {statistics.median(latencies):.2f}")
        print(f"staggered_p95_s_{users}users: {percentile(latencies, 0.95):.2f}")
    print(f"admit_steps_p95: {percentile(admits, 0.95):.0f}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for rows in (1, 4):
            handles = [decoder.submit(r) for r in requests(rows, args.seconds)]
            decoder.step()
            decoder.step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    decoder.step()
            for h in handles:
                h.cancel()
            decoder.step()
            print(f"profile of 5 decoder steps at {rows} rows:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())

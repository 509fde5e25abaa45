"""Exactness of the decoder's CUDA path, on the tiny fixture: what the CPU tests check, where only a GPU can run it.

    python bench/cuda_check.py                 on a machine with CUDA (`bench/gpu_check.sh` runs it)
    python bench/cuda_check.py --oom           only the out-of-memory check (its own process in gpu_check.sh)
    python bench/cuda_check.py --device cpu    a dry run of what a CPU can run (no graphs, no out-of-memory)

Printed as `name: value`, every line from this one run. A check that raises prints `name: ERROR <type>: <message>`
and the others still run. A mismatch says where: `False (variation v, first differing step s of n)`.

    sdpa_backend_<mode>                        the attention kernel torch picks for that step's shapes in bf16
    cuda_fp32_<mode>_alone_matches_generate    a job alone, the decoder's step mode against `generate`'s codes
    cuda_bf16_<mode>_alone_matches_generate    the same in bf16 (kernels may round differently by shape)
    cuda_bf16_<mode>_alone_matches_generate_efficient_sdpa   the same with attention held to one kernel family
                                               (memory-efficient, else math), on both sides: a False above that
                                               turns True here is the kernel choice, not the decoder
    cuda_bf16_graphs_match_eager               CUDA graphs per slot bucket against the same static step, eager
    cuda_bf16_graphs_joined_at_<k>_matches_alone   a job that joins at step k beside others, with graphs
    cuda_oom_*                                 (--oom) sixteen jobs under an allocator capped to what one job
                                               needs: how many finished, were sent back (sheds) or failed (want 0)
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from generation.decoder import DecodeState, MusicGenDecoder, StepMode  # noqa: E402
from generation.musicgen import MusicGenBackend  # noqa: E402
from generation.types import GenerationRequest, SamplingParams  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "tiny-musicgen"
TARGET = GenerationRequest("lo-fi piano rainy night", 1.0, variations=2, seed=7)
OTHERS = [GenerationRequest("jazz drums", 0.5, seed=3, sampling=SamplingParams(top_k=20, temperature=0.8)),
          GenerationRequest("epic orchestral strings violin", 1.5, seed=9, sampling=SamplingParams(guidance=1.0)),
          GenerationRequest("calm", 0.7, seed=2, sampling=SamplingParams(top_p=0.9, top_k=0, guidance=2.0))]
MAX_POSITIONS = 200


def error_text(error: BaseException) -> str:
    first = str(error).splitlines()[0][:300] if str(error) else ""
    return f"ERROR {type(error).__name__}: {first}"


def check(name: str, run, *, quiet: bool = False) -> object:
    """Print one line: the check's value ("ok" when quiet), or the error it raised (the run goes on). Returns the
    value, or None."""
    try:
        value = run()
    except Exception as error:  # noqa: BLE001 - one broken check must not hide the others' lines
        print(f"{name}: {error_text(error)}", flush=True)
        return None
    print(f"{name}: {'ok' if quiet else value}", flush=True)
    return value


def compared(got: torch.Tensor, want: torch.Tensor) -> str:
    """True, or where the codes first differ: (variations, codebooks, steps)."""
    if got.shape != want.shape:
        return f"False (shape {tuple(got.shape)} against {tuple(want.shape)})"
    if torch.equal(got, want):
        return "True"
    differs = (got != want).any(dim=1)  # (variations, steps)
    variation = int(differs.any(dim=1).nonzero()[0])
    step = int(differs[variation].nonzero()[0])
    return f"False (variation {variation}, first differing step {step} of {got.shape[-1]})"


def all_compared(got: list[torch.Tensor], want: list[torch.Tensor]) -> str:
    results = [compared(a, b) for a, b in zip(got, want)]
    bad = [f"job {i}: {r}" for i, r in enumerate(results) if r != "True"]
    return "True" if not bad else "False (" + "; ".join(bad) + ")"


def generate_codes(backend: MusicGenBackend, request: GenerationRequest) -> torch.Tensor:
    texts, seeds, new_tokens = backend._rows([request])
    frames = backend._run(texts, seeds, new_tokens, request.sampling, prompt_codes=None, progress=None,
                          should_stop=None)
    return torch.stack(frames).cpu()


def decoded(backend, requests: list[GenerationRequest], join_at: int | None = None, **options) -> list[torch.Tensor]:
    """Codes of each request; with join_at, the last request is submitted after that many steps."""
    decoder = MusicGenDecoder(backend, slots=6, max_positions=MAX_POSITIONS, **options)
    early = requests if join_at is None else requests[:-1]
    handles = [decoder.submit(r) for r in early]
    if join_at is not None:
        for _ in range(join_at):
            decoder.step()
        handles.append(decoder.submit(requests[-1]))
    decoder.run_until_idle()
    if not all(h.state is DecodeState.DONE for h in handles):
        raise RuntimeError(f"jobs ended {[h.state.value for h in handles]}: {[str(h.error) for h in handles]}")
    return [h.codes.cpu() for h in handles]


def one_kernel_family():
    """Attention held to the memory-efficient kernel (math where it cannot run), for `generate` and the decoder."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def sdpa_choice(backend, mode: StepMode) -> str:
    """The fused attention kernel torch would pick for a decoding step of this mode (bf16, 3 slots' rows)."""
    from torch.nn.attention import SDPBackend

    heads = backend.model.config.decoder.num_attention_heads
    head_dim = backend.model.config.decoder.hidden_size // heads
    rows, device = 6, backend.device
    q = torch.randn(rows, heads, 1, head_dim, device=device, dtype=torch.bfloat16)
    width = MAX_POSITIONS + 1 if mode is StepMode.STATIC else 40
    k = torch.randn(rows, heads, width, head_dim, device=device, dtype=torch.bfloat16)
    mask = torch.ones(rows, 1, 1, width, dtype=torch.bool, device=device) if mode is StepMode.STATIC else None
    choice = torch._fused_sdp_choice(q, k, k, attn_mask=mask)
    return SDPBackend(choice).name


def exactness(device: str) -> None:
    cuda = device == "cuda"
    if cuda:
        print(f"cudnn_sdp_enabled: {torch.backends.cuda.cudnn_sdp_enabled()}", flush=True)
    backend = None
    for dtype in ("float32", "bf16"):
        backend = check(f"load_{dtype}", lambda: MusicGenBackend.load(str(TINY), device=device, dtype=dtype),
                        quiet=True)
        if backend is None:
            continue
        short = "fp32" if dtype == "float32" else dtype
        held = [False, True] if cuda and dtype == "bf16" else [False]
        for one_family in held:
            with one_kernel_family() if one_family else nullcontext():
                suffix = "_efficient_sdpa" if one_family else ""
                expected = check(f"{device}_{short}_generate_runs{suffix}", lambda: generate_codes(backend, TARGET),
                                 quiet=True)
                if expected is None:
                    continue
                for mode in StepMode:
                    check(f"{device}_{short}_{mode.value}_alone_matches_generate{suffix}",
                          lambda: compared(decoded(backend, [TARGET], mode=mode, cuda_graphs=False)[0], expected))
    if backend is None:
        return
    if cuda:
        for mode in (StepMode.BATCHED, StepMode.STATIC):
            check(f"sdpa_backend_{mode.value}", lambda: sdpa_choice(backend, mode))
    check(f"{device}_bf16_graphs_match_eager",
          lambda: all_compared(decoded(backend, OTHERS + [TARGET], mode=StepMode.STATIC, cuda_graphs=cuda),
                               decoded(backend, OTHERS + [TARGET], mode=StepMode.STATIC, cuda_graphs=False)))
    alone = check(f"{device}_bf16_graphs_alone_runs",
                  lambda: decoded(backend, [TARGET], mode=StepMode.STATIC, cuda_graphs=cuda)[0], quiet=True)
    if alone is None:
        return
    for k in (0, 1, 7, 23):
        check(f"{device}_bf16_graphs_joined_at_{k}_matches_alone",
              lambda: compared(decoded(backend, OTHERS + [TARGET], join_at=k, mode=StepMode.STATIC,
                                       cuda_graphs=cuda)[-1], alone))


def out_of_memory() -> None:
    """Sixteen 4 s jobs with the allocator capped at what is in use plus what one job needs alone (measured
    here): a step or a decode that does not fit sends a job back or tries again later; none should fail."""
    backend = MusicGenBackend.load(str(TINY), device="cuda", dtype="bf16")
    decoder = MusicGenDecoder(backend, slots=16, max_positions=400, mode=StepMode.STATIC, cuda_graphs=False)
    warm = [decoder.submit(GenerationRequest(f"warm-up {i}", 0.3, seed=i)) for i in range(16)]
    decoder.run_until_idle()  # every kernel shape up to 32 rows loaded before memory is short
    assert all(h.state is DecodeState.DONE for h in warm)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    decoder.submit(GenerationRequest("one alone", 4.0, seed=99))
    decoder.run_until_idle()
    one_job = max(torch.cuda.max_memory_reserved() - base, 2 << 20)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + one_job
    print(f"cuda_oom_one_job_mib: {one_job / 2 ** 20:.1f}", flush=True)
    print(f"cuda_oom_cap_mib: {cap / 2 ** 20:.1f}", flush=True)
    torch.cuda.set_per_process_memory_fraction(cap / total)
    handles = [decoder.submit(GenerationRequest(f"piece {i}", 4.0, seed=i)) for i in range(16)]
    try:
        decoder.run_until_idle()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"cuda_oom_sheds: {decoder.sheds}")
    print(f"cuda_oom_jobs_done: {sum(h.state is DecodeState.DONE for h in handles)}")
    print(f"cuda_oom_jobs_failed: {sum(h.state is DecodeState.FAILED for h in handles)}")
    for h in handles:
        if h.state is DecodeState.FAILED:
            print(f"cuda_oom_failure: {type(h.error).__name__}: {str(h.error).splitlines()[0][:200]}")
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--oom", action="store_true", help="only the out-of-memory check")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_check: no CUDA device here (`--device cpu` for a dry run)")
        return 2
    cuda = args.device == "cuda"
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}", flush=True)
    if args.oom:
        if not cuda:
            print("cuda_check: the out-of-memory check needs CUDA")
            return 2
        check("cuda_oom_check", lambda: out_of_memory() or "ran")
        return 0
    exactness(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

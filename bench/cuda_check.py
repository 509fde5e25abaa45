"""Exactness of the decoder's CUDA path, on the tiny fixture: what the CPU tests check, where only a GPU can run it.

    python bench/cuda_check.py               on a machine with CUDA (`bench/gpu_check.sh` runs it)
    python bench/cuda_check.py --device=cpu  a dry run of what a CPU can run (no graphs, no out-of-memory)

Printed as `name: True|False` (and a few figures), every line from this one run:

    cuda_fp32_<mode>_alone_matches_generate    a job alone, the decoder's step mode against `generate`'s codes
    cuda_bf16_<mode>_alone_matches_generate    the same in bf16 (where kernels may round differently by batch)
    cuda_bf16_graphs_match_eager               CUDA graphs per slot bucket against the same static step, eager
    cuda_bf16_graphs_joined_at_<k>_matches_alone   a job that joins at step k beside others, with graphs
    cuda_oom_mid_step_jobs_failed              jobs failed by a real out-of-memory in the middle of a step (want 0)
"""

from __future__ import annotations

import sys
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


def generate_codes(backend: MusicGenBackend, request: GenerationRequest) -> torch.Tensor:
    texts, seeds, new_tokens = backend._rows([request])
    frames = backend._run(texts, seeds, new_tokens, request.sampling, prompt_codes=None, progress=None,
                          should_stop=None)
    return torch.stack(frames).cpu()


def decoded(backend, requests: list[GenerationRequest], join_at: int | None = None, **options) -> list[torch.Tensor]:
    """Codes of each request; with join_at, the last request is submitted after that many steps."""
    decoder = MusicGenDecoder(backend, slots=6, max_positions=200, **options)
    early = requests if join_at is None else requests[:-1]
    handles = [decoder.submit(r) for r in early]
    if join_at is not None:
        for _ in range(join_at):
            decoder.step()
        handles.append(decoder.submit(requests[-1]))
    decoder.run_until_idle()
    assert all(h.state is DecodeState.DONE for h in handles), [h.state for h in handles]
    return [h.codes.cpu() for h in handles]


def real_oom_mid_step(backend) -> int:
    """Fill the GPU to within a few MiB, then run sixteen slots: jobs failed by a real out-of-memory (want 0).
    Whether a step runs out at all depends on the card; `cuda_oom_mid_step_sheds` says whether one did."""
    decoder = MusicGenDecoder(backend, slots=16, max_positions=400, mode=StepMode.STATIC, cuda_graphs=False)
    decoder.submit(GenerationRequest("warm-up", 0.2, seed=1))
    decoder.run_until_idle()
    ballast, chunk = [], 1 << 30
    while chunk >= 1 << 20:  # the largest blocks first, down to 1 MiB
        try:
            ballast.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            chunk //= 2
    for _ in range(4):  # give back about 4 MiB: a few slots' steps fit, sixteen may not
        ballast.pop()
    handles = [decoder.submit(GenerationRequest(f"piece {i}", 4.0, seed=i)) for i in range(16)]
    try:
        decoder.run_until_idle()
    finally:
        del ballast
        torch.cuda.empty_cache()
    print(f"cuda_oom_mid_step_sheds: {decoder.sheds}")
    return sum(h.state is DecodeState.FAILED for h in handles)


def main(argv: list[str] | None = None) -> int:
    device = (argv if argv is not None else sys.argv[1:])[:1] or ["cuda"]
    device = device[0].removeprefix("--device=")  # `--device=cpu`: a dry run of the parts a CPU can run
    if device == "cuda" and not torch.cuda.is_available():
        print("cuda_check: no CUDA device here (`--device=cpu` for a dry run)")
        return 2
    cuda = device == "cuda"
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}")
    for dtype in ("float32", "bf16"):
        backend = MusicGenBackend.load(str(TINY), device=device, dtype=dtype)
        expected = generate_codes(backend, TARGET)
        short = "fp32" if dtype == "float32" else dtype
        for mode in StepMode:
            (codes,) = decoded(backend, [TARGET], mode=mode, cuda_graphs=False)
            print(f"{device}_{short}_{mode.value}_alone_matches_generate: {torch.equal(codes, expected)}")
    eager = decoded(backend, OTHERS + [TARGET], mode=StepMode.STATIC, cuda_graphs=False)
    graphs = decoded(backend, OTHERS + [TARGET], mode=StepMode.STATIC, cuda_graphs=cuda)
    print(f"{device}_bf16_graphs_match_eager: {all(torch.equal(a, b) for a, b in zip(eager, graphs))}")
    (alone,) = decoded(backend, [TARGET], mode=StepMode.STATIC, cuda_graphs=cuda)
    for k in (0, 1, 7, 23):
        joined = decoded(backend, OTHERS + [TARGET], join_at=k, mode=StepMode.STATIC, cuda_graphs=cuda)[-1]
        print(f"{device}_bf16_graphs_joined_at_{k}_matches_alone: {torch.equal(joined, alone)}")
    if cuda:
        print(f"cuda_oom_mid_step_jobs_failed: {real_oom_mid_step(backend)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

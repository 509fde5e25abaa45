"""How much batching buys: one clip, 4 variations in one batch, 4 clips one after another, in one run.

    python bench/generate.py            musicgen-small's shape (587M parameters, random weights, no download)
    python bench/generate.py --quick    a smaller shape, for a fast look
    python bench/generate.py --family stable-audio           stable-audio-open-1.0's shape (T5-base, the 1.06B
                                                             DiT, the Oobleck autoencoder; random weights, ~1.2B)
    python bench/generate.py --family stable-audio --quick   the tiny test fixture (tests/fixtures/tiny-stable-audio)
    python bench/generate.py --family ace-step          ACE-Step 1.5 turbo's shape (the 24-layer 2048-wide DiT,
                                                        Qwen3-0.6B, the 48 kHz Oobleck; random weights, built
                                                        in the run's dtype)
    python bench/generate.py --family ace-step --quick  a small shape (4-layer 256-wide DiT, an 8-wide Oobleck with
                                                        the real strides and 64 latent channels) for a shared CPU

Clips are 5 s (MusicGen, guidance 3) or 5 s cropped from the model's whole window, which is always denoised
(Stable Audio, guidance 7, --steps denoising steps; the fixture's clips are capped at its 1 s). Prints the times and
the ratios `variations4_vs_single` (4 variations in one batch against one clip) and `batched_vs_serial`
(4 variations in one batch against 4 clips one after another).

ACE-Step times whole songs with lyrics (--seconds, default 60 there; 8 turbo steps unless --steps is given): one
song, then 4 variations in one pipeline call, and prints `seconds_per_song`, `seconds_per_4_variations` and
`variations4_vs_single`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds queue.py, which would shadow the standard library's queue module: keep it off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

import torch  # noqa: E402

from build_tiny_musicgen import build_model, build_processor, build_tokenizer, small_shape_config  # noqa: E402
from generation.musicgen import MusicGenBackend, choose_device  # noqa: E402
from generation.types import GenerationRequest, SamplingParams  # noqa: E402


def quick_config(vocab_size: int):
    config = small_shape_config(vocab_size)
    config.decoder.num_hidden_layers = 6
    config.decoder.hidden_size = 512
    config.decoder.ffn_dim = 2048
    config.decoder.num_attention_heads = 8
    config.text_encoder.num_layers = 2
    return config


def random_backend(quick: bool, device: str, dtype: str) -> MusicGenBackend:
    """A MusicGen of the real shape with random weights, wrapped like a loaded checkpoint."""
    tokenizer = build_tokenizer()
    config = quick_config(len(tokenizer)) if quick else small_shape_config(len(tokenizer))
    model = build_model(config, sharpen=False)
    choice = choose_device(device, dtype)
    model.to(choice.device)
    if choice.dtype != "float32":
        half = getattr(torch, choice.dtype)
        model.text_encoder.to(half)
        model.decoder.to(half)
        if getattr(model, "enc_to_dec_proj", None) is not None:
            model.enc_to_dec_proj.to(half)
    return MusicGenBackend(model, build_processor(tokenizer), "random/musicgen-small-shape", choice)


def stable_audio_backend(quick: bool, device: str, dtype: str):
    """--family stable-audio: the tiny fixture (--quick), or stable-audio-open-1.0's shape with random weights."""
    from generation.stable_audio import StableAudioBackend

    if quick:
        return StableAudioBackend.load(str(ROOT / "tests" / "fixtures" / "tiny-stable-audio"), device=device,
                                       dtype=dtype)
    from build_tiny_stable_audio import build_pipeline, real_shape_components

    choice = choose_device(device, dtype)
    pipe = build_pipeline(real_shape_components()).to(choice.device, getattr(torch, choice.dtype))
    pipe.set_progress_bar_config(disable=True)
    return StableAudioBackend(pipe, "random/stable-audio-open-shape", choice)


def ace_step_backend(quick: bool, device: str, dtype: str):
    """--family ace-step: a random pipeline of ACE-Step 1.5 turbo's shape, or the mid-sized quick shape. Its networks
    are built directly in the run's dtype (the real shape would need ~18 GB in fp32); the autoencoder runs in fp32,
    as the backend loads it."""
    from build_tiny_ace_step import build_pipeline, quick_components, real_shape_components
    from generation.ace_step import AceStepBackend

    choice = choose_device(device, dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, choice.dtype))
    try:
        with torch.device(choice.device):
            pipe = build_pipeline(quick_components() if quick else real_shape_components())
    finally:
        torch.set_default_dtype(previous)
    if pipe.vae.dtype != torch.float32:
        pipe.vae.to(torch.float32)
    pipe.to(choice.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling()
    return AceStepBackend(pipe, "random/ace-step-1.5-turbo-shape", choice)


def ace_step_main(args) -> int:
    from generation.ace_requests import AceRequest

    t0 = time.perf_counter()
    backend = ace_step_backend(args.quick, args.device, args.dtype)
    p = backend.pipe
    parts = (p.text_encoder, p.condition_encoder, p.transformer, p.vae, p.audio_tokenizer, p.audio_token_detokenizer)
    millions = sum(t.numel() for part in parts for t in part.parameters()) / 1e6
    seconds = 60.0 if args.seconds is None else min(args.seconds, backend.max_duration_s)
    steps = args.steps or backend.default_steps
    shape = "quick" if args.quick else "ACE-Step 1.5 turbo"
    print(f"model: {shape} shape, {millions:.4g}M parameters, {backend.device} {backend.dtype} (autoencoder fp32), "
          f"built in {time.perf_counter() - t0:.1f} s; {seconds:g} s songs with lyrics, {steps} steps, "
          f"{torch.get_num_threads()} threads")
    lyrics = "\n".join(["[verse]"] + ["walking down the empty street tonight, neon signs are flickering"] * 8
                        + ["[chorus]"] + ["oh we sing, oh we sing, through the night until the morning"] * 4)

    def run(variations: int, seed: int, duration: float = seconds, step_count: int = steps) -> None:
        backend.generate([AceRequest("synth pop, female vocal", lyrics=lyrics, duration_s=duration,
                                     variations=variations, seed=seed, steps=step_count, bpm=110, key="A minor")])

    run(1, 0, 2.0, 2)  # warm-up
    single = timed(lambda: run(1, 1), args.repeats)
    print(f"one {seconds:g} s song:             {single:7.2f} s  ({seconds / single:.2f}x real time)")
    batch = timed(lambda: run(4, 1), args.repeats)
    print(f"4 variations in one call:   {batch:7.2f} s  ({4 * seconds / batch:.2f}x real time)")
    print(f"seconds_per_song: {single:.2f}")
    print(f"seconds_per_4_variations: {batch:.2f}")
    print(f"variations4_vs_single: {batch / single:.2f}")
    return 0


def parameter_count(backend) -> float:
    """Millions of parameters in a MusicGen model or in a Stable Audio pipeline's four networks."""
    if hasattr(backend, "pipe"):
        p = backend.pipe
        parts = (p.text_encoder, p.projection_model, p.transformer, p.vae)
    else:
        parts = (backend.model,)
    return sum(t.numel() for part in parts for t in part.parameters()) / 1e6


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("musicgen", "stable-audio", "ace-step"), default="musicgen")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default 5 s; ace-step: 60 s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (stable-audio: default 100; ace-step: the turbo model's 8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None,
                        help="fp32, bf16 (default: bf16, the faster one on these CPUs for MusicGen and Stable Audio; "
                             "ace-step: auto, i.e. bf16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.family == "ace-step":
        args.dtype = args.dtype or "auto"
        return ace_step_main(args)
    args.dtype = args.dtype or "bf16"
    args.seconds = 5.0 if args.seconds is None else args.seconds
    args.steps = 100 if args.steps is None else args.steps
    t0 = time.perf_counter()
    diffusion = args.family == "stable-audio"
    if diffusion:
        backend = stable_audio_backend(args.quick, args.device, args.dtype)
        shape = "tiny fixture" if args.quick else "stable-audio-open-1.0"
        sampling, steps = SamplingParams(guidance=7.0), args.steps
    else:
        backend = random_backend(args.quick, args.device, args.dtype)
        shape = "quick" if args.quick else "musicgen-small"
        sampling, steps = SamplingParams(guidance=3.0), None
    seconds = min(args.seconds, backend.max_duration_s)
    detail = f", {steps} steps over the whole {backend.window_s:.2f} s window" if diffusion else ""
    print(f"model: {shape} shape, {parameter_count(backend):.3g}M parameters, {backend.device} {backend.dtype}, "
          f"built in {time.perf_counter() - t0:.1f} s; {seconds:g} s clips, guidance {sampling.guidance:g}{detail}, "
          f"{torch.get_num_threads()} threads")
    prompt = "lo-fi piano, rainy night"

    def run(variations: int, seed: int, duration: float = seconds, step_count: int | None = steps) -> None:
        backend.generate([GenerationRequest(prompt, duration, variations=variations, seed=seed, sampling=sampling,
                                            steps=step_count)])

    run(1, 0, min(0.5, seconds), 2 if diffusion else None)  # warm-up

    single = timed(lambda: run(1, 1), args.repeats)
    print(f"one clip:                    {single:7.2f} s  ({seconds / single:.2f}x real time)")
    batch = timed(lambda: run(4, 1), args.repeats)
    print(f"4 variations in one batch:   {batch:7.2f} s  ({4 * seconds / batch:.2f}x real time)")
    serial = timed(lambda: [run(1, s) for s in range(4)], args.repeats)
    print(f"4 clips one after another:   {serial:7.2f} s  ({4 * seconds / serial:.2f}x real time)")
    print(f"variations4_vs_single: {batch / single:.2f}")
    print(f"batched_vs_serial: {batch / serial:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

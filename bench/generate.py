"""How much batching buys: one clip, 4 variations in one batch, 4 clips one after another, in one run.

    python bench/generate.py            musicgen-small's shape (587M parameters, random weights, no download)
    python bench/generate.py --quick    a smaller shape, for a fast look

Clips are 5 s with guidance 3. Prints the times and the ratios `variations4_vs_single` (4 variations in one batch
against one clip) and `batched_vs_serial` (4 variations in one batch against 4 clips one after another).
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
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from build_tiny_musicgen import build_model, build_processor, build_tokenizer, small_shape_config  # noqa: E402
from generation.musicgen import MusicGenBackend, choose_device  # noqa: E402
from generation.types import GenerationRequest  # noqa: E402


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


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bf16", help="fp32, bf16 (default: the faster one on these CPUs)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    backend = random_backend(args.quick, args.device, args.dtype)
    params = sum(p.numel() for p in backend.model.parameters()) / 1e6
    print(f"model: {'quick' if args.quick else 'musicgen-small'} shape, {params:.0f}M parameters, {backend.device} "
          f"{backend.dtype}, built in {time.perf_counter() - t0:.1f} s; {args.seconds:g} s clips, guidance 3, "
          f"{torch.get_num_threads()} threads")
    prompt = "lo-fi piano, rainy night"
    backend.generate([GenerationRequest(prompt, 0.5, seed=0)])  # warm-up

    single = timed(lambda: backend.generate([GenerationRequest(prompt, args.seconds, seed=1)]), args.repeats)
    print(f"one clip:                    {single:7.2f} s  ({args.seconds / single:.2f}x real time)")
    batch = timed(lambda: backend.generate([GenerationRequest(prompt, args.seconds, variations=4, seed=1)]),
                  args.repeats)
    print(f"4 variations in one batch:   {batch:7.2f} s  ({4 * args.seconds / batch:.2f}x real time)")
    serial = timed(lambda: [backend.generate([GenerationRequest(prompt, args.seconds, seed=s)]) for s in range(4)],
                   args.repeats)
    print(f"4 clips one after another:   {serial:7.2f} s  ({4 * args.seconds / serial:.2f}x real time)")
    print(f"variations4_vs_single: {batch / single:.2f}")
    print(f"batched_vs_serial: {batch / serial:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

"""Build a tiny, randomly initialised MusicGen and save it like a hub checkpoint.

Tests load it through the same `from_pretrained` path that operators use for `facebook/musicgen-*`, with no
network. The shapes that matter to the engine are the real ones: EnCodec at 32 kHz with 50 frames a second
(upsampling 8*5*4*4 = 640) and 4 codebooks; only widths, depths and the vocabulary are small.

    python scripts/build_tiny_musicgen.py [OUT_DIR] [--musicgen-small-shape]

`--musicgen-small-shape` builds a random model with musicgen-small's sizes (587M parameters) for benchmarks;
it is kept in memory by `bench/`, not written to the repository.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path
from typing import Callable

import torch
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
    T5Tokenizer,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-musicgen"
SEED = 1234

# Words that appear in prompts, so the tiny tokenizer produces different ids for different prompts.
WORDS = (
    "lo-fi piano rainy night jazz rock drums bass guitar synth ambient calm aggressive happy sad slow fast "
    "epic orchestral electronic techno house hip hop beat chill violin strings vocal melody chorus verse intro "
    "outro bright dark warm cold upbeat energetic dreamy"
).split()


def build_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer built from a word list: no sentencepiece model file, no download."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}", -2.0) for w in WORDS]
    pieces += [("\u2581", -3.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [(f"\u2581{c}", -4.0) for c in string.ascii_letters + string.digits]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_config(vocab_size: int) -> MusicgenConfig:
    text = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    codebook_size = 256
    audio = EncodecConfig(
        sampling_rate=32_000, audio_channels=1, normalize=False, use_causal_conv=False,
        upsampling_ratios=[8, 5, 4, 4], hidden_size=16, num_filters=4, num_residual_layers=1, num_lstm_layers=1,
        codebook_size=codebook_size, codebook_dim=16,
        # num_quantizers = 1000 * bandwidth // (frame_rate * log2(codebook_size)) = 1600 // 400 = 4
        target_bandwidths=[1.6],
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=codebook_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        num_codebooks=4, max_position_embeddings=4096, pad_token_id=codebook_size, bos_token_id=codebook_size,
        audio_channels=1,
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def small_shape_config(vocab_size: int) -> MusicgenConfig:
    """musicgen-small's sizes: T5-base, EnCodec 32 kHz, a 24-layer 1024-wide decoder."""
    text = T5Config(vocab_size=vocab_size, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    audio = EncodecConfig(
        sampling_rate=32_000, audio_channels=1, normalize=False, use_causal_conv=False,
        upsampling_ratios=[8, 5, 4, 4], hidden_size=128, num_filters=64, num_residual_layers=1, num_lstm_layers=2,
        codebook_size=2048, target_bandwidths=[2.2],
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
        num_codebooks=4, max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048, audio_channels=1,
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def build_model(config: MusicgenConfig, seed: int = SEED, sharpen: bool = True) -> MusicgenForConditionalGeneration:
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(config)
    # EnCodec's codebooks are zero-initialised buffers: with them every code decodes to the same audio.
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_(0.0, 1.0)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.fill_(1.0)
            layer.codebook.inited.fill_(True)
        # A random decoder's output is dominated by its biases (a constant offset, the same for every code).
        for name, param in model.audio_encoder.decoder.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        if sharpen:
            # With the default 0.02 init a tiny model's token distributions are nearly uniform, so neither the
            # prompt nor the inputs change what is sampled, and tests could not tell right from wrong. Sharpen the
            # heads and strengthen the text conditioning.
            for head in model.decoder.lm_heads:
                head.weight.normal_(0.0, 0.6)
            for layer in model.decoder.model.decoder.layers:
                attn = layer.encoder_attn
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                    proj.weight.normal_(0.0, 0.3)
            model.text_encoder.shared.weight.normal_(0.0, 1.0)
    gen = model.generation_config
    gen.decoder_start_token_id = config.decoder.bos_token_id
    gen.pad_token_id = config.decoder.pad_token_id
    gen.bos_token_id = config.decoder.bos_token_id
    gen.do_sample = True
    gen.guidance_scale = 3.0
    gen.max_length = 1500
    model.eval()
    return model


def build_processor(tokenizer: T5Tokenizer) -> MusicgenProcessor:
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=32_000, padding_value=0.0)
    return MusicgenProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def report(out_dir: Path, parameters: int) -> Path:
    """Print what a fixture script wrote (the fixtures must stay small: they are committed)."""
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(f"wrote {out_dir} ({size / 1024:.0f} KiB, {parameters} parameters)")
    return out_dir


def fixture_main(build: Callable[[Path], Path], default_out: Path, doc: str, argv: list[str] | None = None) -> int:
    """The command line every fixture script shares: an optional output folder."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=default_out)
    build(parser.parse_args(argv).out)
    return 0


def build(out_dir: Path) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tiny_config(len(tokenizer)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    build_processor(tokenizer).save_pretrained(out_dir)
    return report(out_dir, sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    sys.exit(fixture_main(build, DEFAULT_OUT, __doc__))

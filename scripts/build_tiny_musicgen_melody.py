"""Build a tiny, randomly initialised MusicGen-melody and save it like a hub checkpoint.

Tests load it through the same `from_pretrained` path that operators use for `facebook/musicgen-melody`, with no
network. The shapes that matter to the engine are the real ones: EnCodec at 32 kHz with 50 frames a second and
4 codebooks, 12 chroma bins, and 235 chroma frames prepended to the decoder's input; only widths, depths and the
vocabulary are small. The text encoder, EnCodec and the tokenizer are those of `build_tiny_musicgen.py`.

    python scripts/build_tiny_musicgen_melody.py [OUT_DIR]

The melody feature extractor of transformers needs torchaudio, which Bandmate does not install (it computes the
chroma itself, in `generation/melody.py`). Its settings are still written to processor_config.json, as on the hub,
so `AutoProcessor` works wherever torchaudio exists; elsewhere `AutoTokenizer` loads the tokenizer saved here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import (
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyForConditionalGeneration,
    T5Tokenizer,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_tiny_musicgen import build_tokenizer, fixture_main, report, tiny_config  # noqa: E402 - the sibling script

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-musicgen-melody"
SEED = 4321
CHROMA_LENGTH = 235  # facebook/musicgen-melody: 30 s of chroma at 32 kHz / hop 4096

# What MusicgenMelodyFeatureExtractor would save (its defaults, which are the hub checkpoint's).
FEATURE_EXTRACTOR = {
    "chunk_length": 30,
    "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
    "feature_size": 12,
    "hop_length": 4096,
    "n_fft": 16384,
    "num_chroma": 12,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 32000,
    "stem_indices": [3, 2],
}


def tiny_melody_config(vocab_size: int) -> MusicgenMelodyConfig:
    """The MusicGen fixture's text encoder and EnCodec, with a melody decoder (no cross-attention: prepending)."""
    base = tiny_config(vocab_size)
    codebook_size = base.audio_encoder.codebook_size
    decoder = MusicgenMelodyDecoderConfig(
        vocab_size=codebook_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        num_codebooks=4, max_position_embeddings=2048, pad_token_id=codebook_size, bos_token_id=codebook_size,
        audio_channels=1,
    )
    return MusicgenMelodyConfig(
        text_encoder=base.text_encoder, audio_encoder=base.audio_encoder, decoder=decoder, num_chroma=12,
        chroma_length=CHROMA_LENGTH,
    )


def build_model(config: MusicgenMelodyConfig, seed: int = SEED) -> MusicgenMelodyForConditionalGeneration:
    torch.manual_seed(seed)
    model = MusicgenMelodyForConditionalGeneration(config)
    with torch.no_grad():
        # EnCodec's codebooks are zero-initialised buffers: with them every code decodes to the same audio.
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_(0.0, 1.0)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.fill_(1.0)
            layer.codebook.inited.fill_(True)
        # A random EnCodec decoder's output is dominated by its biases (the same offset for every code).
        for name, param in model.audio_encoder.decoder.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        # With the default 0.02 init the token distributions are nearly uniform and the conditioning is a whisper,
        # so neither the prompt nor the melody would change what is sampled. Sharpen the heads, and make the
        # prepended conditioning (chroma and text) loud enough for self-attention to hear it.
        for head in model.decoder.lm_heads:
            head.weight.normal_(0.0, 0.6)
        model.audio_enc_to_dec_proj.weight.normal_(0.0, 1.0)
        model.text_encoder.shared.weight.normal_(0.0, 1.0)
        for layer in model.decoder.model.decoder.layers:
            attn = layer.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                proj.weight.normal_(0.0, 0.3)
    gen = model.generation_config
    gen.decoder_start_token_id = config.decoder.bos_token_id
    gen.pad_token_id = config.decoder.pad_token_id
    gen.bos_token_id = config.decoder.bos_token_id
    gen.do_sample = True
    gen.guidance_scale = 3.0
    gen.max_length = 1500
    model.eval()
    return model


def save_processor(tokenizer: T5Tokenizer, out_dir: Path) -> None:
    """The tokenizer as saved by save_pretrained, and the feature extractor's settings in the 5.x processor layout."""
    tokenizer.save_pretrained(out_dir)
    config = out_dir / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["processor_class"] = "MusicgenMelodyProcessor"
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    processor = {"feature_extractor": FEATURE_EXTRACTOR, "processor_class": "MusicgenMelodyProcessor"}
    (out_dir / "processor_config.json").write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n")


def build(out_dir: Path) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tiny_melody_config(len(tokenizer)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_processor(tokenizer, out_dir)
    return report(out_dir, sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    sys.exit(fixture_main(build, DEFAULT_OUT, __doc__))

"""Build a tiny, randomly initialised Stable Audio Open pipeline and save it like the hub checkpoint.

Tests load it with `StableAudioPipeline.from_pretrained(folder)`, the same path operators use for
`stabilityai/stable-audio-open-1.0`, with no network. What matters to the engine keeps the real shape: 44.1 kHz
stereo, an Oobleck autoencoder with downsampling [2, 4, 4, 8, 8] (2048 samples a latent frame), a DiT with rotary
attention, T5 text conditioning and start/end-seconds conditioning. Widths, depths, the vocabulary and the window
(`sample_size` latent frames) are small. The scheduler is `EDMDPMSolverMultistepScheduler` (deterministic
dpmsolver++) instead of the real model's `CosineDPMSolverMultistepScheduler`, so tests are fast and exact.

    python scripts/build_tiny_stable_audio.py [OUT_DIR]

`real_shape_components()` builds a random pipeline with stable-audio-open-1.0's sizes (about 1.2B parameters)
for `bench/`; it is kept in memory, never written to the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from transformers import T5Config, T5EncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_tiny_musicgen import build_tokenizer, fixture_main, report  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-stable-audio"
SEED = 4321
SAMPLE_RATE = 44_100
DOWNSAMPLING = [2, 4, 4, 8, 8]  # the real model's: 2048 samples per latent frame
TINY_WINDOW_FRAMES = 32  # 32 * 2048 / 44100 = 1.49 s window: calls offer up to 1 s
TOKENS = 32  # the tokenizer pads every prompt to this many tokens (the real model: 128)


def tiny_components() -> dict:
    """The pipeline's parts at toy widths. The decoder is made to depend on its latents (see `_audible_decoder`)."""
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = TOKENS
    width = 32
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    ))
    with torch.no_grad():
        text_encoder.shared.weight.normal_(0.0, 1.0)  # distinct prompts give distinct conditioning
    latent = 4
    vae = AutoencoderOobleck(
        # The encoder's last layer gives mean and scale: encoder_hidden_size is twice the latent channels.
        encoder_hidden_size=2 * latent, downsampling_ratios=DOWNSAMPLING, channel_multiples=[1, 1, 2, 2, 2],
        decoder_channels=4, decoder_input_channels=latent, audio_channels=2, sampling_rate=SAMPLE_RATE,
    )
    _audible_decoder(vae)
    _confident_encoder(vae)
    # Seconds are normalised by max_value before conditioning; the real model's 512 would make every duration of a
    # 1.5 s window look alike, so the fixture's range is its own window (rounded up).
    projection = StableAudioProjectionModel(text_encoder_dim=width, conditioning_dim=width, min_value=0,
                                            max_value=2)
    transformer = StableAudioDiTModel(
        sample_size=TINY_WINDOW_FRAMES, in_channels=latent, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        num_key_value_attention_heads=2, out_channels=latent, cross_attention_dim=width, time_proj_dim=16,
        global_states_input_dim=2 * width, cross_attention_input_dim=width,
    )
    scheduler = EDMDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential", prediction_type="v_prediction",
        rho=7.0, solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero",
    )
    return dict(vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer,
                transformer=transformer, scheduler=scheduler)


def _audible_decoder(vae: AutoencoderOobleck) -> None:
    """A random Oobleck decoder's output is dominated by its biases: the same waveform whatever the latents. Zero
    them, and scale the last convolution so the audio lands at a sensible level instead of near silence."""
    with torch.no_grad():
        for name, param in vae.decoder.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        probe = vae.decode(torch.randn(1, vae.config.decoder_input_channels, 16)).sample
        peak = float(probe.abs().max())
        conv = vae.decoder.conv2
        gain = 0.5 / max(peak, 1e-8)
        if hasattr(conv, "parametrizations"):  # torch.nn.utils.parametrizations.weight_norm
            conv.parametrizations.weight.original0.mul_(gain)
        else:  # the older torch.nn.utils.weight_norm
            conv.weight_g.mul_(gain)


def _confident_encoder(vae: AutoencoderOobleck) -> None:
    """A random Oobleck encoder gives latent means far smaller than its posterior noise, so audio-to-audio would
    start from noise whatever the input. Give the means unit scale on music-level input and the posterior a small
    spread, as a trained encoder has."""
    latent = vae.config.decoder_input_channels
    conv = vae.encoder.conv2
    with torch.no_grad():
        for name, param in vae.encoder.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        t = torch.arange(vae.hop_length * 16) / vae.config.sampling_rate
        probe = 0.2 * torch.sin(2 * torch.pi * 220.0 * t) + 0.05 * torch.randn(2, t.numel())
        mean = vae.encode(probe[None]).latent_dist.mean
        gain = conv.weight_g if hasattr(conv, "weight_g") else conv.parametrizations.weight.original0
        gain[:latent] /= max(float(mean.std()), 1e-8)
        gain[latent:] = 0.0
        conv.bias[latent:] = -5.0  # softplus(-5): a posterior std of ~0.007


def real_shape_components() -> dict:
    """stable-audio-open-1.0's sizes with random weights (T5-base, the 1.06B DiT, the 157M Oobleck), for benchmarks."""
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 128
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                                           num_heads=12, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderOobleck()  # the defaults are the real model's
    _audible_decoder(vae)
    return dict(
        vae=vae, text_encoder=text_encoder,
        projection_model=StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0,
                                                    max_value=512),
        tokenizer=tokenizer,
        transformer=StableAudioDiTModel(),  # the defaults are the real model's
        scheduler=CosineDPMSolverMultistepScheduler(
            sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
            prediction_type="v_prediction", rho=7.0, final_sigmas_type="zero",
        ),
    )


def build_pipeline(components: dict) -> StableAudioPipeline:
    pipe = StableAudioPipeline(**components)
    for part in (pipe.vae, pipe.text_encoder, pipe.projection_model, pipe.transformer):
        part.eval()
    return pipe


def build(out_dir: Path) -> Path:
    pipe = build_pipeline(tiny_components())
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    params = sum(p.numel() for m in (pipe.vae, pipe.text_encoder, pipe.projection_model, pipe.transformer)
                 for p in m.parameters())
    StableAudioPipeline.from_pretrained(out_dir)  # it must load back offline
    return report(out_dir, params)


if __name__ == "__main__":
    sys.exit(fixture_main(build, DEFAULT_OUT, __doc__))

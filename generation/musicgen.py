"""MusicGen through Hugging Face transformers: load once, generate batches, continue audio.

transformers' own `generate` runs the decoder (KV cache, guidance); `RowSampler` draws the tokens, each row from
its own seed, and ends the call after the last step. Un-delaying and EnCodec decoding happen here, one job at a
time at that job's own length, so a job's audio does not depend on what shared its batch.

`MusicGenBase` holds what MusicGen and MusicGen-melody (`generation/melody.py`) share: loading, the seeded model
call with per-row delay patterns, and per-job decoding. `MusicGenBackend` adds text batches and continuation.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Self

import numpy as np
import torch

from generation.backend import GenerationCancelled, ModelLoadError
from generation.hub import hub_load_options
from generation.out_of_memory import as_out_of_memory, is_out_of_memory
from generation.sampling import RowSampler, SamplingFinished
from generation.types import DELAY_STEPS, Audio, GenerationRequest, ProgressCallback, SamplingParams, tokens_for

log = logging.getLogger(__name__)

MAX_CALL_SECONDS = 30.0  # what MusicGen was trained on; longer targets are windowed continuations
LICENSES = {
    "facebook/musicgen": "CC-BY-NC-4.0 (weights); MIT (code)",
}


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype: str  # "float32" | "bfloat16" | "float16"


def choose_device(device: str = "auto", dtype: str = "auto") -> DeviceChoice:
    """CUDA when present; bf16 on the GPU, fp32 on the CPU unless bf16 is asked for."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "float32": "float32",
               "bfloat16": "bfloat16", "float16": "float16"}
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    elif dtype not in aliases:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    return DeviceChoice(device=device, dtype=aliases[dtype])


def describe_accelerator() -> tuple[str, str]:
    """torch's version and the device `auto` picks, in words (for `bot.py doctor`)."""
    if torch.cuda.is_available():
        return torch.__version__, torch.cuda.get_device_name(0)
    return torch.__version__, "cpu (no CUDA device found)"


def license_for(model_id: str) -> str:
    for prefix, text in LICENSES.items():
        if model_id.startswith(prefix):
            return text
    return "see the model card"


def explain_load_error(model_id: str, error: BaseException, *, kind: str = "MusicGen", setting: str = "BANDMATE_MODEL",
                       example: str = "facebook/musicgen-small") -> str:
    """What went wrong and what to do, for the operator. `kind`, `setting`, `example` name the model family's terms."""
    text = str(error)
    local = os.path.isdir(model_id)
    if is_out_of_memory(error):
        return (f"Not enough memory to load {model_id}. Choose a smaller model ({setting}={example}) "
                "or run on the CPU (BANDMATE_DEVICE=cpu).")
    if local:
        return (f"The folder {model_id} does not hold a loadable {kind} checkpoint ({type(error).__name__}: "
                f"{text.splitlines()[0] if text else ''}). It needs config.json, the weights and the processor files "
                "as written by save_pretrained.")
    return (f"Could not load the model {model_id!r}: it is not in the local Hugging Face cache and could not be "
            "downloaded (offline, a wrong id, or the hub refused). On a machine with internet run "
            f"`python bot.py download {model_id}`, or set {setting} to a hub id such as {example} "
            f"or to a local folder. ({type(error).__name__}: {text.splitlines()[0] if text else ''})")


class MusicGenBase:
    """A loaded MusicGen-family model and the model call its backends share. `generate` calls are serialised by a
    lock; the scheduler makes them from one worker thread.

    Subclasses say how to load (`_load_pretrained`, `_explain_load_error`) and what a batch is (`_generate_batch`).
    """

    family = "musicgen"
    supports_continuation = False
    max_duration_s = MAX_CALL_SECONDS

    def __init__(self, model, processor, model_id: str, choice: DeviceChoice) -> None:
        self.model = model
        self.processor = processor
        # A processor (MusicGen) or a bare tokenizer (MusicGen-melody, whose feature extractor needs torchaudio).
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_id = model_id
        self.device = choice.device
        self.dtype = choice.dtype
        self.license = license_for(model_id)
        self.sample_rate = int(model.config.audio_encoder.sampling_rate)
        self.hop = int(np.prod(model.config.audio_encoder.upsampling_ratios))
        self.num_codebooks = int(model.decoder.num_codebooks)
        self.pad_token_id = int(model.generation_config.pad_token_id)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_id: str, *, device: str = "auto", dtype: str = "auto", compile: bool = False) -> Self:
        choice = choose_device(device, dtype)
        log.info("loading %s on %s (%s)", model_id, choice.device, choice.dtype)
        try:
            processor, model = cls._load_pretrained(model_id)
            model.to(choice.device)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes one message that says what to do
            raise ModelLoadError(cls._explain_load_error(model_id, error)) from error
        if choice.dtype != "float32":
            # The decoder, text encoder and conditioning projections run in half precision; EnCodec stays in fp32
            # for clean audio.
            half = getattr(torch, choice.dtype)
            model.text_encoder.to(half)
            model.decoder.to(half)
            for name in ("enc_to_dec_proj", "audio_enc_to_dec_proj"):
                if getattr(model, name, None) is not None:
                    getattr(model, name).to(half)
        model.eval()
        if compile:
            model.decoder.forward = torch.compile(model.decoder.forward, dynamic=True)
        return cls(model, processor, model_id, choice)

    @classmethod
    def _load_pretrained(cls, model_id: str):
        """(processor or tokenizer, model in fp32 on the CPU). Any exception becomes `_explain_load_error`'s text."""
        raise NotImplementedError

    @classmethod
    def _explain_load_error(cls, model_id: str, error: BaseException) -> str:
        return explain_load_error(model_id, error)

    # -- generation -------------------------------------------------------------------------------------------

    def generate(
        self,
        requests: list[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Audio]]:
        if not requests:
            return []
        sampling = requests[0].sampling
        if any(r.sampling != sampling for r in requests):
            raise ValueError("a batch must share sampling parameters")
        self._check_batch(requests)
        with self._lock:
            with as_out_of_memory():
                return self._generate_batch(requests, sampling, progress, should_stop)

    def _check_batch(self, requests: list[GenerationRequest]) -> None:
        """Raise ValueError for requests that cannot share one call (before the lock is taken)."""

    def _generate_batch(self, requests: list[GenerationRequest], sampling: SamplingParams,
                        progress: ProgressCallback | None, should_stop: Callable[[], bool] | None) -> list[list[Audio]]:
        raise NotImplementedError

    def _rows(self, requests: list[GenerationRequest]) -> tuple[list[str], list[int], list[int]]:
        texts, seeds, new_tokens = [], [], []
        for r in requests:
            for i in range(r.variations):
                texts.append(r.prompt)
                seeds.append(r.seed + i)
                new_tokens.append(tokens_for(r.duration_s))
        return texts, seeds, new_tokens

    def _run(self, texts, seeds, new_tokens, sampling: SamplingParams, *, prompt_codes, progress, should_stop,
             extra: dict | None = None):
        """One seeded `generate` call; each row's codes, un-delayed, (codebooks, frames). `extra`: more model inputs."""
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        rows, k = len(texts), self.num_codebooks
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
        start_len = 1 + prompt_frames  # BOS, then the audio prompt's frames
        total = max(new_tokens)
        row_lengths = [start_len + n for n in new_tokens]
        sampler = RowSampler(
            seeds=seeds, num_codebooks=k, sampling=sampling, total_steps=total, device=torch.device(self.device),
            progress=progress, should_stop=should_stop,
        )
        kwargs = dict(
            input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device),
            do_sample=False, guidance_scale=sampling.guidance if sampling.guidance > 1 else None,
            max_new_tokens=total, logits_processor=[sampler], top_k=None, top_p=None, temperature=None,
            **(extra or {}),
        )
        bos = torch.full((rows * k, 1), self.pad_token_id, dtype=torch.long, device=self.device)
        first = bos
        if prompt_codes is not None:
            kwargs["decoder_input_ids"] = prompt_codes.reshape(rows * k, prompt_frames)
            first = torch.cat([bos, kwargs["decoder_input_ids"]], dim=-1)
        pattern = self._row_patterns(first, row_lengths)
        decoder = self.model.decoder
        # generate masks the decoder's inputs with ONE delay pattern built for the longest row. A shorter row run
        # alone has padding at its own tail, which the codebooks still being filled see as input; give each row
        # its own pattern so its inputs, and so its audio, are exactly those of a run alone.
        decoder.apply_delay_pattern_mask = lambda ids, _mask: type(decoder).apply_delay_pattern_mask(ids, pattern)
        try:
            with torch.inference_mode():
                self.model.generate(**kwargs)
        except SamplingFinished:
            pass
        finally:
            del decoder.apply_delay_pattern_mask
        if sampler.sequences is None:
            raise GenerationCancelled("generation ended before its last step")
        seq = torch.where(pattern == -1, sampler.sequences, pattern).reshape(rows, k, -1)
        frames = []
        for row, n in enumerate(new_tokens):
            count = prompt_frames + n - DELAY_STEPS
            frames.append(torch.stack([seq[row, c, c + 1:c + 1 + count] for c in range(k)]))
        return frames

    def _row_patterns(self, first: torch.Tensor, row_lengths: list[int]) -> torch.Tensor:
        """Each row's own delay pattern (its own max length), padded with the pad token to the longest row."""
        k, longest = self.num_codebooks, max(row_lengths)
        patterns = []
        for row, length in enumerate(row_lengths):
            _, own = self.model.decoder.build_delay_pattern_mask(first[row * k:(row + 1) * k], self.pad_token_id,
                                                                  max_length=length)
            tail = torch.full((k, longest - length), self.pad_token_id, dtype=own.dtype, device=own.device)
            patterns.append(torch.cat([own, tail], dim=-1))
        return torch.cat(patterns, dim=0)

    def _decode_requests(self, requests, frames: list[torch.Tensor], prompt_frames: int) -> list[list[Audio]]:
        out, row = [], 0
        for r in requests:
            codes = torch.stack(frames[row:row + r.variations])  # (variations, codebooks, frames)
            row += r.variations
            with torch.inference_mode():
                values = self.model.audio_encoder.decode(codes[None], [None] * r.variations).audio_values
            audio = values.float().cpu().numpy()[:, 0, :]
            wanted = prompt_frames * self.hop + round(r.duration_s * self.sample_rate)
            out.append([Audio(a[None, :wanted].copy(), self.sample_rate) for a in audio])
        return out


class MusicGenBackend(MusicGenBase):
    """One loaded MusicGen model: text-to-music batches and continuation batches."""

    family = "musicgen"
    supports_continuation = True

    @classmethod
    def _load_pretrained(cls, model_id: str):
        from transformers import AutoProcessor, MusicgenForConditionalGeneration

        options = hub_load_options(model_id)  # a hub id that cannot be fetched fails here, in one line
        processor = AutoProcessor.from_pretrained(model_id, **options)
        # The default attention is SDPA wherever the sub-model supports it (EnCodec has none).
        model = MusicgenForConditionalGeneration.from_pretrained(model_id, dtype=torch.float32, **options)
        return processor, model

    def _check_batch(self, requests: list[GenerationRequest]) -> None:
        prompts = [r for r in requests if r.audio_prompt is not None]
        if prompts and len(prompts) != len(requests):
            raise ValueError("text and continuation requests cannot share a batch")

    def _generate_batch(self, requests, sampling, progress, should_stop) -> list[list[Audio]]:
        if requests[0].audio_prompt is not None:
            return self._continue(requests, sampling, progress, should_stop)
        return self._generate_text(requests, sampling, progress, should_stop)

    def _generate_text(self, requests, sampling, progress, should_stop) -> list[list[Audio]]:
        texts, seeds, new_tokens = self._rows(requests)
        codes = self._run(texts, seeds, new_tokens, sampling, prompt_codes=None, progress=progress,
                          should_stop=should_stop)
        return self._decode_requests(requests, codes, prompt_frames=0)

    def _continue(self, requests, sampling, progress, should_stop) -> list[list[Audio]]:
        lengths = {r.audio_prompt.samples.shape[-1] for r in requests}
        if len(lengths) != 1:
            raise ValueError("continuation requests in one batch need audio prompts of one length")
        prompt_audio = []
        for r in requests:
            mono = self._prompt_samples(r.audio_prompt)
            prompt_audio.extend([mono] * r.variations)
        values = torch.from_numpy(np.stack(prompt_audio)[:, None, :]).to(self.device, torch.float32)
        with torch.inference_mode():
            encoded = self.model.audio_encoder.encode(values, bandwidth=None)
        codes = encoded.audio_codes[0]  # (rows, codebooks, frames)
        texts, seeds, new_tokens = self._rows(requests)
        sequences = self._run(texts, seeds, new_tokens, sampling, prompt_codes=codes, progress=progress,
                              should_stop=should_stop)
        generated = self._decode_requests(requests, sequences, prompt_frames=codes.shape[-1])
        out = []
        for r, variations in zip(requests, generated):
            out.append([self._stitch(r.audio_prompt, self._prompt_samples(r.audio_prompt), v) for v in variations])
        return out

    def _prompt_samples(self, audio: Audio) -> np.ndarray:
        """The prompt as mono at the model's rate, cut at the start to whole EnCodec frames."""
        if audio.sample_rate != self.sample_rate:
            raise ValueError(f"audio prompt must be at {self.sample_rate} Hz")
        mono = audio.samples.mean(axis=0).astype(np.float32)
        usable = (mono.shape[-1] // self.hop) * self.hop
        return mono[mono.shape[-1] - usable:]

    def _stitch(self, original: Audio, prompt: np.ndarray, decoded: Audio) -> Audio:
        """The user's own audio, then the model's continuation, joined by a short crossfade.

        The model's output starts with its EnCodec rendering of the prompt; the original is kept instead, so a
        continuation never degrades what came before.
        """
        head = original.samples.mean(axis=0).astype(np.float32)
        lead = head.shape[-1] - prompt.shape[-1]  # samples cut before the prompt to whole frames
        body = decoded.samples[0]
        tail = body[prompt.shape[-1]:]
        fade = min(int(0.04 * self.sample_rate), prompt.shape[-1], tail.shape[-1] or 1)
        joined = np.concatenate([head, tail])
        if fade > 0 and prompt.shape[-1] >= fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            start = lead + prompt.shape[-1] - fade
            joined[start:start + fade] = head[start:start + fade] * (1 - ramp) + body[prompt.shape[-1] - fade:prompt.shape[-1]] * ramp
        return Audio(joined[None, :], self.sample_rate)

"""ACE-Step 1.5 through diffusers' `AceStepPipeline`: songs with sung lyrics, repaint, covers, stems, a part added
to a track (lego) and a part completed into a whole arrangement (complete); 48 kHz stereo.

Why it looks the way it does:

- One pipeline call per batch. The pipeline takes lists of prompts, lyrics and languages and one generator per row
  (each row's starting noise comes from its own CPU generator seeded with seed + variation); everything else
  (duration, bpm, key, time signature, task, repaint range, cover strength, reference) is one value per call, which
  is what `ace_requests.batch_key` groups by. Variations of one request come out exactly as they would alone. Rows of
  different prompts or lyrics are padded to the longest, and diffusers 0.42's DiT cross-attends without the padding
  mask, so such a row differs slightly from its solo take (a few thousandths of full scale on the tiny fixture);
  `batch_key(request, strict=True)` groups only identical texts when that matters.
- Stems of one track share a call too: the pipeline writes one task instruction for all rows, so for `extract` each
  row's prompt is formatted with its own stem's instruction (`_per_row_instructions`).
- Source and reference audio are encoded from the autoencoder's posterior mean rather than a random sample (the
  pipeline samples from the global RNG): the same request gives the same audio whatever else ran before.
- The pipeline returns latents and the backend decodes them itself: the pipeline would normalise every row to
  -1 dBFS, which is right for a new song or a cover (done here too) but wrong for a repaint, which must keep the
  source's level, and for stems, whose levels must add up to the mix.
- Repaint is spliced into the source (generation/ace_audio.py): outside the range the result is the source, sample
  for sample, at the source's own rate.
- bf16 on the GPU for the networks, fp32 for the autoencoder (its decoder is where precision shows); fp32 on the CPU.
  Turbo checkpoints have guidance distilled in: 8 steps, no classifier-free guidance. Base/SFT checkpoints: 50 steps,
  guidance 7 (APG).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch

from generation.ace_audio import (
    anti_clip, fit_length, pad_to_multiple, peak_normalise, repaint_bounds, splice_repaint, stems_with_other,
    to_model_audio,
)
from generation.ace_requests import (
    DEFAULT_STEMS, OTHER_STEM, AceRequest, AceRequestError, AceTask, batch_key, check_request, from_generation_request,
    resolved_duration,
)
from generation.ace_step_facts import (  # noqa: F401 - the family's facts, re-exported for callers of this module
    BASE_GUIDANCE, BASE_STEPS, DEFAULT_MODEL, FAMILY, LICENSE, MAX_DURATION_S, PIPELINE_CLASS, SAMPLE_RATE,
    TURBO_STEPS, is_ace_step, license_for, model_facts,
)
from generation.backend import GenerationCancelled, ModelLoadError
from generation.musicgen import DeviceChoice, choose_device
from generation.out_of_memory import as_out_of_memory, is_out_of_memory
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback

log = logging.getLogger(__name__)

SHIFT = 3.0  # the pipeline's (and the turbo model's) timestep shift
NO_CONTINUATION = "ACE-Step can't continue audio; ask for a song of the length you want, or replace a part of it."
TASKS = frozenset(AceTask)

AnyRequest = Union[AceRequest, GenerationRequest]


def explain_load_error(model_id: str, error: BaseException) -> str:
    """What went wrong and what to do, for the operator."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if is_out_of_memory(error):
        return (f"Not enough memory to load {model_id} (ACE-Step 1.5 turbo is about 4.5B parameters: about 9 GB in "
                "bf16 on a GPU, twice that in fp32). Free the GPU, or run on the CPU (BANDMATE_DEVICE=cpu).")
    if os.path.isdir(model_id):
        return (f"The folder {model_id} does not hold a loadable ACE-Step pipeline ({type(error).__name__}: {first}). "
                "It needs model_index.json and the component folders (vae, text_encoder, tokenizer, transformer, "
                "condition_encoder, scheduler, and audio_tokenizer + audio_token_detokenizer for covers) as written by "
                "AceStepPipeline.save_pretrained.")
    return (f"Could not load {model_id!r}: it is not in the local Hugging Face cache and could not be downloaded "
            f"(offline, a wrong id, or the hub refused). On a machine with internet run `python bot.py download "
            f"{model_id}`, or set BANDMATE_MODEL to an ACE-Step 1.5 diffusers checkpoint such as {DEFAULT_MODEL}. "
            f"({type(error).__name__}: {first})")


class AceStepBackend:
    """One loaded ACE-Step pipeline. `generate` calls are serialised by a lock (one model thread calls them)."""

    family = FAMILY
    license = LICENSE
    supports_continuation = False
    no_continuation_message = NO_CONTINUATION
    tasks = TASKS
    supports_lyrics = True

    def __init__(self, pipe, model_id: str, choice: DeviceChoice) -> None:
        self.pipe = pipe
        self.model_id = model_id
        self.device = choice.device
        self.dtype = choice.dtype
        self.sample_rate = int(pipe.sample_rate)
        self.channels = int(pipe.vae.config.audio_channels)
        self.hop = int(round(pipe.sample_rate / pipe.latents_per_second))
        self.max_duration_s = MAX_DURATION_S
        self.is_turbo = bool(pipe.is_turbo)
        self.default_steps = TURBO_STEPS if self.is_turbo else BASE_STEPS
        self.default_guidance = 1.0 if self.is_turbo else BASE_GUIDANCE
        self.supports_cover = pipe.audio_tokenizer is not None and pipe.audio_token_detokenizer is not None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_id: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto", compile: bool = False,
             cpu_offload: bool = False) -> "AceStepBackend":
        """Load a pipeline folder or hub id. cpu_offload (GPU only, needs the accelerate package) keeps each network
        on the CPU until its turn: about the largest network's memory on the GPU instead of all of them."""
        choice = choose_device(device, dtype)
        log.info("loading %s on %s (%s)", model_id, choice.device, choice.dtype)
        try:
            from diffusers import AceStepPipeline

            pipe = AceStepPipeline.from_pretrained(
                model_id, dtype={"default": getattr(torch, choice.dtype), "vae": torch.float32})
            if cpu_offload and choice.device.startswith("cuda"):
                pipe.enable_model_cpu_offload()
            else:
                pipe.to(choice.device)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes one message that says what to do
            if cpu_offload and "accelerate" in str(error).lower():
                raise ModelLoadError("CPU offload needs the accelerate package: pip install accelerate") from error
            raise ModelLoadError(explain_load_error(model_id, error)) from error
        pipe.set_progress_bar_config(disable=True)
        pipe.vae.enable_tiling()  # long songs decode in overlapping windows instead of all at once
        if compile:
            pipe.transformer.forward = torch.compile(pipe.transformer.forward)
        backend = cls(pipe, model_id, choice)
        log.info("%s: %s, %d steps, covers %s", model_id, "turbo" if backend.is_turbo else "base",
                 backend.default_steps, "yes" if backend.supports_cover else "no (no audio tokenizer)")
        return backend

    # -- generation -------------------------------------------------------------------------------------------

    def prepare(self, request: AnyRequest) -> AceRequest:
        """The request as a checked AceRequest (lyrics cleaned); AceRequestError says what this model cannot do."""
        ace = request if isinstance(request, AceRequest) else from_generation_request(request)
        ace = check_request(ace, self.max_duration_s)
        if ace.task is AceTask.COVER and not self.supports_cover:
            raise AceRequestError(f"{self.model_id} has no audio tokenizer, so it cannot make covers")
        return ace

    def generate(self, requests: list[AnyRequest], *, progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[list[Audio]]:
        """All rows of all requests in one pipeline call. Per request: one Audio per variation, or for `extract`
        one Audio per stem in the order of `request.stems`."""
        if not requests:
            return []
        ace = [self.prepare(r) for r in requests]
        keys = {batch_key(r) for r in ace}
        if len(keys) > 1:
            raise ValueError("these ACE-Step requests cannot share a call (batch_key differs)")
        with self._lock:
            with as_out_of_memory():
                return self._generate_batch(ace, progress, should_stop)

    def _generate_batch(self, requests: list[AceRequest], progress: ProgressCallback | None,
                        should_stop: Callable[[], bool] | None) -> list[list[Audio]]:
        head = requests[0]
        task = head.task
        duration = resolved_duration(head, self.max_duration_s)
        sources = [None if r.source is None else to_model_audio(r.source.samples, r.source.sample_rate,
                                                                self.sample_rate, self.channels) for r in requests]
        prompts, lyrics, languages, seeds, instructions, row_sources = [], [], [], [], [], []
        for r, source in zip(requests, sources):
            names = r.model_stems if task is AceTask.EXTRACT else [None] * r.variations
            for i, stem in enumerate(names):
                prompts.append(r.prompt)
                lyrics.append(r.lyrics)
                languages.append(r.language or "en")
                seeds.append(r.seed + (0 if stem else i))
                instructions.append(self.pipe._get_task_instruction(task_type=task.value, track_name=stem))
                row_sources.append(source)
        steps = int(head.steps or self.default_steps)
        guidance = self.default_guidance if head.guidance is None else float(head.guidance)
        kwargs: dict[str, Any] = dict(
            prompt=prompts, lyrics=lyrics, vocal_language=languages, audio_duration=duration,
            num_inference_steps=steps, guidance_scale=guidance, shift=SHIFT, output_type="latent",
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            bpm=head.bpm, keyscale=head.key or None, timesignature=head.time_signature or None, task_type=task.value,
        )
        if task is not AceTask.TEXT2MUSIC:
            kwargs["src_audio"] = self._source_tensor(row_sources)
        if task is AceTask.REPAINT:
            kwargs.update(repainting_start=float(head.start_s), repainting_end=float(head.end_s))
        if task is AceTask.COVER:
            kwargs["audio_cover_strength"] = head.cover_strength
        if task is AceTask.LEGO:
            kwargs["track_name"] = head.instruments[0]
        if task is AceTask.COMPLETE and head.instruments:
            kwargs["complete_track_classes"] = list(head.instruments)
        if head.reference is not None:
            ref = to_model_audio(head.reference.samples, head.reference.sample_rate, self.sample_rate, self.channels)
            kwargs["reference_audio"] = torch.from_numpy(ref)  # the pipeline moves it to its device
        kwargs.update(self._step_callback(steps, progress, should_stop))
        log.debug("ace-step %s: %d rows, %.1f s, %d steps, guidance %g", task.value, len(prompts), duration, steps,
                  guidance)
        with self._mean_encoder(), self._per_row_instructions(instructions if task is AceTask.EXTRACT else None):
            with torch.inference_mode():
                latents = self.pipe(**kwargs).audios
                decoded = self._decode(latents)
        return self._finish(requests, sources, decoded, duration)

    def _source_tensor(self, row_sources: list[np.ndarray]) -> torch.Tensor:
        """(channels, frames) when every row shares one source (the pipeline repeats it), else (rows, channels,
        frames); padded to whole latent frames. The pipeline moves it to its device."""
        if all(s is row_sources[0] for s in row_sources):
            return torch.from_numpy(pad_to_multiple(row_sources[0], self.hop))
        return torch.from_numpy(np.stack([pad_to_multiple(s, self.hop) for s in row_sources]))

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """(rows, latent frames, channels) -> float32 (rows, channels, samples), without the pipeline's
        normalisation. On the CPU one row at a time: the tiled autoencoder decoded 4 rows of 60 s in 31-33 s at
        once against 3-5 s a row alone (bench/generate.py --family ace-step --quick); on a GPU all rows at once."""
        vae = self.pipe.vae
        rows = [latents] if str(self.device).startswith("cuda") else list(latents.split(1))
        audio = torch.cat([vae.decode(r.transpose(1, 2).to(vae.dtype)).sample.float().cpu() for r in rows])
        self.pipe.maybe_free_model_hooks()
        return audio.numpy()

    def _finish(self, requests: list[AceRequest], sources: list[np.ndarray | None], decoded: np.ndarray,
                duration: float) -> list[list[Audio]]:
        out: list[list[Audio]] = []
        row = 0
        for r, source in zip(requests, sources):
            rows = decoded[row:row + r.rows]
            row += r.rows
            if r.task is AceTask.REPAINT:
                out.append([self._spliced(r, x) for x in rows])
            elif r.task is AceTask.LEGO:  # a part for its context: the model's own level, mixed in by the caller
                frames = source.shape[-1]
                out.append([Audio(anti_clip(fit_length(x, frames)).astype(np.float32), self.sample_rate)
                            for x in rows])
            elif r.task is AceTask.EXTRACT:
                frames = source.shape[-1]
                stems = {name: fit_length(x, frames) for name, x in zip(r.model_stems, rows)}
                parts = stems_with_other(source, stems, OTHER_STEM in r.stems)
                out.append([Audio(parts[name], self.sample_rate) for name in r.stems])
            else:
                frames = source.shape[-1] if source is not None else int(round(duration * self.sample_rate))
                out.append([Audio(peak_normalise(anti_clip(fit_length(x, frames))).astype(np.float32),
                                  self.sample_rate) for x in rows])
        return out

    def _spliced(self, request: AceRequest, generated: np.ndarray) -> Audio:
        """The repaint at the source's own rate and channels, the source kept exactly outside the range."""
        original = np.asarray(request.source.samples, dtype=np.float32)
        if original.ndim == 1:
            original = original[None, :]
        rate = request.source.sample_rate
        gen = to_model_audio(generated, self.sample_rate, rate, original.shape[0])
        gen = fit_length(gen, original.shape[-1])
        start, end = repaint_bounds(request.start_s, request.end_s, original.shape[-1], rate)
        fade = int(round(request.crossfade_s * rate))
        return Audio(splice_repaint(original, gen, start, end, fade), rate)

    # -- pipeline hooks ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mean_encoder(self) -> Iterator[None]:
        """During a call, the autoencoder's posterior gives its mean instead of a sample from the global RNG."""
        vae = self.pipe.vae
        original = vae.encode

        def encode(x, return_dict: bool = True):
            output = original(x, return_dict=True)
            dist = output.latent_dist
            dist.sample = lambda generator=None: dist.mean
            return output if return_dict else (dist,)

        vae.encode = encode
        try:
            yield
        finally:
            del vae.encode

    @contextlib.contextmanager
    def _per_row_instructions(self, instructions: list[str] | None) -> Iterator[None]:
        """Format row i's prompt with instructions[i] (the pipeline formats rows in order, one call per row)."""
        if instructions is None:
            yield
            return
        pipe = self.pipe
        original = type(pipe)._format_prompt
        counter = itertools.count()

        def format_prompt(*args, **kwargs):
            kwargs["instruction"] = instructions[next(counter) % len(instructions)]
            return original(pipe, *args, **kwargs)

        pipe._format_prompt = format_prompt
        try:
            yield
        finally:
            del pipe._format_prompt

    def _step_callback(self, steps: int, progress: ProgressCallback | None,
                       should_stop: Callable[[], bool] | None) -> dict[str, Any]:
        """Report each denoising step; stop the call (GenerationCancelled) when asked."""
        started = time.monotonic()

        def on_step_end(_pipe, index, _timestep, callback_kwargs):
            if progress is not None:
                progress(Progress(step=index + 1, total=steps, elapsed_s=time.monotonic() - started))
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"stopped after denoising step {index + 1} of {steps}")
            return callback_kwargs

        return {"callback_on_step_end": on_step_end}

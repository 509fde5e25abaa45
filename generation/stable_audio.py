"""Stable Audio Open through diffusers' `StableAudioPipeline`: text to 44.1 kHz stereo, and variations of a track.

Why it looks the way it does:

- The pipeline always denoises its whole window (`transformer.config.sample_size` latent frames, 47.55 s for
  stable-audio-open-1.0) and crops afterwards, so the cost of a call does not depend on the durations in it. Rows of
  different durations therefore share a call: each row is conditioned on its own end time (the pipeline takes one
  `audio_end_in_s` per call, so `encode_duration` is given the per-row list for the length of the call) and its
  audio is cropped here to its exact length, to the sample.
- Every row has its own CPU `torch.Generator` seeded with seed + variation, passed to the pipeline as a list (one per
  row; diffusers draws each row's initial noise, its init-audio latent sample and any SDE noise from that row's
  generator), so a job's audio does not depend on what shares its batch and a seed means the same noise on any
  device.
- Progress is reported and cancellation checked after every denoising step (the pipeline's step callback; raising
  `GenerationCancelled` from it ends the call).

Variations of an existing track (audio-to-audio): `GenerationRequest.init_audio` is resampled to 44.1 kHz stereo,
fitted to the window and encoded by the autoencoder; the pipeline adds the starting noise to that latent. At the
model's own noise level (`sigma_max` 500) the input is then buried and effectively ignored, so `strength` in [0, 1]
sets the scheduler's `sigma_max` on a log scale between ~1 (strength 0: noise about as large as the latents
themselves, the result keeps the input's broad shape and timing) and the model's default (strength 1: a new piece
that only shares the prompt). Lower strength also means the denoising starts from a lower noise level: the same
number of steps then refines rather than invents.

The real model is gated on the hub: its licence must be accepted there and HF_TOKEN set before the first download.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from generation.backend import GenerationCancelled, ModelLoadError
from generation.hub import hub_load_options
from generation.musicgen import DeviceChoice, choose_device
from generation.out_of_memory import as_out_of_memory, is_out_of_memory
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback

log = logging.getLogger(__name__)

FAMILY = "stable-audio"
LICENSE = "Stability AI Community License"
DEFAULT_MODEL = "stabilityai/stable-audio-open-1.0"
DEFAULT_STEPS = 100  # StableAudioPipeline's own default
DEFAULT_STRENGTH = 0.5  # init audio given without a strength
CLOSE_SIGMA = 1.0  # sigma_max at strength 0: noise about the size of the latents
NO_CONTINUATION = "Stable Audio can't continue audio; switch this server to MusicGen for that."


def license_for(model_id: str) -> str:
    """The licence to show for a Stable Audio model (doctor, /help, file tags)."""
    return LICENSE


def window_seconds(pipe) -> float:
    """Seconds the pipeline denoises in every call: latent frames times samples per frame."""
    return pipe.transformer.config.sample_size * pipe.vae.hop_length / pipe.vae.config.sampling_rate


def sigma_for_strength(strength: float, default_sigma: float, sigma_min: float) -> float:
    """The scheduler's starting noise for a variation: log-linear from ~1 (strength 0) to the model's default (1)."""
    strength = min(max(float(strength), 0.0), 1.0)
    low = max(CLOSE_SIGMA, 2.0 * sigma_min)
    if default_sigma <= low:
        return default_sigma
    return math.exp(math.log(low) + strength * (math.log(default_sigma) - math.log(low)))


def explain_load_error(model_id: str, error: BaseException) -> str:
    """What went wrong and what to do, for the operator."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if is_out_of_memory(error):
        return (f"Not enough memory to load {model_id} (about 5 GB of weights in fp32, half that in fp16/bf16). "
                "Free the GPU or run on the CPU (BANDMATE_DEVICE=cpu).")
    if os.path.isdir(model_id):
        return (f"The folder {model_id} does not hold a loadable Stable Audio pipeline ({type(error).__name__}: "
                f"{first}). It needs model_index.json and the component folders (vae, transformer, text_encoder, "
                "tokenizer, projection_model, scheduler) as written by StableAudioPipeline.save_pretrained.")
    return (f"Could not load {model_id!r}: it is not in the local Hugging Face cache and could not be downloaded. "
            f"Stable Audio Open is a gated model: accept the licence on the model's hub page "
            f"(https://huggingface.co/{model_id}) while logged in, then set HF_TOKEN to an access token of that "
            f"account. To download ahead of time, on a machine with internet: `python bot.py download {model_id}`. "
            f"({type(error).__name__}: {first})")


class StableAudioBackend:
    """One loaded Stable Audio pipeline. `generate` calls are serialised by a lock (one model thread calls them)."""

    family = FAMILY
    license = LICENSE
    supports_continuation = False
    no_continuation_message = NO_CONTINUATION

    def __init__(self, pipe, model_id: str, choice: DeviceChoice) -> None:
        self.pipe = pipe
        self.model_id = model_id
        self.device = choice.device
        self.dtype = choice.dtype
        self.license = license_for(model_id)
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        self.channels = int(pipe.vae.config.audio_channels)
        self.window_s = window_seconds(pipe)
        self.window_samples = int(pipe.transformer.config.sample_size) * int(pipe.vae.hop_length)
        limit = min(self.window_s, float(pipe.projection_model.config.max_value))
        # Whole seconds: 47 s for stable-audio-open-1.0 (its window is 47.55 s), as its model card states.
        self.max_duration_s = float(math.floor(limit)) if limit >= 1.0 else limit
        self.default_steps = DEFAULT_STEPS
        # A fresh scheduler per call (its sigma_max depends on the strength); the loaded one is the template.
        self._scheduler_class = type(pipe.scheduler)
        self._scheduler_config = dict(pipe.scheduler.config)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_id: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
             compile: bool = False) -> "StableAudioBackend":
        choice = choose_device(device, dtype)
        log.info("loading %s on %s (%s)", model_id, choice.device, choice.dtype)
        try:
            from diffusers import StableAudioPipeline
            from diffusers.utils import is_accelerate_available

            try:
                options = hub_load_options(model_id)
            except ModelLoadError as error:  # the download needs a token too: say so before the operator fetches it
                if "gated" in str(error):
                    raise
                raise ModelLoadError(f"{error} Stable Audio Open is a gated model: accept the licence on the model's "
                                     f"hub page (https://huggingface.co/{model_id}) while logged in, then set "
                                     "HF_TOKEN to an access token of that account.") from error
            pipe = StableAudioPipeline.from_pretrained(
                model_id, dtype=getattr(torch, choice.dtype), low_cpu_mem_usage=is_accelerate_available(), **options,
            )
            pipe.to(choice.device)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes one message that says what to do
            raise ModelLoadError(explain_load_error(model_id, error)) from error
        pipe.set_progress_bar_config(disable=True)
        for part in (pipe.vae, pipe.text_encoder, pipe.projection_model, pipe.transformer):
            part.eval()
        if compile:
            pipe.transformer.forward = torch.compile(pipe.transformer.forward)
        backend = cls(pipe, model_id, choice)
        log.info("%s: %.2f s window, up to %g s a call, %s scheduler", model_id, backend.window_s,
                 backend.max_duration_s, backend._scheduler_class.__name__)
        return backend

    # -- generation -------------------------------------------------------------------------------------------

    def generate(
        self,
        requests: list[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Audio]]:
        """All rows of all requests in one pipeline call; per request, one Audio (channels, samples) per variation."""
        if not requests:
            return []
        self._check_batch(requests)
        with self._lock:
            with as_out_of_memory():
                return self._generate_batch(requests, progress, should_stop)

    def _check_batch(self, requests: list[GenerationRequest]) -> None:
        """Raise ValueError for requests that cannot share one call (the scheduler never sends such a batch)."""
        head = requests[0]
        for r in requests:
            if r.sampling.guidance != head.sampling.guidance:
                raise ValueError("a batch must share its guidance")
            if (r.steps or self.default_steps) != (head.steps or self.default_steps):
                raise ValueError("a batch must share its number of steps")
            if (r.init_audio is None) != (head.init_audio is None):
                raise ValueError("text and audio-to-audio requests cannot share a batch")
            if r.init_audio is not None and self._strength(r) != self._strength(head):
                raise ValueError("audio-to-audio requests in one batch need one strength")
            if (r.negative_prompt is None) != (head.negative_prompt is None):
                raise ValueError("requests with and without a negative prompt cannot share a batch")
            if not 0 < r.duration_s <= self.max_duration_s + 1e-9:
                raise ValueError(f"{self.model_id} makes 0 to {self.max_duration_s:g} s a call, not {r.duration_s:g} s")
            if r.audio_prompt is not None:
                raise ValueError(NO_CONTINUATION)
            if r.steps is not None and r.steps < 1:
                raise ValueError("steps must be at least 1")

    @staticmethod
    def _strength(request: GenerationRequest) -> float:
        return DEFAULT_STRENGTH if request.strength is None else min(max(float(request.strength), 0.0), 1.0)

    def _generate_batch(self, requests: list[GenerationRequest], progress: ProgressCallback | None,
                        should_stop: Callable[[], bool] | None) -> list[list[Audio]]:
        head = requests[0]
        prompts, negatives, seeds, durations, inits = [], [], [], [], []
        for r in requests:
            init = None if r.init_audio is None else self._init_waveform(r.init_audio)
            for i in range(r.variations):
                prompts.append(r.prompt)
                negatives.append(r.negative_prompt)
                seeds.append(r.seed + i)
                durations.append(float(r.duration_s))
                inits.append(init)
        steps = int(head.steps or self.default_steps)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        sigma_max = float(self._scheduler_config["sigma_max"])
        kwargs: dict[str, Any] = {}
        if head.init_audio is not None:
            sigma_max = sigma_for_strength(self._strength(head), sigma_max, float(self._scheduler_config["sigma_min"]))
            waveforms = torch.from_numpy(np.stack(inits))
            kwargs["initial_audio_waveforms"] = waveforms.to(self.pipe.device, self.pipe.vae.dtype)
            kwargs["initial_audio_sampling_rate"] = self.sample_rate
        if head.negative_prompt is not None:
            kwargs["negative_prompt"] = negatives
        self.pipe.scheduler = self._scheduler_class.from_config(self._scheduler_config, sigma_max=sigma_max)
        kwargs.update(self._step_callback(steps, progress, should_stop))

        pipe = self.pipe
        # One end time per row for the duration conditioning; the call itself spans the whole window and is cropped
        # here, row by row, to the sample.
        pipe.encode_duration = lambda start, _end, *rest: type(pipe).encode_duration(pipe, start, durations, *rest)
        log.debug("stable audio: %d rows, %d steps, guidance %g, sigma_max %g", len(prompts), steps,
                  head.sampling.guidance, sigma_max)
        try:
            with torch.inference_mode():
                audios = pipe(
                    prompt=prompts, audio_start_in_s=0.0, audio_end_in_s=self.window_s, num_inference_steps=steps,
                    guidance_scale=float(head.sampling.guidance), num_waveforms_per_prompt=1, generator=generators,
                    output_type="pt", **kwargs,
                ).audios
        finally:
            del pipe.encode_duration
        samples = audios.float().cpu().numpy()
        out, row = [], 0
        for r in requests:
            length = round(r.duration_s * self.sample_rate)
            out.append([Audio(np.ascontiguousarray(samples[row + i, :, :length]), self.sample_rate)
                        for i in range(r.variations)])
            row += r.variations
        return out

    def _step_callback(self, steps: int, progress: ProgressCallback | None,
                       should_stop: Callable[[], bool] | None) -> dict[str, Any]:
        """Pipeline kwargs that report each denoising step and stop the call when asked.

        diffusers 0.42's StableAudioPipeline only has the older `callback(step, timestep, latents)` hook; newer
        pipelines name it `callback_on_step_end`, so take whichever this one has.
        """
        started = time.monotonic()

        def on_step(index: int) -> None:
            if progress is not None:
                progress(Progress(step=index + 1, total=steps, elapsed_s=time.monotonic() - started))
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"stopped after denoising step {index + 1} of {steps}")

        params = inspect.signature(type(self.pipe).__call__).parameters
        if "callback_on_step_end" in params:
            def on_step_end(_pipe, index, _timestep, callback_kwargs):
                on_step(index)
                return callback_kwargs

            return {"callback_on_step_end": on_step_end}
        return {"callback": lambda index, _timestep, _latents: on_step(index), "callback_steps": 1}

    def _init_waveform(self, audio: Audio) -> np.ndarray:
        """The track to vary as float32 (channels, window samples) at the model's rate, zero-padded or cut."""
        x = np.asarray(audio.samples, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if audio.sample_rate != self.sample_rate:
            import soxr

            x = np.ascontiguousarray(soxr.resample(x.T, audio.sample_rate, self.sample_rate).T, dtype=np.float32)
        if self.channels == 1:
            x = x.mean(axis=0, keepdims=True)
        elif x.shape[0] == 1:
            x = np.repeat(x, self.channels, axis=0)
        else:
            x = x[:self.channels]  # more channels than the model has: keep the front pair
        if x.shape[-1] > self.window_samples:
            log.info("init audio is %.1f s; the model sees its first %.1f s", x.shape[-1] / self.sample_rate,
                     self.window_s)
        out = np.zeros((self.channels, self.window_samples), dtype=np.float32)
        n = min(x.shape[-1], self.window_samples)
        out[:, :n] = x[:, :n]
        return out

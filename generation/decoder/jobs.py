"""A decoder job as its submitter sees it (the handle), and the engine's own per-job state."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from enum import Enum

import torch

from generation.backend import GenerationCancelled
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback, SamplingParams

_ids = itertools.count(1)


class DecodeState(str, Enum):
    QUEUED = "queued"
    PREFILL = "prefill"  # its audio prompt is being run through the decoder
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (DecodeState.DONE, DecodeState.CANCELLED, DecodeState.FAILED)


class DecodeHandle:
    """One submitted request: its state, progress and, once done, one Audio per variation (seeds seed..seed+n-1)."""

    def __init__(self, request: GenerationRequest, total_steps: int, progress: ProgressCallback | None,
                 submitted_step: int) -> None:
        self.id = next(_ids)
        self.request = request
        self.total_steps = total_steps
        self.step = 0
        self.state = DecodeState.QUEUED
        self.audio: list[Audio] | None = None
        self.codes: torch.Tensor | None = None  # (variations, codebooks, frames), un-delayed, prompt included
        self.error: BaseException | None = None
        self.submitted_step = submitted_step  # the decoder's step counter when submitted
        self.first_step: int | None = None  # ... when this job drew its first token
        self.submitted_at = time.monotonic()
        self.finished_at: float | None = None
        self.requeued = 0  # times it gave its slots back because the accelerator ran out of memory mid-step
        self._progress = progress
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def rows(self) -> int:
        return self.request.variations

    def cancel(self) -> None:
        """Ask the decoder to drop this job; its slots are freed at the next step."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> list[Audio]:
        """The audio (after the job is done); raises the job's error, or GenerationCancelled."""
        if self.state is DecodeState.CANCELLED:
            raise GenerationCancelled("the job was cancelled")
        if self.error is not None:
            raise self.error
        if self.audio is None:
            raise RuntimeError("the job has not finished")
        return self.audio

    # -- called by the engine -------------------------------------------------------------------------------

    def _requeued(self) -> None:
        """Back in the queue (its slots were needed when memory ran out): it starts again from its seed."""
        self.state = DecodeState.QUEUED
        self.step = 0
        self.requeued += 1

    def _report(self, step: int) -> None:
        self.step = step
        if self._progress is not None:
            self._progress(Progress(step, self.total_steps, time.monotonic() - self.submitted_at))

    def _finish(self, state: DecodeState, *, audio: list[Audio] | None = None, error: BaseException | None = None) -> None:
        self.state = state
        self.audio = audio
        self.error = error
        self.finished_at = time.monotonic()
        self._done.set()


@dataclass(eq=False)
class LiveJob:
    """What the engine holds for an admitted job: its slots, RNGs, delay pattern, tokens and position."""

    handle: DecodeHandle
    first_slot: int
    slots: int
    guided: bool
    params: SamplingParams
    generators: list[torch.Generator]
    pattern: torch.Tensor  # (slots, codebooks, length): pad/prompt values, -1 where tokens are drawn
    seq: torch.Tensor  # (slots, codebooks, length): the tokens as fed (pattern applied)
    prompt_frames: int
    steps: int  # tokens to draw
    prefix: int  # positions fed before the first draw (1 + prompt frames)
    prefilled: int = 0  # positions of the prefix already run
    drawn: int = 0
    next_pos: int = 0  # position of the next token to feed
    prompt_samples: object | None = None  # continuation: the prompt cut to whole frames (numpy)
    # MusicGen-melody: the chroma and text embeddings (rows, offset, D) fed before the BOS, at positions 0..offset-1
    prefix_embeds: torch.Tensor | None = None
    offset: int = 0  # decoder position of token 0 (the BOS)
    embeds_done: int = 0  # MusicGen-melody: decoder positions of the prefix (and BOS) already prefilled

    @property
    def first_row(self) -> int:
        return 2 * self.first_slot

    @property
    def rows(self) -> int:
        return self.slots * (2 if self.guided else 1)

    @property
    def prefilling(self) -> bool:
        return self.prefilled < self.prefix

    def prefill_mark(self) -> tuple:
        """Where its prefill stands; a step that runs out of memory puts it back there, so the step run again
        feeds exactly the same positions."""
        return self.prefilled, self.embeds_done, self.next_pos, self.prefix_embeds, self.handle.state

    def back_to(self, mark: tuple) -> None:
        self.prefilled, self.embeds_done, self.next_pos, self.prefix_embeds, self.handle.state = mark

    def inputs(self, start: int, end: int) -> torch.Tensor:
        """Fed tokens at positions start..end-1 for all rows: (rows, codebooks, end - start)."""
        tokens = self.seq[:, :, start:end]
        return tokens.repeat(2, 1, 1) if self.guided else tokens


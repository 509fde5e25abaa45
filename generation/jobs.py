"""Jobs as the scheduler sees them, and the small store protocol it persists them through.

`storage/` implements `JobStore` on SQLite; the engine never imports it. A job is a row before it is
anything else: the scheduler only ever works on jobs the store has accepted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Protocol

from generation.spec import JobSpec
from generation.types import SamplingParams


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class DeliveryState(str, Enum):
    """Delivery is a recorded step of its own: 'delivered' is a row, not a hope."""

    PENDING = "pending"  # nothing sent yet
    SENDING = "sending"  # recorded before the first byte goes out; a restart resends with the same nonce
    DELIVERED = "delivered"


class JobKind(str, Enum):
    """What the model call looks like. Only jobs of one kind share a batch."""

    TEXT = "text"  # text-to-music
    CONTINUE = "continue"  # audio prompt + text
    REMIX = "remix"  # a melody (chroma) + text, through the melody model
    SONG = "song"  # sections made one after another by continuation
    REPAINT = "repaint"  # ACE-Step: a range of the input audio made anew, the rest kept
    COVER = "cover"  # ACE-Step: the input audio remade in another style
    STEMS = "stems"  # ACE-Step: the input audio split into stems, one track each
    ADD_PART = "add_part"  # ACE-Step: one new part (an instrument) made to fit the input audio, mixed into it


class Operation(str, Enum):
    """What the user asked for; recorded as the track's lineage."""

    COMPOSE = "compose"
    VARIATION = "variation"
    CONTINUE = "continue"
    EXTEND = "extend"
    REMIX = "remix"
    MORE_LIKE = "more_like"
    REPLACE = "replace"  # a part of a track made anew (lineage: the parent and the range in the track's params)
    COVER = "cover"
    STEMS = "stems"
    ADD_PART = "add_part"  # a part (an instrument) added to a track (lineage: the parent and the part's name)


@dataclass(frozen=True)
class DeliveryAddress:
    """Which transport delivers a job (`sink`) and its own serialised delivery data, which only it reads.

    Each transport owns a typed delivery dataclass and turns it into and out of `fields` (JSON-serialisable);
    the engine and storage carry it without looking inside.
    """

    sink: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.fields, "sink": self.sink}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "DeliveryAddress":
        data = dict(data or {})
        sink = str(data.pop("sink", "") or "")
        return cls(sink=sink, fields=data)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Job:
    user_id: str
    prompt: str
    duration_s: float
    model: str
    kind: JobKind = JobKind.TEXT
    operation: Operation = Operation.COMPOSE
    variations: int = 1
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Continuation: a file in the file store holding the audio to continue (FLAC or WAV).
    input_audio: str | None = None
    parent_track_id: str | None = None
    guild_id: str | None = None
    channel_id: str | None = None
    # Where and how to deliver the result; opaque to the engine, read by the transport's delivery sink.
    delivery: DeliveryAddress = field(default_factory=DeliveryAddress)
    # Kind-specific parameters (song sections, blended tags, variation strength, chains...).
    spec: JobSpec = field(default_factory=JobSpec)
    idempotency_key: str | None = None
    id: str = field(default_factory=new_id)
    state: JobState = JobState.QUEUED
    delivery_state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def rows(self) -> int:
        """Sequences this job adds to a batch (guidance's doubling is not counted); stems: one per stem."""
        if self.kind is JobKind.STEMS:
            return max(1, len([s for s in self.spec.stems if s != "other"]) or 3)
        return self.variations


@dataclass
class TrackRecord:
    """One finished piece of audio with its files and provenance."""

    id: str
    job_id: str | None
    variation: int
    prompt: str
    seed: int
    model: str
    duration_s: float
    params: dict[str, Any]
    mp3: str
    png: str
    flac: str
    operation: Operation = Operation.COMPOSE
    parent_track_id: str | None = None
    user_id: str | None = None
    guild_id: str | None = None
    channel_id: str | None = None
    created_at: float = field(default_factory=time.time)


class JobStore(Protocol):
    """What the scheduler needs from persistence. Every method is a coroutine; writes are durable on return."""

    async def add_job(self, job: Job) -> Job:
        """Insert a job. With an idempotency key already known, return the existing job unchanged."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def job_by_key(self, idempotency_key: str) -> Job | None: ...

    async def unfinished_jobs(self) -> list[Job]:
        """Queued and running jobs, oldest first: what a restart must resume."""

    async def update_job(self, job: Job) -> None:
        """Write the job's state, attempts, error and timestamps."""

    async def record_spec(self, job: Job) -> None:
        """Write the job's spec (a chain's progress, generation/chain.py); other fields are left as they are."""

    async def complete_job(self, job: Job, tracks: list[TrackRecord]) -> None:
        """Store the tracks and mark the job done, in one transaction."""

    async def tracks_for_job(self, job_id: str) -> list[TrackRecord]: ...

    async def undelivered_jobs(self) -> list[Job]:
        """Finished jobs (done, failed or cancelled) whose delivery has not been recorded as delivered."""

    async def set_delivery_state(self, job_id: str, state: DeliveryState) -> None: ...

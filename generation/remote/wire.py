"""The Redis wire format of jobs and tracks: JSON that a bot and workers a version apart both understand.

A job travels without its delivery address: workers make audio, they never post it, so a transport's data (an
interaction token, say) never leaves the bot.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from generation.jobs import DeliveryState, Job, JobKind, JobState, Operation, TrackRecord
from generation.spec import JobSpec
from generation.types import SamplingParams

_JOB_FIELDS = {f.name for f in dataclasses.fields(Job)} - {"delivery"}
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
_TRACK_FIELDS = {f.name for f in dataclasses.fields(TrackRecord)}


def job_to_json(job: Job) -> str:
    data = {name: getattr(job, name) for name in _JOB_FIELDS}
    data["sampling"] = dataclasses.asdict(job.sampling)
    data["spec"] = job.spec.to_dict()
    for name in ("kind", "operation", "state", "delivery_state"):
        data[name] = getattr(job, name).value
    return json.dumps(data, sort_keys=True)


def job_from_json(text: str | bytes) -> Job:
    """Unknown keys are dropped, so a bot and workers of neighbouring versions still understand each other."""
    data = {k: v for k, v in json.loads(text).items() if k in _JOB_FIELDS}
    data["sampling"] = SamplingParams(**{k: v for k, v in (data.get("sampling") or {}).items()
                                         if k in _SAMPLING_FIELDS})
    data["spec"] = JobSpec.from_dict(data.get("spec"))
    data["kind"] = JobKind(data.get("kind", JobKind.TEXT.value))
    data["operation"] = Operation(data.get("operation", Operation.COMPOSE.value))
    data["state"] = JobState(data.get("state", JobState.RUNNING.value))
    data["delivery_state"] = DeliveryState(data.get("delivery_state", DeliveryState.PENDING.value))
    return Job(**data)


def track_to_dict(track: TrackRecord) -> dict[str, Any]:
    data = dataclasses.asdict(track)
    data["operation"] = track.operation.value
    return data


def track_from_dict(data: dict[str, Any]) -> TrackRecord:
    data = {k: v for k, v in data.items() if k in _TRACK_FIELDS}
    data["operation"] = Operation(data.get("operation", Operation.COMPOSE.value))
    return TrackRecord(**data)

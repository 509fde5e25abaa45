"""ACE-Step jobs as pipeline calls: each job becomes an `AceRequest` (its task from the job's kind, its words and
metadata from the spec, its source and reference audio from the file store), and each result's track details
(lyrics, sections as chapters, the repaint range, the stem) for rendering.

Why the runner groups again here: the scheduler batches ACE jobs by `ModelInfo.batch_key` (duration, metadata,
task range, reference), but two sources of different lengths, or two reference files, still cannot share one
pipeline call; jobs are split into groups of equal `ace_requests.batch_key` and each group is one call.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from generation.ace_audio import mix_in
from generation.ace_requests import DEFAULT_STEMS, AceRequest, AceTask, batch_key
from generation.jobs import Job, JobKind
from generation.lyrics import song_sections
from generation.types import Audio, Progress, ProgressCallback

log = logging.getLogger(__name__)

_TASKS = {JobKind.TEXT: AceTask.TEXT2MUSIC, JobKind.REPAINT: AceTask.REPAINT, JobKind.COVER: AceTask.COVER,
          JobKind.STEMS: AceTask.EXTRACT, JobKind.ADD_PART: AceTask.LEGO}
ACE_KINDS = frozenset(_TASKS)
# Cut from a stored, already finished master: rendered without a new loudness gain or fades, so a replace keeps
# every sample outside its range and stems add back up to the track they came from.
EDITS_OF_A_FINISHED_TRACK = frozenset({JobKind.REPAINT, JobKind.STEMS})


def runs_ace(backend) -> bool:
    """A backend that takes AceRequests (it sings lyrics and has tasks): ACE-Step's."""
    return bool(getattr(backend, "supports_lyrics", False)) and hasattr(backend, "tasks")


def ace_request(job: Job, load: Callable[[str], Audio]) -> AceRequest:
    """The job as ACE-Step asks for it. `load(rel)` reads a stored master (the job's input audio, its reference)."""
    if job.kind not in _TASKS:
        raise ValueError(f"ACE-Step does not run {job.kind.value} jobs")
    spec = job.spec
    task = _TASKS[job.kind]
    source = load(job.input_audio) if job.input_audio else None
    if task is AceTask.TEXT2MUSIC and source is not None:
        # A variation of a stored track (input audio + strength) is a cover of it.
        task = AceTask.COVER
    reference = load(spec.reference_audio) if spec.reference_audio else None
    start, end = spec.repaint if spec.repaint is not None else (None, None)
    strength = spec.cover_strength
    if strength is None and task is AceTask.COVER and spec.strength is not None:
        strength = 1.0 - float(spec.strength)  # a variation's strength: 0 stays close, 1 goes far
    duration = None if task is not AceTask.TEXT2MUSIC else job.duration_s
    return AceRequest(
        prompt=job.prompt, task=task, lyrics=spec.lyrics or "", language=spec.language or "en", duration_s=duration,
        bpm=spec.bpm, key=spec.key, variations=1 if task is AceTask.EXTRACT else job.variations, seed=job.seed,
        steps=spec.steps, source=source, start_s=start, end_s=end, strength=strength, reference=reference,
        stems=tuple(spec.stems) or DEFAULT_STEMS, instruments=(spec.part,) if spec.part else (),
    )


def ace_generate(backend, jobs: list[Job], load: Callable[[str], Audio], progress: ProgressCallback | None,
                 should_stop: Callable[[], bool] | None) -> dict[str, list[Audio]]:
    """The batch in as few pipeline calls as the requests allow; progress runs over all of them."""
    requests = [ace_request(j, load) for j in jobs]
    prepared = [backend.prepare(r) for r in requests]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(prepared):
        groups.setdefault(batch_key(r), []).append(i)
    out: dict[str, list[Audio]] = {}
    calls = list(groups.values())
    for n, members in enumerate(calls):
        def report(p: Progress, n: int = n) -> None:
            if progress is not None:
                progress(replace(p, step=n * p.total + p.step, total=len(calls) * p.total))

        results = backend.generate([prepared[i] for i in members], progress=report, should_stop=should_stop)
        for i, audios in zip(members, results):
            if prepared[i].task is AceTask.LEGO:  # the new part alone; the track is its source with the part in
                audios = [Audio(mix_in(prepared[i].source, a), a.sample_rate) for a in audios]
            out[jobs[i].id] = audios
    return out


def track_details(job: Job, index: int, audio: Audio) -> tuple[dict, list[tuple[float, str]] | None, str | None]:
    """What a finished ACE job's track `index` records beyond the usual: (params to add, chapters as (start_s,
    label) or None, a title or None). Lyrics go into the track's params (the user's data, erased by /forget),
    never into the MP3's tags."""
    spec = job.spec
    params: dict = {}
    chapters = None
    title = None
    if job.kind is JobKind.STEMS:
        stems = tuple(spec.stems) or DEFAULT_STEMS
        stem = stems[index] if index < len(stems) else f"stem{index}"
        params["stem"] = stem
        title = f"{job.prompt[:60]} — {stem}" if job.prompt else stem
        return params, None, title
    for name in ("language", "bpm", "key", "cover_strength", "part"):
        if getattr(spec, name) is not None:
            params[name] = getattr(spec, name)
    if spec.repaint is not None:
        params["replace"] = {"start_s": spec.repaint[0], "end_s": spec.repaint[1]}
    if spec.lyrics:
        params["lyrics"] = spec.lyrics
        seconds = audio.samples.shape[-1] / audio.sample_rate
        sections = song_sections(spec.lyrics, seconds, spec.bpm)
        if sections:
            params["sections"] = [{"name": s.kind, "label": s.label, "start_s": s.start_s, "end_s": s.end_s}
                                  for s in sections]
            chapters = [(s.start_s, s.label) for s in sections]
    return params, chapters, title

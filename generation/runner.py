"""Turns a batch of jobs into one model call, and each job's audio into stored, tagged files.

Split in two on purpose: `generate` holds the accelerator and runs in the single model thread; `render` (loudness,
MP3, FLAC, waveform) runs in other threads while the next batch is already generating.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import soundfile as sf

from generation import __version__, chain
from generation.backend import Backend
from generation.ace_audio import repaint_bounds
from generation.ace_jobs import ACE_KINDS, EDITS_OF_A_FINISHED_TRACK, ace_generate, runs_ace, track_details
from generation.continuation import WINDOW_SEED_STRIDE, ContinuationError, continue_audio
from generation.jobs import Job, JobKind, Operation, TrackRecord
from generation.postprocess import Provenance, render_track, write_wav_float
from generation.spec import ChorusMode
from generation.song import compose_song, sections_from_spec, song_layout
from generation.types import Audio, GenerationRequest, Progress, ProgressCallback

log = logging.getLogger(__name__)


class MediaStore(Protocol):
    """Where track files live (storage.files.FileStore): relative paths in rows, absolute ones on disk."""

    def path_for(self, track_id: str, ext: str) -> str: ...

    def absolute(self, rel: str) -> Path: ...


def track_id_for(job: Job, variation: int) -> str:
    """Deterministic, so a job generated twice after a crash overwrites its own files instead of leaking new ones."""
    return f"{job.id}v{variation}"


def load_master(path: Path, sample_rate: int) -> Audio:
    """Read a stored FLAC/WAV master (already at the model's rate: the upload guard resampled it)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        import soxr

        data = soxr.resample(data, rate, sample_rate)
    return Audio(np.ascontiguousarray(data.T), sample_rate)


class TrackSigning(Protocol):
    """Content Credentials for rendered files (generation/track_signing.py TrackSigner)."""

    def sign_tracks(self, job: Job, tracks: list[TrackRecord]) -> None: ...


class Watermarking(Protocol):
    """The optional watermark (generation/watermark.py AudioSealWatermarker)."""

    def embed(self, samples: np.ndarray, sample_rate: int, message: int | None = None) -> np.ndarray: ...


class JobRunner:
    def __init__(self, backend_for: Callable[[str], Backend], media: MediaStore, *,
                 signer: TrackSigning | None = None, watermark: Watermarking | None = None) -> None:
        """signer: signs every rendered MP3 and FLAC last, after tags and chapters. watermark: embeds the message
        a job carries (`spec.watermark`, set by the bot) into its audio in the model thread (torch work stays on one
        thread), before any encoding."""
        self.backend_for = backend_for
        self.media = media
        self.signer = signer
        self.watermark = watermark

    def generate(
        self,
        jobs: list[Job],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, list[Audio]]:
        """One model call for the batch (or a windowed continuation for one job). Runs in the model thread."""
        audios = self.made(jobs, progress=progress, should_stop=should_stop)
        return {job.id: self.finished(job, audios[job.id]) for job in jobs if job.id in audios}

    def made(self, jobs: list[Job], *, progress: ProgressCallback | None = None,
             should_stop: Callable[[], bool] | None = None,
             backend_for: Callable[[str], Backend] | None = None) -> dict[str, list[Audio]]:
        """The model's audio for the batch, before any watermark. `backend_for`: where the models come from, when
        not this runner's own (generation/slot_driver.py runs a continuation, song or remix in the decoder's shared
        slots by handing it backends that submit there)."""
        return self._generate(jobs, progress, should_stop, backend_for or self.backend_for)

    def finished(self, job: Job, audios: list[Audio]) -> list[Audio]:
        """What `made` gave, as delivered: watermarked, except a chain's helper window (the next window's input,
        not a delivered file). Torch work: call in the model thread."""
        return audios if chain.owner_of(job) else self.watermarked(job, audios)

    def watermarked(self, job: Job, audios: list[Audio]) -> list[Audio]:
        """The job's audio with the watermark it asks for (`spec.watermark`), wherever the audio was made."""
        if job.spec.watermark is None:
            return audios
        if self.watermark is None:
            log.warning("job %s asks for a watermark but BANDMATE_WATERMARK is off here; none embedded", job.id)
            return audios
        return [self._marked(job, a) for a in audios]

    def _marked(self, job: Job, audio: Audio) -> Audio:
        """The audio with the job's watermark. A replaced part is the only new audio of a replace: the rest is its
        source, which carries its own mark already, so only the range takes the new one and the rest stays exact."""
        marked = self.watermark.embed(audio.samples, audio.sample_rate, job.spec.watermark)
        if job.kind is JobKind.REPAINT and job.spec.repaint is not None:
            start, end = repaint_bounds(*job.spec.repaint, audio.samples.shape[-1], audio.sample_rate)
            kept = np.array(audio.samples, copy=True)
            kept[..., start:end] = marked[..., start:end]
            marked = kept
        return Audio(marked, audio.sample_rate)

    def _generate(self, jobs: list[Job], progress: ProgressCallback | None, should_stop: Callable[[], bool] | None,
                  backend_for: Callable[[str], Backend]) -> dict[str, list[Audio]]:
        if jobs[0].kind is JobKind.REMIX:  # --- REMIX: each job's input audio is its melody (generation/melody.py) ---
            return self._remix(jobs, progress, should_stop, backend_for)
        backend = backend_for(jobs[0].model)
        refusal = getattr(backend, "no_continuation_message", None)
        if jobs[0].kind in (JobKind.CONTINUE, JobKind.SONG) and not backend.supports_continuation and refusal:
            # --- STABLE AUDIO: a family that cannot continue audio says so, and what to do, in the user's terms ---
            raise ContinuationError(refusal)
        if runs_ace(backend) and jobs[0].kind in ACE_KINDS:  # --- ACE-STEP: songs, repaint, cover, stems ---
            return ace_generate(backend, jobs, lambda rel: load_master(self.media.absolute(rel), backend.sample_rate),
                                progress, should_stop)
        if jobs[0].kind is JobKind.CONTINUE:
            if len(jobs) != 1:
                raise ValueError("continuation jobs run one at a time")
            job = jobs[0]
            if not job.input_audio:
                raise ValueError("continuation job without input audio")
            source = load_master(self.media.absolute(job.input_audio), backend.sample_rate)
            # One window of a chain (generation/chain.py) or a whole continuation; window k draws from its own seed.
            seed = job.seed + (chain.window_index(job) - 1) * WINDOW_SEED_STRIDE
            pieces = continue_audio(backend, source, job.prompt, chain.window_add_s(job), variations=job.variations,
                                    seed=seed, sampling=job.sampling, progress=progress, should_stop=should_stop)
            return {job.id: pieces}
        if jobs[0].kind is JobKind.SONG:  # --- SONG: sections one after another (generation/song.py) ---
            if len(jobs) != 1:
                raise ValueError("song jobs run one at a time")
            return {jobs[0].id: self._compose(backend, jobs[0], progress, should_stop, backend_for)}
        requests = [self._request(j, backend) for j in jobs]
        results = backend.generate(requests, progress=progress, should_stop=should_stop)
        return {j.id: audios for j, audios in zip(jobs, results)}

    def text_request(self, job: Job, backend: Backend) -> GenerationRequest:
        """A TEXT job's request, for callers that run it themselves (generation/decoder_executor.py)."""
        return self._request(job, backend)

    def _request(self, job: Job, backend: Backend) -> GenerationRequest:
        """A TEXT job's request. --- STABLE AUDIO: steps, negative prompt and strength come from `job.spec`; a
        VARIATION of a stored track (`input_audio`) with a strength varies that audio (audio-to-audio). ---"""
        spec = job.spec
        init_audio = None
        if job.operation is Operation.VARIATION and job.input_audio and spec.strength is not None:
            init_audio = load_master(self.media.absolute(job.input_audio), backend.sample_rate)
        return GenerationRequest(
            prompt=job.prompt, duration_s=job.duration_s, variations=job.variations, seed=job.seed,
            sampling=job.sampling, steps=spec.steps, negative_prompt=spec.negative_prompt,
            init_audio=init_audio, strength=spec.strength,
        )

    def _compose(self, backend: Backend, job: Job, progress: ProgressCallback | None,
                 should_stop: Callable[[], bool] | None, backend_for: Callable[[str], Backend]) -> list[Audio]:
        """SONG: one whole song per variation (seed + i), progress over all of them. With `spec.chorus` MELODY a returning chorus follows the first one's melody through the melody model instead of repeating
        its audio."""
        sections = sections_from_spec(job.spec)
        melody = None
        if job.spec.chorus is ChorusMode.MELODY:
            from generation.melody import melody_backend  # imports torch: only where it is used

            melody = melody_backend(backend_for, job.spec.melody_model)
        songs = []
        for i in range(job.variations):
            def report(p: Progress, i: int = i) -> None:
                if progress is not None:
                    progress(replace(p, step=i * p.total + p.step, total=job.variations * p.total))

            songs.append(compose_song(backend, job.prompt, sections, seed=job.seed + i, sampling=job.sampling,
                                      progress=report, should_stop=should_stop, melody_backend=melody).audio)
        return songs

    def _window_master(self, job: Job, audio: Audio) -> TrackRecord:
        """A chain's helper window: its audio as it came from the model (float WAV: no loudness, no fades, no
        rounding), the next window's input. Not a track anyone sees; only `flac` (the master) is set."""
        track_id = track_id_for(job, 0)
        rel = self.media.path_for(track_id, "wav")
        path = self.media.absolute(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav_float(audio.samples, audio.sample_rate, path)
        return TrackRecord(id=track_id, job_id=job.id, variation=0, prompt=job.prompt, seed=job.seed, model=job.model,
                           duration_s=audio.samples.shape[-1] / audio.sample_rate, params={"window": True},
                           mp3="", png="", flac=rel, operation=job.operation, parent_track_id=job.parent_track_id,
                           user_id=job.user_id, guild_id=job.guild_id, channel_id=job.channel_id)

    def _remix(self, jobs: list[Job], progress: ProgressCallback | None, should_stop: Callable[[], bool] | None,
               backend_for: Callable[[str], Backend]) -> dict[str, list[Audio]]:
        """REMIX: one melody-model call; each job follows the chroma of its stored input audio (FLAC/WAV)."""
        from generation.melody import melody_backend  # imports torch: only where a remix runs

        backend = melody_backend(backend_for, jobs[0].model)
        requests = []
        for j in jobs:
            if not j.input_audio:
                raise ValueError("remix job without input audio")
            melody = load_master(self.media.absolute(j.input_audio), backend.sample_rate)
            requests.append(GenerationRequest(prompt=j.prompt, duration_s=j.duration_s, variations=j.variations,
                                              seed=j.seed, sampling=j.sampling, melody=melody))
        results = backend.generate(requests, progress=progress, should_stop=should_stop)
        return {j.id: audios for j, audios in zip(jobs, results)}

    def render(self, job: Job, audios: list[Audio]) -> list[TrackRecord]:
        """Write each variation's FLAC master, tagged MP3 and waveform; return the rows to store."""
        if chain.owner_of(job):
            return [self._window_master(job, audios[0])]
        backend = self.backend_for(job.model)
        tracks = []
        for i, audio in enumerate(audios):
            track_id = track_id_for(job, i)
            params = {"duration_s": job.duration_s, "variation": i, "kind": job.kind.value,
                      "operation": job.operation.value, **asdict(job.sampling)}
            if job.parent_track_id:
                params["parent_track_id"] = job.parent_track_id
            for key in ("steps", "negative_prompt", "strength"):  # --- STABLE AUDIO: diffusion settings ---
                if getattr(job.spec, key) is not None:
                    params[key] = getattr(job.spec, key)
            sections = None
            if job.kind is JobKind.SONG:  # --- SONG: lineage of every section, chapters, labelled waveform ---
                spans = song_layout(sections_from_spec(job.spec))
                params["sections"] = [{"name": s.name, "label": s.label, "start_s": s.start_s, "end_s": s.end_s}
                                      for s in spans]
                params["chorus"] = job.spec.chorus.value
                sections = [(s.start_s, s.label) for s in spans]
            title = None
            if job.kind in ACE_KINDS and runs_ace(backend):  # --- ACE-STEP: lyrics, chapters, range, stem ---
                extra, chapters, title = track_details(job, i, audio)
                params.update(extra)
                sections = sections or chapters
            provenance = Provenance(
                track_id=track_id, prompt=job.prompt, seed=job.seed + i, model_id=job.model,
                model_license=backend.license, params={k: v for k, v in params.items() if k != "lyrics"},
                software=f"bandmate {__version__}",
            )
            mp3_rel = self.media.path_for(track_id, "mp3")
            out_dir = self.media.absolute(mp3_rel).parent
            rendered = render_track(audio, provenance, out_dir, track_id, sections=sections, title=title,
                                    finish=job.kind not in EDITS_OF_A_FINISHED_TRACK)
            tracks.append(TrackRecord(
                id=track_id, job_id=job.id, variation=i, prompt=job.prompt, seed=job.seed + i, model=job.model,
                duration_s=rendered.duration_s, params=params, mp3=mp3_rel,
                png=self.media.path_for(track_id, "png"), flac=self.media.path_for(track_id, "flac"),
                operation=job.operation, parent_track_id=job.parent_track_id, user_id=job.user_id,
                guild_id=job.guild_id, channel_id=job.channel_id,
            ))
        if self.signer is not None:  # last: the manifest covers the tags and chapters written above
            self.signer.sign_tracks(job, tracks)
        return tracks

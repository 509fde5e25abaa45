"""Songs with words and what ACE-Step does to tracks: /song with lyrics, replacing a part of a track (thread replies
and `bot.py replace`), /cover, stems, and "sound like this" references.

Every `plan_*` here runs all its checks before anything is stored or queued (a Refusal says what is wrong, in the
user's terms); the job is made by the planner's `_new_job` and queued by its `submit`, like every other command.
Which model does the work is asked of `ModelInfo` (lyrics, repaint, cover, stems), never of a family's name: covers
and stems work on any track (the ACE-Step model remakes or splits its audio); only a repaint needs the track's
own model, because it regenerates the track from its own conditioning.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from bot.blocklist import blocked_phrase
from bot.grammar import apply_edit, parse_edit
from bot.planner import ComposeOptions, Plan, Planner
from bot.request import Refusal, Request, Upload, UploadInfo
from bot.words import clean_prompt, human_seconds
from generation.jobs import Job, JobKind, Operation, TrackRecord
from generation.lyrics import LyricsError, Section, clean_lyrics, describe_sections, estimate_duration, \
    replace_section_lines, song_sections
from generation.models import ModelInfo
from generation.postprocess import write_flac
from generation.replace_reply import ReplaceInstruction, ReplyError, check_range, parse_replace_reply
from generation.spec import JobSpec
from generation.types import SamplingParams
from generation.upload import AudioDecodeError, UploadLimits, decode_audio_bytes

ACE_RATE = 48_000  # uploads for covers, stems and references are stored at the model's rate, in stereo
_KEY = re.compile(r"^([A-Ga-g])\s*(#|b|♯|♭)?\s*(major|minor|maj|min|m)?$", re.IGNORECASE)
_LANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,4})?$")
MIN_BPM, MAX_BPM = 30, 300
_INLINE_TAG = re.compile(r"\s*(\[[^\[\]\n]{1,40}\])\s*")


@dataclass(frozen=True)
class SongOptions:
    """/song with words (or an instrumental): the style, the lyrics, and ACE-Step's song metadata."""

    prompt: str
    lyrics: str = ""
    language: str | None = None
    bpm: int | None = None
    key: str | None = None
    duration_s: float | None = None  # None: as long as the lyrics need (up to the server's longest song)
    variations: int = 1
    seed: int | None = None
    model: str | None = None


def inline_lyrics(text: str | None) -> str:
    """Lyrics typed on one line (a slash command option has no line breaks): each [tag] starts a new line and
    " / " breaks lines. Text that already has line breaks is kept as it is."""
    text = text or ""
    if "\n" in text:
        return text
    text = _INLINE_TAG.sub(lambda m: f"\n{m.group(1)}\n", text)
    return "\n".join(part.strip() for part in re.split(r"\s+/\s+|\n", text)).strip()


def normal_key(key: str | None) -> str | None:
    """ "c# min" -> "C# minor"; None for none; Refusal for what is not a key."""
    if key is None or not key.strip():
        return None
    match = _KEY.match(key.strip())
    if not match:
        raise Refusal(f"I don't know the key {key.strip()[:20]!r}; write it like `C major` or `F# minor`.")
    accidental = {"♯": "#", "♭": "b"}.get(match.group(2) or "", match.group(2) or "")
    mode = (match.group(3) or "major").lower()
    return f"{match.group(1).upper()}{accidental} {'minor' if mode in ('minor', 'min', 'm') else 'major'}"


def track_sections(track: TrackRecord) -> list[Section]:
    """A stored track's sections (from its lyrics, timed to its length); [] for an instrumental."""
    lyrics = track.params.get("lyrics") or ""
    bpm = track.params.get("bpm")
    return song_sections(lyrics, track.duration_s, bpm if isinstance(bpm, int) else None) if lyrics else []


class Vocals:
    """The ACE-Step requests; it plans through the planner's checks, job maker and submit."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.config = planner.config

    # -- which model ------------------------------------------------------------------------------------

    def _capable(self, ability: str, chosen: str | None = None) -> tuple[str, ModelInfo]:
        """The model that does `ability`: the one chosen, else the default, else the first offered that can."""
        info_for = self.planner.model_info
        candidates = [chosen] if chosen else list(self.planner.offered_models())
        for model in candidates:
            info = info_for(model)
            if getattr(info, ability):
                return model, info
        what = {"lyrics": "Songs with lyrics", "cover": "Covers", "stems": "Stems", "repaint": "Replacing a part",
                "parts": "Adding a part"}
        if chosen:
            name = chosen.rstrip("/").split("/")[-1]
            raise Refusal(f"{what[ability]} need an ACE-Step model; {name} can't do that.")
        raise Refusal(f"{what[ability]} need an ACE-Step model, and none is offered here (ask an admin to add one "
                      "to BANDMATE_MODELS).")

    def offers(self, ability: str) -> bool:
        """Whether an offered model can do `ability` (a `ModelInfo` field: lyrics, repaint, cover, stems, parts):
        e.g. 🎚 goes on every result where stems can be made, whichever model made the result."""
        return any(getattr(self.planner.model_info(m), ability, False) for m in self.planner.offered_models())

    # -- shared checks ----------------------------------------------------------------------------------

    async def _lyrics(self, request: Request, text: str | None) -> str:
        """Cleaned lyrics (control characters gone, within the limits), checked against the server's blocklist."""
        try:
            lyrics = clean_lyrics(inline_lyrics(text))
        except LyricsError as error:
            raise Refusal(str(error)) from None
        who = request.who
        if lyrics and who.guild_id and self.planner.server_settings is not None:
            entry = blocked_phrase(lyrics, (await self.planner.server_settings.get(who.guild_id)).blocklist)
            if entry is not None:
                raise Refusal(f"This server doesn't allow lyrics with \u201c{entry}\u201d. Try something else.")
        return lyrics

    async def _prompt(self, request: Request, prompt: str) -> str:
        """Presets, the server's channel rules and blocklist, the prompt's limits (as every command has)."""
        return (await self.planner.prepare(request.who, ComposeOptions(prompt=prompt))).prompt

    async def _longest(self, info: ModelInfo, guild_id: str | None) -> float:
        """The longest song (or source track) here: the bot's limit, the model's, and the server's own choice."""
        longest = min(self.config.max_song_s, info.max_duration_s or self.config.max_song_s)
        if guild_id and self.planner.server_settings is not None:
            chosen = (await self.planner.server_settings.get(guild_id)).max_song_s
            if chosen is not None:
                longest = min(longest, float(chosen))
        return longest

    async def _ready(self, request: Request, info: ModelInfo, parent: TrackRecord | None, doing: str) -> Plan | None:
        """The last checks of a job made from a stored track: its length here, then an earlier plan of the same
        request (returned: nothing new is queued), then the person's quota."""
        longest = await self._longest(info, request.who.guild_id)
        if parent is not None and parent.duration_s > longest + 1e-6:
            raise Refusal(f"That track is {human_seconds(parent.duration_s)} long; {doing} tracks of up to "
                          f"{human_seconds(longest)}.")
        existing = await self.planner._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        await self.planner.check_quota(request.who)
        return None

    # -- /song with lyrics ------------------------------------------------------------------------------

    async def plan_song(self, request: Request, opts: SongOptions, reference: UploadInfo | None = None) -> Plan:
        """A song sung from its lyrics (none: an instrumental), as long as the lyrics need unless a duration is
        given. `reference`: an upload whose sound the song takes."""
        prepared = await self.planner.prepare(request.who, ComposeOptions(prompt=opts.prompt, model=opts.model,
                                                                          variations=opts.variations))
        chosen = opts.model
        if chosen is None and prepared.model and self.planner.model_info(prepared.model).lyrics:
            chosen = prepared.model  # the server's default model, when it sings
        model, info = self._capable("lyrics", chosen)
        lyrics = await self._lyrics(request, opts.lyrics)
        if opts.bpm is not None and not MIN_BPM <= opts.bpm <= MAX_BPM:
            raise Refusal(f"The bpm must be between {MIN_BPM} and {MAX_BPM}.")
        key = normal_key(opts.key)
        language = (opts.language or "en").strip().lower()
        if not _LANGUAGE.match(language):
            raise Refusal("Give the language as a short code like `en`, `es`, `ja` or `pt-br`.")
        longest = await self._longest(info, request.who.guild_id)
        if opts.duration_s is not None:
            if not 1.0 <= opts.duration_s <= longest:
                raise Refusal(f"A song can be 1 s to {human_seconds(longest)} long here.")
            duration = float(opts.duration_s)
        else:
            duration = min(estimate_duration(lyrics, opts.bpm), longest)
        if reference is not None:
            self.planner.check_upload(reference)
        existing = await self.planner._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        await self.planner.check_quota(request.who)
        spec = JobSpec(lyrics=lyrics, language=language, bpm=opts.bpm, key=key)
        job = self.planner._new_job(request, prompt=prepared.prompt, duration_s=duration, model=model, seed=opts.seed,
                                    variations=prepared.variations, spec=spec)
        store = self._reference_store if reference is not None else None
        return Plan(request, job, store_upload=store)

    # -- replacing a part -------------------------------------------------------------------------------

    async def plan_replace(self, request: Request, track_id: str, text: str | None = None, *,
                           start_s: float | None = None, end_s: float | None = None, prompt: str | None = None,
                           lyrics: str | None = None) -> Plan:
        """A new track with one part of `track_id` made anew: from a reply (`text`: "redo the bridge",
        "replace 0:40-0:55 with a guitar solo", "change the second chorus to: <lines>") or from a range."""
        parent = await self.planner.track(track_id)
        info = self.planner.model_info(parent.model)
        if not info.repaint:
            name = parent.model.rstrip("/").split("/")[-1]
            raise Refusal(f"Only a track made by an ACE-Step model can have a part replaced (this one is by {name}, "
                          "which can't repaint). Try `/cover` to remake it, or a new `/song`.")
        sections = track_sections(parent)
        try:
            if text is not None:
                instruction = parse_replace_reply(text, parent.duration_s, sections)
            else:
                if start_s is None or end_s is None:
                    raise ReplyError("Give the start and the end of the part to replace.")
                start, end = check_range(float(start_s), float(end_s), parent.duration_s)
                instruction = ReplaceInstruction(start, end, None, prompt, None, lyrics)
        except ReplyError as error:
            hint = str(error)
            if sections and "sections:" not in hint:  # a range refused: say where the song's parts are
                hint += f" Its sections: {describe_sections(sections)}."
            raise Refusal(hint) from None
        new_prompt = parent.prompt
        if instruction.prompt:
            new_prompt = f"{parent.prompt}, {instruction.prompt}" if parent.prompt else instruction.prompt
        elif instruction.style:
            edit = parse_edit(instruction.style.lower())
            new_prompt = apply_edit(parent.prompt, edit) if edit else f"{parent.prompt}, {instruction.style}"
        new_prompt = await self._prompt(request, clean_prompt(new_prompt, self.config.max_prompt_chars))
        words = parent.params.get("lyrics") or ""
        if instruction.lyrics:
            words = self._new_words(words, sections, instruction, await self._lyrics(request, instruction.lyrics))
        existing = await self.planner._existing(request)
        if existing is not None:
            return Plan(request, None, existing=existing)
        await self.planner.check_quota(request.who)
        spec = JobSpec(lyrics=words, language=parent.params.get("language"), bpm=parent.params.get("bpm"),
                       key=parent.params.get("key"), repaint=(instruction.start_s, instruction.end_s))
        job = self.planner._new_job(request, prompt=new_prompt, duration_s=parent.duration_s, model=parent.model,
                                    kind=JobKind.REPAINT, operation=Operation.REPLACE, parent_track_id=parent.id,
                                    input_audio=parent.flac, spec=spec)
        return Plan(request, job, taste=(Operation.VARIATION.value, parent),
                    rate_limited=parent.user_id != request.who.user_id)  # one's own result: never held back

    @staticmethod
    def _new_words(lyrics: str, sections: list[Section], instruction: ReplaceInstruction, lines: str) -> str:
        """The song's lyrics with the replaced section's lines swapped (the section named, or the one the range
        overlaps most); without lyrics of its own, the new lines are the song's words."""
        if not lyrics or not sections:
            return lines
        target = next((s for s in sections if s.label == instruction.section), None)
        if target is None:
            overlap = [(min(s.end_s, instruction.end_s) - max(s.start_s, instruction.start_s), s) for s in sections]
            best, target = max(overlap, key=lambda pair: pair[0])
            if best <= 0:
                return lyrics
        try:
            return replace_section_lines(lyrics, target, lines)
        except LyricsError as error:
            raise Refusal(str(error)) from None

    async def plan_replace_upload(self, request: Request, upload: UploadInfo, *, start_s: float, end_s: float,
                                  prompt: str = "", lyrics: str | None = None) -> Plan:
        """`bot.py replace FILE` for a file that is not a stored track: the ACE-Step model repaints the range
        (checked against the file's length once it is decoded, before anything is queued)."""
        model, info = self._capable("repaint")
        self.planner.check_upload(upload)
        text = await self._prompt(request, prompt) if prompt.strip() else \
            clean_prompt(upload.filename, self.config.max_prompt_chars)
        words = await self._lyrics(request, lyrics)
        await self.planner.check_quota(request.who)
        job = self.planner._new_job(request, prompt=text, duration_s=0.0, model=model, kind=JobKind.REPAINT,
                                    operation=Operation.REPLACE,
                                    spec=JobSpec(lyrics=words, repaint=(float(start_s), float(end_s))))
        return Plan(request, job, store_upload=self._source_store(info))

    # -- covers and stems -------------------------------------------------------------------------------

    async def plan_cover(self, request: Request, style: str, *, track_id: str | None = None,
                         upload: UploadInfo | None = None, strength: float | None = None) -> Plan:
        """A track (any model's) or an upload remade in another style; strength 1 keeps its structure most."""
        if (track_id is None) == (upload is None):
            raise Refusal("Give either a track or an audio file to cover.")
        model, info = self._capable("cover")
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise Refusal("A cover's strength must be between 0 and 1.")
        prompt = await self._prompt(request, style)
        parent = await self.planner.track(track_id) if track_id else None
        if upload is not None:
            self.planner.check_upload(upload)
        earlier = await self._ready(request, info, parent, "a cover can be made of")
        if earlier is not None:
            return earlier
        words = (parent.params.get("lyrics") or "") if parent else ""
        spec = JobSpec(cover_strength=strength, lyrics=words,
                       language=parent.params.get("language") if parent else None)
        job = self.planner._new_job(request, prompt=prompt, duration_s=parent.duration_s if parent else 0.0,
                                    model=model, kind=JobKind.COVER, operation=Operation.COVER,
                                    parent_track_id=parent.id if parent else None,
                                    input_audio=parent.flac if parent else None, spec=spec)
        if parent is not None:
            return Plan(request, job, taste=(Operation.VARIATION.value, parent),
                        rate_limited=parent.user_id != request.who.user_id)
        return Plan(request, job, store_upload=self._source_store(info))

    async def plan_stems(self, request: Request, *, track_id: str | None = None,
                         upload: UploadInfo | None = None) -> Plan:
        """A track (any model's) or an upload split into stems: one MP3 each (vocals, drums, bass, other)."""
        if (track_id is None) == (upload is None):
            raise Refusal("Give either a track or an audio file to split into stems.")
        model, info = self._capable("stems")
        parent = await self.planner.track(track_id) if track_id else None
        if upload is not None:
            self.planner.check_upload(upload)
        earlier = await self._ready(request, info, parent, "stems can be made of")
        if earlier is not None:
            return earlier
        name = parent.prompt if parent else clean_prompt(upload.filename, self.config.max_prompt_chars)
        job = self.planner._new_job(request, prompt=name, duration_s=parent.duration_s if parent else 0.0, model=model,
                                    sampling=SamplingParams(guidance=info.default_guidance), kind=JobKind.STEMS,
                                    operation=Operation.STEMS, parent_track_id=parent.id if parent else None,
                                    input_audio=parent.flac if parent else None, spec=JobSpec(stems=info.stems))
        if parent is not None:
            return Plan(request, job, rate_limited=parent.user_id != request.who.user_id)
        return Plan(request, job, store_upload=self._source_store(info))

    async def plan_add_part(self, request: Request, track_id: str, part: str) -> Plan:
        """A part (an instrument) made for a track (any model's) and mixed into it: "add a guitar part"."""
        model, info = self._capable("parts")
        if part not in info.parts:
            raise Refusal(f"I can add {', '.join(p.replace('_', ' ') for p in info.parts)}; not {part}.")
        parent = await self.planner.track(track_id)
        earlier = await self._ready(request, info, parent, "parts can be added to")
        if earlier is not None:
            return earlier
        label = part.replace("_", " ")
        words = parent.params.get("lyrics")
        job = self.planner._new_job(request, prompt=f"{parent.prompt}, with {label}", duration_s=parent.duration_s,
                                    model=model, kind=JobKind.ADD_PART, operation=Operation.ADD_PART,
                                    parent_track_id=parent.id, input_audio=parent.flac,
                                    spec=JobSpec(part=part, lyrics=words, language=parent.params.get("language")))
        return Plan(request, job, taste=(Operation.VARIATION.value, parent),
                    rate_limited=parent.user_id != request.who.user_id)

    # -- uploads ----------------------------------------------------------------------------------------

    async def _decode_store(self, name: str, upload: Upload, longest: float) -> tuple[str, float]:
        """Decode (guarded) and store an upload as a 48 kHz stereo FLAC master; its path and seconds."""
        limits = UploadLimits(max_bytes=self.config.max_upload_bytes,
                              max_duration_s=min(self.config.max_upload_s, longest))
        try:
            audio = await asyncio.to_thread(decode_audio_bytes, upload.data, target_rate=ACE_RATE, channels=2,
                                            limits=limits, filename=upload.filename)
        except AudioDecodeError as error:
            raise Refusal(error.user_message) from None
        rel = self.planner.files.path_for(name, "flac")
        path = self.planner.files.absolute(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_flac, audio.samples, audio.sample_rate, path)
        return rel, audio.samples.shape[-1] / audio.sample_rate

    def _source_store(self, info: ModelInfo):
        async def store(job: Job, upload: Upload) -> None:
            rel, seconds = await self._decode_store(f"{job.id}in", upload,
                                                    await self._longest(info, job.guild_id))
            if job.kind is JobKind.REPAINT and job.spec.repaint is not None:
                try:
                    job.spec.repaint = check_range(*job.spec.repaint, seconds)
                except ReplyError as error:
                    self.planner.files.remove(rel)
                    raise Refusal(str(error)) from None
            job.input_audio, job.duration_s = rel, seconds

        return store

    async def _reference_store(self, job: Job, upload: Upload) -> None:
        job.spec.reference_audio, _ = await self._decode_store(f"{job.id}ref", upload, self.config.max_upload_s)

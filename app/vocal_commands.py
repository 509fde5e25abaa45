"""`bot.py compose --lyrics`, `replace`, `cover` and `stems`: ACE-Step requests through the core and the queue,
like every other one-shot job (app/commands.py's CommandLineTransport copies the files and prints the JSON)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Awaitable, Callable

from app.settings import Settings
from bot.core import Bandmate, Refusal, Request, SongOptions, Upload, UploadInfo
from bot.planner import Plan
from bot.text import plain
from generation.jobs import DeliveryAddress, TrackRecord

MakePlan = Callable[[Bandmate, Request], Awaitable[Plan]]


def vocal_fields(track: TrackRecord) -> dict:
    """What a track's JSON row adds for ACE-Step results: its lyrics and sections, or which stem it is."""
    extra: dict = {}
    if "lyrics" in track.params:
        extra["lyrics"] = track.params["lyrics"]
        extra["sections"] = track.params.get("sections", [])
    if "stem" in track.params:
        extra["stem"] = track.params["stem"]
    if "replace" in track.params:
        extra["replaced"] = track.params["replace"]
    return extra


def read_lyrics(value: str | None) -> str | None:
    """--lyrics TEXT, or --lyrics @FILE for a file's text."""
    if value is None or not value.startswith("@"):
        return value
    return Path(value[1:]).expanduser().read_text(encoding="utf-8")


def read_upload(path: str) -> Upload:
    file = Path(path).expanduser()
    return Upload(file.name, file.read_bytes())


def track_id_of(path: str) -> str:
    """The track a file made by Bandmate belongs to: `<id>.mp3`, `bandmate-<id>.mp3` or `bandmate-<id>-<stem>.mp3`."""
    stem = Path(path).stem
    if stem.startswith("bandmate-"):
        stem = stem[len("bandmate-"):].split("-")[0]
    return stem


def run_plan(settings: Settings, make_plan: MakePlan, out: Path, *, as_json: bool,
             upload: Upload | None = None) -> int:
    """One planned request through the core and the queue; its files land in `out`, one JSON object per track."""
    from app.commands import CLI_USER, CommandLineTransport
    from app.services import Application

    async def main() -> tuple[list[dict], dict[str, str]]:
        async with Application(settings, operator=True) as app:
            transport = CommandLineTransport(app.core, out, set(), quiet=as_json)
            await app.core.connect(transport)
            plan = await make_plan(app.core, Request(CLI_USER, delivery=DeliveryAddress(transport.name)))
            job = await app.core.submit(plan, upload)
            transport.job_ids.add(job.id)
            await transport.waiter(job.id).wait()
            return transport.rows.get(job.id, []), transport.failed

    try:
        rows, failed = asyncio.run(main())
    except Refusal as refusal:
        print(f"error: {plain(refusal.user_message)}", file=sys.stderr)
        return 2
    for message in failed.values():
        print(f"error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            label = f"{row['stem']}: " if "stem" in row else ""
            print(f"{label}{row['mp3']}  ({row['duration_s']:.2f} s, seed {row['seed']})")
    return 1 if failed else 0


def compose_song(settings: Settings, args) -> int:
    opts = SongOptions(prompt=args.prompt, lyrics=read_lyrics(args.lyrics) or "", language=args.language,
                       bpm=args.bpm, key=args.key, duration_s=args.duration, variations=args.variations,
                       seed=args.seed, model=args.model)

    async def plan(core: Bandmate, request: Request) -> Plan:
        return await core.plan_lyric_song(request, opts)

    return run_plan(settings, plan, Path(args.out), as_json=args.json)


def replace(settings: Settings, args) -> int:
    """A stored track (found by its file's name) has its range repainted; any other file is repainted as an
    upload by the ACE-Step model."""
    lyrics = read_lyrics(args.lyrics)
    track_id = track_id_of(args.file)
    upload = read_upload(args.file)
    known: dict[str, bool] = {}

    async def plan(core: Bandmate, request: Request) -> Plan:
        try:
            await core.track(track_id)
            known["track"] = True
        except Refusal:
            known["track"] = False
        if known["track"]:
            return await core.plan_replace(request, track_id, start_s=args.start, end_s=args.end,
                                           prompt=args.prompt or None, lyrics=lyrics)
        return await core.plan_replace_upload(request, UploadInfo(upload.filename, len(upload.data)),
                                              start_s=args.start, end_s=args.end, prompt=args.prompt or "",
                                              lyrics=lyrics)

    return run_plan(settings, plan, Path(args.out), as_json=args.json, upload=upload)


def cover(settings: Settings, args) -> int:
    upload = read_upload(args.file)

    async def plan(core: Bandmate, request: Request) -> Plan:
        return await core.plan_cover(request, args.style, upload=UploadInfo(upload.filename, len(upload.data)),
                                     strength=args.strength)

    return run_plan(settings, plan, Path(args.out), as_json=args.json, upload=upload)


def stems(settings: Settings, args) -> int:
    upload = read_upload(args.file)

    async def plan(core: Bandmate, request: Request) -> Plan:
        return await core.plan_stems(request, upload=UploadInfo(upload.filename, len(upload.data)))

    return run_plan(settings, plan, Path(args.out), as_json=args.json, upload=upload)

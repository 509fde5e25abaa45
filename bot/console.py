"""The core in a terminal: the same commands as Discord, typed or piped, with progress bars and file paths.

    /compose lo-fi piano, rainy night --duration 8 --variations 2 --seed 1
    reply TRACK make it jazzier        vote TRACK        like TRACK        extend TRACK SECONDS_IN_ALL
    remix FILE new style               song "prompt" "intro 8, verse 16, chorus 16, outro 8" [--melody-chorus]
    style add|remove|list [TAG]        taste        top [week|all]        queue        cancel [JOB]        help
    prefer set NAME VALUE | remove NAME | list      privacy        export        forget [tracks]
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
import sys
from typing import Any, TextIO

from pathlib import Path

from bot.core import Bandmate, ComposeOptions, CoreConfig, Refusal, Requester, Upload
from bot.fingerprint import Fingerprints
from generation.models import model_info
from bot.presets import PresetService
from bot.privacy import PrivacyService
from generation.jobs import Operation
from generation.scheduler import EventKind

log = logging.getLogger(__name__)

CONSOLE_USER = Requester(user_id="console", name="you")
PROMPT = "bandmate> "


class ConsoleSink:
    """Delivery to the terminal: the result's files and the ids to reply to."""

    def __init__(self, core: Bandmate, out: TextIO) -> None:
        self.core = core
        self.out = out
        self.delivered: set[str] = set()
        self.finished = asyncio.Event()

    async def deliver(self, job, tracks) -> None:
        message = self.core.result_message(job, tracks)
        self.out.write("\n" + message.text + "\n")
        for item in message.files:
            self.out.write(f"  {item.path}\n")
        for track in tracks:
            self.out.write(f"  track {track.id}: reply {track.id} <continue | extend 20s | make it jazzier | ...>\n")
        self.out.flush()
        self.delivered.add(job.id)
        self.finished.set()


OPTIONS = ("duration", "variations", "seed", "temperature", "guidance")


def parse_compose(args: list[str]) -> ComposeOptions:
    """The prompt and its options; any other `--name` stays in the prompt (a preset, expanded by the core)."""
    words, options = [], {}
    i = 0
    while i < len(args):
        name = args[i][2:].replace("-", "_") if args[i].startswith("--") else None
        if name in OPTIONS and i + 1 < len(args):
            options[name] = args[i + 1]
            i += 2
        else:
            words.append(args[i])
            i += 1
    try:
        return ComposeOptions(
            prompt=" ".join(words), duration_s=float(options["duration"]) if "duration" in options else None,
            variations=int(options.get("variations", 1)), seed=int(options["seed"]) if "seed" in options else None,
            temperature=float(options["temperature"]) if "temperature" in options else None,
            guidance=float(options["guidance"]) if "guidance" in options else None,
        )
    except ValueError:
        raise Refusal("Options take numbers, e.g. `/compose jazz --duration 8 --variations 2`.") from None


async def handle_line(core: Bandmate, line: str, delivery: dict[str, Any]) -> str | None:
    """One command typed at the console; returns what to print (None for nothing)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    try:
        parts = shlex.split(line)
    except ValueError:
        parts = line.split()
    command, args = parts[0].lstrip("/").lower(), parts[1:]
    try:
        if command == "compose":
            job = await core.compose(CONSOLE_USER, parse_compose(args), delivery=delivery)
            return f"job {job.id}: {core.queued_text(job)}"
        if command == "reply" and len(args) >= 2:
            track = await core.track(args[0])
            outcome = await core.reply(CONSOLE_USER, track.job_id, f"#{track.variation + 1} " + " ".join(args[1:]),
                                       delivery=delivery)
            return (f"job {outcome.job.id}: " if outcome.job else "") + outcome.text
        if command == "vote" and args:
            tally = await core.vote(CONSOLE_USER, args[0])
            return "votes: " + ", ".join(f"{t} {n}" for t, n in tally.items())
        if command == "extend" and len(args) >= 2:
            job = await core.extend_to(CONSOLE_USER, args[0], float(args[1].rstrip("s")), delivery=delivery)
            return f"job {job.id}: {core.queued_text(job)}"
        if command in ("like", "variations") and args:
            operation = Operation.MORE_LIKE if command == "like" else Operation.VARIATION
            job = await core.from_track(CONSOLE_USER, args[0], operation, delivery=delivery)
            note = f" ({', '.join(job.spec['blended'])} blended in)" if job.spec.get("blended") else ""
            return f"job {job.id}: {core.queued_text(job)}{note}"
        if command == "remix" and len(args) >= 2:
            data = Path(args[0]).expanduser().read_bytes()
            job = await core.remix(CONSOLE_USER, Upload(Path(args[0]).name, data), " ".join(args[1:]),
                                   delivery=delivery)
            return f"job {job.id}: {core.queued_text(job)}"
        if command == "song" and len(args) >= 2:
            chorus = "melody" if args[-1] == "--melody-chorus" else "reuse"
            sections = [a for a in args[1:] if a != "--melody-chorus"]
            job = await core.song(CONSOLE_USER, args[0], " ".join(sections), delivery=delivery, chorus=chorus)
            return f"job {job.id}: {core.queued_text(job)}"
        if command == "style" and args and core.fingerprints is not None:
            return await core.fingerprints.style(CONSOLE_USER.user_id, args[0], " ".join(args[1:]) or None)
        if command == "taste" and core.fingerprints is not None:
            return await core.fingerprints.describe(CONSOLE_USER.user_id)
        if command == "top":
            return (await core.top(None, args[0] if args else "week")).text
        if command == "prefer" and args and core.presets is not None:
            if args[0] == "set" and len(args) >= 3:
                return await core.presets.set(CONSOLE_USER, args[1], " ".join(args[2:]))
            if args[0] == "remove" and len(args) >= 2:
                return await core.presets.remove(CONSOLE_USER, args[1])
            return await core.presets.list(CONSOLE_USER)
        if command == "privacy" and core.privacy is not None:
            return await core.privacy.privacy_text(CONSOLE_USER.user_id)
        if command == "export" and core.privacy is not None:
            return (await core.privacy.export_json(CONSOLE_USER.user_id)).decode()
        if command == "forget" and core.privacy is not None:
            return await core.privacy.forget(CONSOLE_USER.user_id, delete_tracks=bool(args and args[0] == "tracks"))
        if command == "queue":
            return core.queue_text(CONSOLE_USER)
        if command == "cancel":
            return await core.cancel(CONSOLE_USER, args[0] if args else None)
        if command == "track" and args:
            track = await core.track(args[0])
            return f"{track.prompt} · {track.duration_s:.1f} s · seed {track.seed}\n  {core.files.absolute(track.mp3)}"
        if command == "help":
            return core.help_text()
        if command in ("quit", "exit"):
            raise EOFError
    except Refusal as refusal:
        return refusal.user_message
    except (OSError, ValueError) as error:
        return f"That didn't work: {error}"
    return "Unknown command. Try `/compose lo-fi piano --duration 8`, `reply TRACK continue`, `queue` or `help`."


async def run_console(settings, engine_factory, stdin: TextIO, stdout: TextIO) -> int:
    engine = engine_factory(settings)
    stdout.write(f"Bandmate console. Loading {settings.model}...\n")
    stdout.flush()
    await engine.load_model()
    core = Bandmate(scheduler=engine.scheduler, store=engine.store, links=engine.links, files=engine.files,
                    config=CoreConfig(default_model=settings.model, melody_model=settings.melody_model,
                                      models=tuple(settings.extra_models),
                                      max_duration_s=settings.max_duration_s, cooldown_s=0.0,
                                      max_upload_bytes=settings.max_upload_mb * 1024 * 1024),
                    fingerprints=Fingerprints(engine.taste), leaderboard=engine.leaderboard,
                    presets=PresetService(engine.settings_store, max_duration_s=settings.max_duration_s,
                                          models=engine.selectable_models),
                    privacy=PrivacyService(engine.privacy_store, scheduler=engine.scheduler),
                    model_info=model_info)
    sink = ConsoleSink(core, stdout)
    await engine.scheduler.add_sink("console", sink)

    def on_event(event) -> None:
        if event.kind is EventKind.PROGRESS and event.total:
            filled = int(30 * event.step / event.total)
            part = f" ({event.message})" if event.message else ""
            stdout.write(f"\r  {event.job_id} [{'#' * filled}{'.' * (30 - filled)}] {event.step}/{event.total}{part}")
            if event.step >= event.total:
                stdout.write("\n")
            stdout.flush()
        elif event.kind in (EventKind.FAILED, EventKind.CANCELLED) and event.message:
            stdout.write(f"\n  {event.job_id}: {event.message}\n")

    engine.scheduler.listen(on_event)
    await engine.start()
    interactive = stdin.isatty()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    try:  # SIGTERM: stop reading; the finally below lets running jobs finish or requeues them
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    except (NotImplementedError, RuntimeError):
        pass
    submitted: set[str] = set()
    try:
        while True:
            if interactive:
                stdout.write(PROMPT)
                stdout.flush()
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            try:
                answer = await handle_line(core, line, {"sink": "console"})
            except EOFError:
                break
            if answer:
                stdout.write(answer + "\n")
                stdout.flush()
                if answer.startswith("job "):
                    submitted.add(answer.split()[1].rstrip(":"))
        # Piped input: wait for what was asked before leaving, so a script gets its files.
        while submitted - sink.delivered and (engine.scheduler.depth or engine.scheduler.running_jobs()):
            sink.finished.clear()
            try:  # re-check now and then: a cancelled job is never delivered
                await asyncio.wait_for(sink.finished.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
    except asyncio.CancelledError:
        stdout.write("\nStopping: unfinished pieces are kept and will be made on the next start.\n")
    finally:
        await engine.close()
    return 0


if __name__ == "__main__":  # pragma: no cover - `python bot.py console` is the entry point
    sys.exit("run: python bot.py console")

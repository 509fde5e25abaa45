"""The core in a terminal: the same commands as Discord, typed or piped, with progress bars and file paths.

    /compose lo-fi piano, rainy night --duration 8 --variations 2 --seed 1
    reply TRACK make it jazzier        vote TRACK        like TRACK        extend TRACK SECONDS_IN_ALL
    remix FILE new style               song "prompt" "intro 8, verse 16, chorus 16, outro 8" [--melody-chorus]
    song "prompt" --lyrics "[verse] a line / a line [chorus] ..."|@FILE [--language en] [--bpm N] [--key "C major"]
         [--duration S] [--reference FILE]       cover TRACK|FILE style [--strength 0.8]      stems TRACK|FILE
    reply TRACK redo the bridge | replace 0:40-0:55 with a guitar solo | change the second chorus to: new / lines
    style add|remove|list [TAG]        taste        top [week|all]        queue        cancel [JOB]        help
    prefer set NAME VALUE | remove NAME | list      privacy        export        forget [tracks]
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import TextIO

from bot import console_vocals
from bot.core import Bandmate, ComposeOptions, Refusal, Request, Requester, Upload
from bot.messages import ButtonKind, OutgoingMessage
from bot.text import plain
from bot.vocal_views import SONG_REPLIES
from generation.events import EventKind, JobEvent
from generation.jobs import DeliveryAddress, Job, JobKind, Operation

log = logging.getLogger(__name__)

CONSOLE_USER = Requester(user_id="console", name="you")
PROMPT = "bandmate> "
SINK = "console"


class ConsoleTransport:
    """The core's `Transport` in a terminal: results as file paths and the ids to reply to, progress bars."""

    name = SINK

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.delivered: set[str] = set()
        self.finished = asyncio.Event()

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def post_result(self, job: Job, message: OutgoingMessage) -> None:
        text = plain(message.text)
        lines = ["", text]
        if job.kind is JobKind.STEMS:  # one file per stem, named for it ("vocals stem: ...")
            lines += [f"  {item.description}: {item.path}" for item in message.files]
        else:
            lines += [f"  {item.path}" for item in message.files]
        lines += self._thread_lines(message, text)
        sung = message.thread_text is not None
        lines += [f"  track {b.target}: reply {b.target} " + (SONG_HINT if sung else REPLY_HINT)
                  for b in message.buttons if b.kind is ButtonKind.VOTE]
        lines += [f"  stems {b.target}" for b in message.buttons if b.kind is ButtonKind.STEMS]
        self._write("\n".join(lines) + "\n")
        self._done(job)

    @staticmethod
    def _thread_lines(message: OutgoingMessage, shown: str) -> list[str]:
        """What Discord puts in a song's thread (its lyrics), without what the result already says or the
        thread's own "reply here" line (the console's hint says how to reply)."""
        if not message.thread_text:
            return []
        skip = {plain(SONG_REPLIES)} | {line for line in shown.splitlines() if line.startswith("Sections:")}
        return [f"  {line}" for line in plain(message.thread_text).splitlines() if line not in skip]

    async def post_failure(self, job: Job, message: OutgoingMessage) -> None:
        self._write("\n" + plain(message.text) + "\n")
        self._done(job)

    def _done(self, job: Job) -> None:
        self.delivered.add(job.id)
        self.finished.set()

    def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.PROGRESS and event.total:
            filled = int(30 * event.step / event.total)
            part = f" ({event.message})" if event.message else ""
            self.out.write(f"\r  {event.job_id} [{'#' * filled}{'.' * (30 - filled)}] {event.step}/{event.total}{part}")
            if event.step >= event.total:
                self.out.write("\n")
            self.out.flush()
        elif event.kind in (EventKind.FAILED, EventKind.CANCELLED) and event.message:
            self._write(f"\n  {event.job_id}: {event.message}\n")
            if event.kind is EventKind.CANCELLED:
                self.finished.set()  # a cancelled job is never delivered: let a waiting script re-check

    async def announce_winner(self, job: Job, message: OutgoingMessage, refs: list[str]) -> None:
        self._write("\n" + plain(message.text) + "\n")


OPTIONS = ("duration", "variations", "seed", "temperature", "guidance")
REPLY_HINT = "<continue | extend 20s | make it jazzier | ...>"
SONG_HINT = "<redo the bridge | replace 0:40-0:55 with a guitar solo | change the second chorus to: new / lines | ...>"
HELP = """Console commands:
• /compose PROMPT [--duration S] [--variations N] [--seed N] [--temperature T] [--guidance G]
• reply TRACK TEXT: what you would write in a result's thread (continue, extend 20s, make it jazzier, ...)
• vote TRACK · like TRACK · variations TRACK · extend TRACK SECONDS_IN_ALL · remix FILE STYLE · track TRACK
• style add|remove|list [TAG] · taste · top [week|all] · prefer set NAME VALUE | remove NAME | list
• queue · cancel [JOB] · privacy · export · forget [tracks] · verify FILE · help · quit
""" + console_vocals.HELP


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


async def handle_line(core: Bandmate, line: str) -> str | None:
    """One command typed at the console; returns what to print (core markup; None for nothing)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    try:
        parts = shlex.split(line)
    except ValueError:
        parts = line.split()
    command, args = parts[0].lstrip("/").lower(), parts[1:]
    request = Request(CONSOLE_USER, delivery=DeliveryAddress(SINK))
    try:
        if command == "compose":
            job = await core.compose(request, parse_compose(args))
            return f"job {job.id}: {core.queued_text(job)}"
        if command == "reply" and len(args) >= 2:
            track = await core.track(args[0])
            text = line.split(None, 2)[2]  # as typed: quotes and apostrophes are words in a reply
            outcome = await core.reply(request, track.job_id, f"#{track.variation + 1} {text}")
            return (f"job {outcome.job.id}: " if outcome.job else "") + outcome.text
        if command == "vote" and args:
            voted = await core.vote(CONSOLE_USER, args[0])
            return "votes: " + ", ".join(f"{t} {n}" for t, n in voted.tally.items())
        if command == "extend" and len(args) >= 2:
            job = await core.extend_to(request, args[0], float(args[1].rstrip("s")))
            return f"job {job.id}: {core.queued_text(job)}"
        if command in ("like", "variations") and args:
            operation = Operation.MORE_LIKE if command == "like" else Operation.VARIATION
            job = await core.from_track(request, args[0], operation)
            note = f" ({', '.join(job.spec.blended)} blended in)" if job.spec.blended else ""
            return f"job {job.id}: {core.queued_text(job)}{note}"
        if command == "remix" and len(args) >= 2:
            data = Path(args[0]).expanduser().read_bytes()
            job = await core.remix(request, Upload(Path(args[0]).name, data), " ".join(args[1:]))
            return f"job {job.id}: {core.queued_text(job)}"
        if command in ("song", "cover", "stems"):
            job = await getattr(console_vocals, command)(core, request, args)
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
            message = await core.track_message(args[0])
            return (f"{track.duration_s:.1f} s · seed {track.seed}\n" + "\n".join(f"  {f.path}" for f in message.files)
                    + "".join(f"\n{line}" for line in ConsoleTransport._thread_lines(message, "")))
        if command == "verify" and args:
            return await core.verify_path(Path(" ".join(args)).expanduser())
        if command == "help":
            return HELP + "\n\n" + core.help_text()
        if command in ("quit", "exit"):
            raise EOFError
    except Refusal as refusal:
        return refusal.user_message
    except (OSError, ValueError) as error:
        return f"That didn't work: {error}"
    except EOFError:
        raise
    except Exception:  # noqa: BLE001 - a fault in one command never ends the console (nor loses its queue)
        log.exception("console command %r failed", command)
        return (f"Sorry, `{command}` failed: that is a fault in Bandmate, and the log has the details. "
                "The console goes on, and pieces already queued are still being made.")
    return "Unknown command. Try `/compose lo-fi piano --duration 8`, `reply TRACK continue`, `queue` or `help`."


async def run_console(app, stdin: TextIO, stdout: TextIO) -> int:
    """The console on a started application (app/services.py) until end of input or SIGTERM."""
    core: Bandmate = app.core
    transport = ConsoleTransport(stdout)
    await core.connect(transport)
    interactive = stdin.isatty()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    try:  # SIGTERM: stop reading; the application's close lets running jobs finish or requeues them
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
                answer = await handle_line(core, line)
            except EOFError:
                break
            if answer:
                stdout.write(plain(answer) + "\n")
                stdout.flush()
                if answer.startswith("job "):
                    submitted.add(answer.split()[1].rstrip(":"))
        # Piped input: wait for what was asked before leaving, so a script gets its files.
        while submitted - transport.delivered and core.busy():
            transport.finished.clear()
            try:  # re-check now and then: a cancelled job is never delivered
                await asyncio.wait_for(transport.finished.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
    except asyncio.CancelledError:
        stdout.write("\nStopping: unfinished pieces are kept and will be made on the next start.\n")
    finally:
        core.disconnect_all()
    return 0


if __name__ == "__main__":  # pragma: no cover - `python bot.py console` is the entry point
    sys.exit("run: python bot.py console")

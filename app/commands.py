"""What each `bot.py` command does, on the application's services: the bot, the console, one-shot jobs through the
queue, the doctor, downloads, backups and the Redis worker."""

from __future__ import annotations

import asyncio
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from app.services import Application, build_models
from app.settings import Settings
from app.vocal_commands import vocal_fields
from bot.core import Bandmate, ComposeOptions, Requester, Upload
from bot.messages import OutgoingMessage
from generation.events import EventKind, JobEvent
from generation.jobs import Job

log = logging.getLogger("bandmate")

CLI_USER = Requester(user_id="cli", name="command line")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "huggingface_hub", "discord.gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the bot and the console ----------------------------------------------------------------------------------


def run(settings: Settings) -> int:
    if settings.discord_token:
        return discord(settings)
    print("DISCORD_TOKEN is not set, so Bandmate starts in the console. To run it on Discord, create an application "
          "at https://discord.com/developers/applications, copy its bot token into .env as DISCORD_TOKEN=..., "
          "and see the README for the invite link.", file=sys.stderr)
    return console(settings)


def console(settings: Settings) -> int:
    from bot.console import run_console

    async def main() -> int:
        sys.stdout.write(f"Bandmate console. Loading {settings.model}...\n")
        sys.stdout.flush()
        async with Application(settings, operator=True) as app:
            return await run_console(app, sys.stdin, sys.stdout)

    return asyncio.run(main())


def discord(settings: Settings) -> int:
    from bot.discord.client import run_discord

    async def main() -> int:
        async with Application(settings) as app:
            return await run_discord(app)

    return asyncio.run(main())


def worker(settings: Settings) -> int:
    if not settings.redis_url:
        print("error: BANDMATE_REDIS_URL is not set; a worker takes its jobs from Redis.", file=sys.stderr)
        return 2
    watermark = None
    if settings.watermark == "audioseal":  # each job carries the bot's message; these are only the models
        from generation.watermark import WatermarkError, load_watermarker

        try:
            watermark = load_watermarker(settings.watermark_dir, server_name="worker")
        except WatermarkError as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    from app.observability import run_observed_worker

    return asyncio.run(run_observed_worker(settings, build_models(settings), watermark))


# -- one-shot jobs through the queue --------------------------------------------------------------------------


class CommandLineTransport:
    """The core's `Transport` for `bot.py compose|continue`: each result's files copied to the output folder."""

    name = "cli"

    def __init__(self, core: Bandmate, out_dir: Path, job_ids: set[str], quiet: bool) -> None:
        self.core, self.out_dir, self.job_ids, self.quiet = core, out_dir, job_ids, quiet
        self.rows: dict[str, list[dict]] = {}
        self.failed: dict[str, str] = {}
        self.done: dict[str, asyncio.Event] = {}
        self._last = ""

    def waiter(self, job_id: str) -> asyncio.Event:
        return self.done.setdefault(job_id, asyncio.Event())

    async def post_result(self, job: Job, message: OutgoingMessage) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for track in await self.core.tracks(job.id):
            paths = {}
            for kind in ("mp3", "png", "flac"):
                src = self.core.path(getattr(track, kind))
                dest = self.out_dir / src.name
                await asyncio.to_thread(shutil.copyfile, src, dest)
                paths[kind] = str(dest)
            rows.append({**paths, "duration_s": track.duration_s, "seed": track.seed, "prompt": track.prompt,
                         "track_id": track.id, "job_id": job.id, "model": track.model, "variation": track.variation,
                         **vocal_fields(track)})
        self.rows[job.id] = rows
        self.waiter(job.id).set()

    async def post_failure(self, job: Job, message: OutgoingMessage) -> None:
        self.failed[job.id] = job.error or job.state.value
        self.waiter(job.id).set()

    def on_event(self, event: JobEvent) -> None:
        """A text progress bar on stderr."""
        if self.quiet or event.job_id not in self.job_ids:
            return
        if event.kind is EventKind.PROGRESS and event.total:
            filled = int(30 * event.step / event.total)
            eta = f" ~{event.eta_s:.0f}s left" if event.eta_s else ""
            part = f" {event.message}" if event.message else ""
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {event.step}/{event.total}{part}{eta}"
            if line != self._last:
                sys.stderr.write(line)
                sys.stderr.flush()
                self._last = line
            if event.step >= event.total:
                sys.stderr.write("\n")
        elif event.kind in (EventKind.QUEUED, EventKind.STARTED):
            sys.stderr.write(f"{event.kind.value}: job {event.job_id}\n")
        elif event.kind in (EventKind.FAILED, EventKind.CANCELLED):
            self.failed.setdefault(event.job_id, event.message or event.kind.value)

    async def announce_winner(self, job: Job, message: OutgoingMessage, refs: list[str]) -> None:
        return None


def one_shot(settings: Settings, opts: ComposeOptions, out: Path, *, as_json: bool, upload: Upload | None = None) -> int:
    """One request through the core and the queue, like any other; its files land in `out`."""
    from app.vocal_commands import run_plan
    from bot.core import UploadInfo

    info = UploadInfo(upload.filename, len(upload.data)) if upload is not None else None
    return run_plan(settings, lambda core, request: core.plan_compose(request, opts, info), out, as_json=as_json,
                    upload=upload)


# -- diagnostics and housekeeping -----------------------------------------------------------------------------


def doctor(settings: Settings) -> int:
    from generation.hub import hub_doctor
    from generation.models import model_info

    ok = True

    def line(name: str, value: str, good: bool = True) -> None:
        nonlocal ok
        ok = ok and good
        print(f"{'ok ' if good else 'BAD'} {name:<14} {value}")

    line("python", platform.python_version(), sys.version_info >= (3, 11))
    try:
        from generation.musicgen import describe_accelerator

        version, device = describe_accelerator()
        line("torch", version)
        line("device", f"{device}; BANDMATE_DEVICE={settings.device}, BANDMATE_DTYPE={settings.dtype}")
    except Exception as error:  # noqa: BLE001
        line("torch", f"not importable: {error}", False)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        line("ffmpeg", version)
    else:
        line("ffmpeg", "missing: sudo apt-get install ffmpeg", False)
    for model_id in dict.fromkeys((settings.model, *settings.extra_models, settings.melody_model)):
        info = model_info(model_id)
        setting = "BANDMATE_MELODY_MODEL" if model_id == settings.melody_model else "BANDMATE_MODEL"
        good, state = hub_doctor(model_id, setting=setting)
        line("model", f"{model_id} ({info.family.value}, licence: {info.license}): {state}", good)
    line("data", f"{settings.data_dir.resolve()}")
    if settings.redis_url:
        try:
            import redis

            redis.Redis.from_url(settings.redis_url, socket_timeout=3).ping()
            line("redis", "reachable")
        except Exception as error:  # noqa: BLE001
            line("redis", f"not reachable ({type(error).__name__}); check BANDMATE_REDIS_URL", False)
    else:
        line("redis", "not configured (BANDMATE_REDIS_URL unset): the queue runs in this process")
    if settings.discord_token:
        from bot.discord.doctor import check_discord

        line("discord", "DISCORD_TOKEN is set")
        for name, value, good in asyncio.run(check_discord(settings)):
            line(name, value, good)
    else:
        line("discord", "DISCORD_TOKEN is not set: `python bot.py` starts the console instead")
    return 0 if ok else 1


def download(settings: Settings, model: str | None) -> int:
    from generation.hub import hub_endpoint, probe_hub

    if model == "audioseal":
        return download_audioseal(settings)

    if model == "ace-step":  # a name for ACE-Step 1.5's default checkpoint
        from generation.ace_step_facts import DEFAULT_MODEL

        model = DEFAULT_MODEL
    models = [model] if model else list(dict.fromkeys((settings.model, *settings.extra_models,
                                                        settings.melody_model)))
    for model_id in models:
        if Path(model_id).is_dir():
            print(f"{model_id} is a local folder; nothing to download")
            continue
        probe = probe_hub(model_id)
        if not probe.reachable:
            print(f"error: cannot download {model_id}: the model hub {hub_endpoint()} is unreachable ({probe.reason}). "
                  "Run this on a machine with internet and copy its Hugging Face cache here.", file=sys.stderr)
            return 1
        try:
            from huggingface_hub import snapshot_download

            print(f"downloading {model_id} into the Hugging Face cache...")
            path = snapshot_download(model_id)
            print(f"ok: {model_id} -> {path}")
        except Exception as error:  # noqa: BLE001
            print(f"error: could not download {model_id} ({type(error).__name__}: {str(error).splitlines()[0]}). "
                  "Check the id, your internet connection, and for gated models HF_TOKEN.", file=sys.stderr)
            return 1
    return 0


def backup(settings: Settings, path: str) -> int:
    from storage.backup import backup as make_backup

    dest = make_backup(settings.db_path, settings.data_dir, Path(path))
    print(f"backup written to {dest}")
    return 0


def restore(settings: Settings, path: str) -> int:
    from storage.backup import restore as restore_backup

    restore_backup(Path(path), settings.data_dir)
    print(f"restored {path} into {settings.data_dir}")
    return 0


# -- Content Credentials ----------------------------------------------------------------------------------------


def download_audioseal(settings: Settings) -> int:
    """The AudioSeal weights for BANDMATE_WATERMARK=audioseal, into the data directory."""
    from generation.watermark import WatermarkError, download_weights

    try:
        path = download_weights(settings.watermark_dir)
    except WatermarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ok: AudioSeal weights -> {path}")
    return 0


def verify(settings: Settings, path: Path, *, as_json: bool) -> int:
    """`bot.py verify FILE [--json]`: checked against this server's chain without making one or loading a model.
    Exit 0 for a file this server's Bandmate made and nobody changed since, 1 for anything else (the contract)."""
    from generation.credentials import verify_with_key_dir
    from generation.signing_keys import SigningKeyError, load_trust_anchors

    watermark = None
    if settings.watermark == "audioseal":
        from app.services import watermark_name
        from generation.watermark import WatermarkError, load_watermarker

        try:
            anchors = load_trust_anchors(settings.key_dir, settings.c2pa_cert)
            watermark = load_watermarker(settings.watermark_dir, server_name=watermark_name(anchors))
        except (WatermarkError, SigningKeyError) as error:
            print(f"warning: the watermark is not checked: {error}", file=sys.stderr)
    try:
        report = verify_with_key_dir(path, settings.key_dir, cert_path=settings.c2pa_cert, watermark=watermark)
    except SigningKeyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if as_json:
        print(report.to_json())
    else:
        print("\n".join(report.lines()))
    return report.exit_code


def status(settings: Settings) -> int:
    """Queued and running jobs per user and model, and the oldest waiting one, from the database."""
    from app.status_report import status_report
    from storage.database import Database
    from storage.jobstore import SqliteJobStore

    if not settings.db_path.exists():
        print(f"no database at {settings.db_path} (BANDMATE_DATA): nothing has been queued yet", file=sys.stderr)
        return 1
    db = Database(settings.db_path)
    try:
        jobs = asyncio.run(SqliteJobStore(db).unfinished_jobs())
    finally:
        db.close()
    print(status_report(jobs))
    return 0

#!/usr/bin/env python
"""Bandmate: the wiring and the command line.

Settings come from the environment (and `.env`) into one frozen dataclass that fails fast and names the variable
at fault. Everything else is built here and handed to constructors: no module reads the environment itself.

    python bot.py                      the Discord bot (DISCORD_TOKEN set) or else the console
    python bot.py compose "PROMPT" --duration 8 --variations 2 --seed 1 --out out/ [--json]
    python bot.py continue FILE --prompt "..." --duration 10 --out out/ [--json]
    python bot.py doctor | download [MODEL] | backup PATH | restore BACKUP | worker | console
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

log = logging.getLogger("bandmate")

DEFAULT_MODEL = "facebook/musicgen-small"
DEFAULT_MELODY_MODEL = "facebook/musicgen-melody"


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    model: str = DEFAULT_MODEL
    melody_model: str = DEFAULT_MELODY_MODEL
    extra_models: tuple[str, ...] = ()  # other models admins may choose per server (/settings) or users per /compose
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    torch_threads: int = 0  # 0: torch's default (all cores)
    max_batch: int = 4
    user_pending: int = 3
    queue_depth: int = 100
    job_timeout_s: float = 900.0
    max_duration_s: float = 30.0
    max_upload_mb: int = 25
    cooldown_s: float = 5.0
    voting_window_s: float = 3600.0
    daily_quota: int = 200
    discord_token: str | None = field(default=None, repr=False)  # never printed
    discord_guild_ids: tuple[int, ...] = ()
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    redis_url: str | None = field(default=None, repr=False)
    redis_claim_idle_ms: int = 60_000
    redis_heartbeat_s: float = 10.0
    redis_max_deliveries: int = 3
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        guilds = []
        for part in env.get("DISCORD_GUILD_IDS", "").replace(";", ",").split(","):
            if part.strip():
                if not part.strip().isdigit():
                    raise SettingsError(f"DISCORD_GUILD_IDS must be comma-separated numeric ids, got {part.strip()!r}")
                guilds.append(int(part.strip()))
        return cls(
            data_dir=Path(env.get("BANDMATE_DATA", "").strip() or "data"),
            model=env.get("BANDMATE_MODEL", "").strip() or DEFAULT_MODEL,
            melody_model=env.get("BANDMATE_MELODY_MODEL", "").strip() or DEFAULT_MELODY_MODEL,
            extra_models=tuple(m.strip() for m in env.get("BANDMATE_MODELS", "").split(",") if m.strip()),
            device=_choice(env, "BANDMATE_DEVICE", "auto", ("auto", "cpu", "cuda")),
            dtype=_choice(env, "BANDMATE_DTYPE", "auto", ("auto", "fp32", "bf16", "fp16")),
            compile=_flag(env, "BANDMATE_COMPILE"),
            torch_threads=_int(env, "BANDMATE_TORCH_THREADS", 0, 0, 1024),
            max_batch=_int(env, "BANDMATE_MAX_BATCH", 4, 1, 64),
            user_pending=_int(env, "BANDMATE_USER_PENDING", 3, 1, 1000),
            queue_depth=_int(env, "BANDMATE_QUEUE_DEPTH", 100, 1, 100_000),
            job_timeout_s=_float(env, "BANDMATE_JOB_TIMEOUT_S", 900.0, 1.0, 86_400.0),
            max_duration_s=_float(env, "BANDMATE_MAX_DURATION_S", 30.0, 1.0, 300.0),
            max_upload_mb=_int(env, "BANDMATE_MAX_UPLOAD_MB", 25, 1, 500),
            cooldown_s=_float(env, "BANDMATE_COOLDOWN_S", 5.0, 0.0, 3600.0),
            voting_window_s=_float(env, "BANDMATE_VOTING_WINDOW_S", 3600.0, 1.0, 30 * 86_400.0),
            daily_quota=_int(env, "BANDMATE_DAILY_QUOTA", 200, 1, 1_000_000),
            discord_token=env.get("DISCORD_TOKEN", "").strip() or None,
            discord_guild_ids=tuple(guilds),
            discord_api_base=env.get("DISCORD_API_BASE", "").strip() or None,
            discord_gateway_url=env.get("DISCORD_GATEWAY_URL", "").strip() or None,
            redis_url=env.get("BANDMATE_REDIS_URL", "").strip() or None,
            redis_claim_idle_ms=_int(env, "BANDMATE_REDIS_CLAIM_IDLE_MS", 60_000, 10, 86_400_000),
            redis_heartbeat_s=_float(env, "BANDMATE_REDIS_HEARTBEAT_S", 10.0, 0.01, 3600.0),
            redis_max_deliveries=_int(env, "BANDMATE_REDIS_MAX_DELIVERIES", 3, 1, 100),
            log_level=_choice(env, "BANDMATE_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "bandmate.db"


# -- wiring ---------------------------------------------------------------------------------------------------


class Engine:
    """Storage, files, models and the queue of one process, built from settings and closed in reverse."""

    def __init__(self, settings: Settings) -> None:
        from generation.models import ModelRegistry
        from generation.runner import JobRunner
        from generation.scheduler import LocalExecutor, Scheduler, SchedulerConfig
        from storage.database import Database
        from storage.files import FileStore
        from storage.jobstore import ConversationLinks, Leaderboard, SqliteJobStore
        from storage.privacy import PrivacyStore
        from storage.settings import SettingsStore
        from storage.taste import TasteStore

        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.db_path)
        self.files = FileStore(settings.data_dir)
        self.store = SqliteJobStore(self.db)
        self.links = ConversationLinks(self.db)
        self.taste = TasteStore(self.db)
        self.settings_store = SettingsStore(self.db)
        self.privacy_store = PrivacyStore(self.db, self.files)
        self.selectable_models = [settings.model, *settings.extra_models]
        self.leaderboard = Leaderboard(self.db)
        self.models = ModelRegistry(device=settings.device, dtype=settings.dtype, compile=settings.compile,
                                    threads=settings.torch_threads)
        self.runner = JobRunner(self.models, self.files)
        config = SchedulerConfig(max_batch=settings.max_batch, per_user_pending=settings.user_pending,
                                 max_depth=settings.queue_depth, job_timeout_s=settings.job_timeout_s)
        if settings.redis_url:  # [redis scale-out] workers run the model; this process keeps the fair queue
            from generation.remote import RedisExecutor

            self.executor = RedisExecutor.from_settings(settings, self.files, self.store)
        else:
            self.executor = LocalExecutor(self.runner)
        self.scheduler = Scheduler(self.store, self.executor, config, remove_files=self._remove_files)
        self.started = False
        self._closed = False

    async def _remove_files(self, rels: list[str]) -> None:
        """The scheduler's way to delete a finished chain's intermediate audio (generation/chain.py)."""
        def remove() -> None:
            for rel in rels:
                self.files.remove(rel)

        await asyncio.to_thread(remove)

    async def load_model(self):
        """Load the default model in the model thread now, so a bad id fails at start and not on the first job."""
        if self.settings.redis_url:  # [redis scale-out] the workers load the model (`python bot.py worker`)
            return None
        return await self.executor.in_model_thread(self.models.get, self.settings.model)

    async def start(self) -> None:
        self.started = True
        await self.scheduler.start()

    async def close(self, grace_s: float = 30.0) -> None:
        """Idempotent: stop the queue (running jobs finish within grace_s or are requeued), then the database."""
        if self._closed:
            return
        self._closed = True
        await self.scheduler.stop(grace_s)
        self.db.close()


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "huggingface_hub", "discord.gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- one-shot commands through the queue ----------------------------------------------------------------------


class CollectingSink:
    """Delivery for the command line: copies each finished job's files to the output folder."""

    def __init__(self, files, out_dir: Path) -> None:
        self.files = files
        self.out_dir = out_dir
        self.delivered: dict[str, list[dict]] = {}
        self.failed: dict[str, str] = {}
        self.events: dict[str, asyncio.Event] = {}

    def waiter(self, job_id: str) -> asyncio.Event:
        return self.events.setdefault(job_id, asyncio.Event())

    async def deliver(self, job, tracks) -> None:
        from generation.jobs import JobState

        if job.state is not JobState.DONE:
            self.failed[job.id] = job.error or job.state.value
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            rows = []
            for track in tracks:
                paths = {}
                for kind in ("mp3", "png", "flac"):
                    src = self.files.absolute(getattr(track, kind))
                    dest = self.out_dir / src.name
                    await asyncio.to_thread(shutil.copyfile, src, dest)
                    paths[kind] = str(dest)
                rows.append({**paths, "duration_s": track.duration_s, "seed": track.seed, "prompt": track.prompt,
                             "track_id": track.id, "job_id": job.id, "model": track.model,
                             "variation": track.variation})
            self.delivered[job.id] = rows
        self.waiter(job.id).set()


def progress_printer(job_ids: set[str], quiet: bool):
    """A text progress bar on stderr driven by the scheduler's events."""
    from generation.scheduler import EventKind

    state = {"last": ""}

    def on_event(event) -> None:
        if quiet or event.job_id not in job_ids:
            return
        if event.kind is EventKind.PROGRESS and event.total:
            filled = int(30 * event.step / event.total)
            eta = f" ~{event.eta_s:.0f}s left" if event.eta_s else ""
            part = f" {event.message}" if event.message else ""
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {event.step}/{event.total}{part}{eta}"
            if line != state["last"]:
                sys.stderr.write(line)
                sys.stderr.flush()
                state["last"] = line
            if event.step >= event.total:
                sys.stderr.write("\n")
        elif event.kind in (EventKind.QUEUED, EventKind.STARTED):
            sys.stderr.write(f"{event.kind.value}: job {event.job_id}\n")

    return on_event


async def run_jobs(settings: Settings, jobs, out_dir: Path, *, quiet: bool) -> tuple[list[dict], dict[str, str]]:
    engine = Engine(settings)
    try:
        await engine.load_model()
        sink = CollectingSink(engine.files, out_dir)
        await engine.scheduler.add_sink("cli", sink)
        engine.scheduler.listen(progress_printer({j.id for j in jobs}, quiet))
        await engine.start()
        for job in jobs:
            await engine.scheduler.submit(job)
        for job in jobs:
            await sink.waiter(job.id).wait()
        rows = [row for job in jobs for row in sink.delivered.get(job.id, [])]
        return rows, sink.failed
    finally:
        await engine.close()


def _sampling(args):
    from generation.types import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance=args.guidance)


def cmd_compose(settings: Settings, args) -> int:
    from generation.jobs import Job

    if not 0 < args.duration <= settings.max_duration_s:
        print(f"--duration must be more than 0 and at most {settings.max_duration_s:g} seconds "
              "(use `continue` to go longer).", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    job = Job(user_id="cli", prompt=args.prompt, duration_s=args.duration, model=args.model or settings.model,
              variations=args.variations, seed=seed, sampling=_sampling(args), delivery={"sink": "cli"})
    return _report(asyncio.run(run_jobs(settings, [job], Path(args.out), quiet=args.json)), args.json)


def cmd_continue(settings: Settings, args) -> int:
    from generation.jobs import Job, JobKind, Operation
    from generation.postprocess import write_flac
    from generation.upload import AudioDecodeError, UploadLimits, decode_audio_file
    from storage.files import FileStore

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    limits = UploadLimits(max_bytes=settings.max_upload_mb * 1024 * 1024, max_duration_s=300.0)
    try:
        audio = decode_audio_file(args.file, target_rate=32_000, channels=1, limits=limits)
    except AudioDecodeError as error:
        print(f"error: {error.user_message}", file=sys.stderr)
        return 2
    files = FileStore(settings.data_dir)
    job = Job(user_id="cli", prompt=args.prompt, duration_s=args.duration, model=args.model or settings.model,
              kind=JobKind.CONTINUE, operation=Operation.CONTINUE, variations=args.variations, seed=seed,
              sampling=_sampling(args), delivery={"sink": "cli"})
    rel = files.path_for(f"{job.id}in", "flac")
    files.absolute(rel).parent.mkdir(parents=True, exist_ok=True)
    write_flac(audio.samples, audio.sample_rate, files.absolute(rel))
    job.input_audio = rel
    job.spec["source_s"] = audio.samples.shape[-1] / audio.sample_rate  # long continuations run window by window
    return _report(asyncio.run(run_jobs(settings, [job], Path(args.out), quiet=args.json)), args.json)


def _report(result: tuple[list[dict], dict[str, str]], as_json: bool) -> int:
    rows, failed = result
    for job_id, message in failed.items():
        print(f"error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['mp3']}  ({row['duration_s']:.2f} s, seed {row['seed']})")
    return 1 if failed else 0


# -- diagnostics and housekeeping -----------------------------------------------------------------------------


def cmd_doctor(settings: Settings, args) -> int:
    import platform
    import subprocess

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
    from generation.models import model_info

    for model_id in dict.fromkeys((settings.model, *settings.extra_models, settings.melody_model)):
        info = model_info(model_id)
        line("model", f"{model_id} ({info.family}): {model_cache_status(model_id)}; licence: {info.license}")
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
        line("discord", "DISCORD_TOKEN is set")
        doctor_discord = _discord_doctor()
        if doctor_discord is not None:
            for name, value, good in asyncio.run(doctor_discord(settings)):
                line(name, value, good)
    else:
        line("discord", "DISCORD_TOKEN is not set: `python bot.py` starts the console instead")
    return 0 if ok else 1


def _discord_doctor():
    try:
        from bot.discord.doctor import check_discord
    except ImportError:
        return None
    return check_discord


def model_cache_status(model_id: str) -> str:
    if Path(model_id).is_dir():
        return "local folder"
    try:
        from huggingface_hub import try_to_load_from_cache

        # transformers checkpoints have config.json at the top, diffusers pipelines model_index.json
        cached = try_to_load_from_cache(model_id, "config.json")
        if not isinstance(cached, str):
            cached = try_to_load_from_cache(model_id, "model_index.json")
    except Exception:  # noqa: BLE001
        cached = None
    if isinstance(cached, str):
        return "in the local cache"
    return f"not downloaded yet: run `python bot.py download {model_id}` (several GB for the larger models)"


def cmd_download(settings: Settings, args) -> int:
    models = [args.model] if args.model else list(dict.fromkeys((settings.model, *settings.extra_models,
                                                                  settings.melody_model)))
    for model_id in models:
        if Path(model_id).is_dir():
            print(f"{model_id} is a local folder; nothing to download")
            continue
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


def cmd_backup(settings: Settings, args) -> int:
    from storage.backup import backup

    dest = backup(settings.db_path, settings.data_dir, Path(args.path))
    print(f"backup written to {dest}")
    return 0


def cmd_restore(settings: Settings, args) -> int:
    from storage.backup import restore

    restore(Path(args.path), settings.data_dir)
    print(f"restored {args.path} into {settings.data_dir}")
    return 0


# -- long-running jobs ----------------------------------------------------------------------------------------


def cmd_run(settings: Settings, args) -> int:
    if settings.discord_token:
        return cmd_discord(settings, args)
    print("DISCORD_TOKEN is not set, so Bandmate starts in the console. To run it on Discord, create an application "
          "at https://discord.com/developers/applications, copy its bot token into .env as DISCORD_TOKEN=..., "
          "and see the README for the invite link.", file=sys.stderr)
    return cmd_console(settings, args)


def cmd_console(settings: Settings, args) -> int:
    from bot.console import run_console

    return asyncio.run(run_console(settings, Engine, sys.stdin, sys.stdout))


def cmd_discord(settings: Settings, args) -> int:
    from bot.discord.client import run_discord

    return asyncio.run(run_discord(settings, Engine))


def cmd_worker(settings: Settings, args) -> int:
    from generation.remote import run_worker

    if not settings.redis_url:
        print("error: BANDMATE_REDIS_URL is not set; a worker takes its jobs from Redis.", file=sys.stderr)
        return 2
    return asyncio.run(run_worker(settings))


# -- command line ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bot.py", description="Bandmate: make music with people on Discord.")
    sub = parser.add_subparsers(dest="command")

    def sampling_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--variations", type=int, default=1, choices=range(1, 5), metavar="N", help="1 to 4")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--temperature", type=float, default=1.0)
        p.add_argument("--top-k", dest="top_k", type=int, default=250)
        p.add_argument("--top-p", dest="top_p", type=float, default=0.0)
        p.add_argument("--guidance", type=float, default=3.0)
        p.add_argument("--model", default=None, help="hub id or local folder (default: BANDMATE_MODEL)")
        p.add_argument("--out", default="out", help="folder for the MP3s, PNGs and FLAC masters")
        p.add_argument("--json", action="store_true", help="print a JSON list, one object per variation")

    compose = sub.add_parser("compose", help="text to music")
    compose.add_argument("prompt")
    compose.add_argument("--duration", type=float, default=8.0, help="seconds")
    sampling_options(compose)
    compose.set_defaults(func=cmd_compose)

    cont = sub.add_parser("continue", help="continue an audio file")
    cont.add_argument("file")
    cont.add_argument("--prompt", default="")
    cont.add_argument("--duration", type=float, default=10.0, help="seconds to add (the whole piece up to 5 min)")
    sampling_options(cont)
    cont.set_defaults(func=cmd_continue)

    sub.add_parser("doctor", help="check the set-up").set_defaults(func=cmd_doctor)
    download = sub.add_parser("download", help="fetch models into the cache ahead of time")
    download.add_argument("model", nargs="?")
    download.set_defaults(func=cmd_download)
    backup = sub.add_parser("backup", help="online backup of the database and audio")
    backup.add_argument("path")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a backup into the data directory (bot stopped)")
    restore.add_argument("path")
    restore.set_defaults(func=cmd_restore)
    sub.add_parser("console", help="the bot in this terminal").set_defaults(func=cmd_console)
    sub.add_parser("discord", help="the Discord bot").set_defaults(func=cmd_discord)
    sub.add_parser("worker", help="a GPU worker taking jobs from Redis").set_defaults(func=cmd_worker)
    parser.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        from dotenv import load_dotenv

        load_dotenv(override=False)
    except ImportError:
        pass
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    from generation.backend import ModelLoadError

    try:
        return args.func(settings, args)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

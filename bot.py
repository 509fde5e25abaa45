#!/usr/bin/env python
"""Bandmate's command line: parses the arguments and hands them to the application (app/).

    python bot.py                      the Discord bot (DISCORD_TOKEN set) or else the console
    python bot.py compose "PROMPT" --duration 8 --variations 2 --seed 1 --out out/ [--json]
    python bot.py continue FILE --prompt "..." --duration 10 --out out/ [--json]
    python bot.py doctor | download [MODEL|audioseal|ace-step] | backup PATH | restore BACKUP | worker | console | status
    python bot.py verify FILE [--json]     exit 0 when this server's Bandmate made the file, unchanged; else 1
    python bot.py compose "PROMPT" --lyrics TEXT|@FILE [--language en] [--bpm N] [--key "C major"] [--json]
    python bot.py replace TRACK_FILE --start S --end S [--prompt ...] [--lyrics ...] | cover FILE --style "..."
    python bot.py stems FILE --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bot.py", description="Bandmate: make music with people on Discord.")
    sub = parser.add_subparsers(dest="command")

    def sampling_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--variations", type=int, default=1, choices=range(1, 5), metavar="N", help="1 to 4")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--temperature", type=float, default=None, help="default 1.0")
        p.add_argument("--top-k", dest="top_k", type=int, default=None, help="default 250")
        p.add_argument("--top-p", dest="top_p", type=float, default=None, help="default 0 (off)")
        p.add_argument("--guidance", type=float, default=None, help="default: the model family's (MusicGen 3)")
        p.add_argument("--model", default=None, help="hub id or local folder (default: BANDMATE_MODEL)")
        p.add_argument("--out", default="out", help="folder for the MP3s, PNGs and FLAC masters")
        p.add_argument("--json", action="store_true", help="print a JSON list, one object per variation")

    compose = sub.add_parser("compose", help="text to music")
    compose.add_argument("prompt")
    compose.add_argument("--duration", type=float, default=None, help="seconds (default 8; with --lyrics: as long "
                                                                       "as the lyrics need)")
    compose.add_argument("--lyrics", default=None, help="a song's words ([verse]/[chorus] tags), or @FILE (ACE-Step)")
    compose.add_argument("--language", default=None, help="the sung language, e.g. en (ACE-Step)")
    compose.add_argument("--bpm", type=int, default=None, help="tempo (ACE-Step)")
    compose.add_argument("--key", default=None, help='e.g. "C major" (ACE-Step)')
    sampling_options(compose)

    replace = sub.add_parser("replace", help="make a range of a track anew (ACE-Step)")
    replace.add_argument("file", help="a track made here (its MP3/FLAC) or any audio file")
    replace.add_argument("--start", type=float, required=True, help="seconds")
    replace.add_argument("--end", type=float, required=True, help="seconds")
    replace.add_argument("--prompt", default="", help="what the range becomes")
    replace.add_argument("--lyrics", default=None, help="new words for the range, or @FILE")
    sampling_options(replace)

    cover = sub.add_parser("cover", help="remake an audio file in another style (ACE-Step)")
    cover.add_argument("file")
    cover.add_argument("--style", required=True)
    cover.add_argument("--strength", type=float, default=None, help="0 to 1: how much of its structure stays (0.8)")
    sampling_options(cover)

    stems = sub.add_parser("stems", help="split an audio file into stems (ACE-Step)")
    stems.add_argument("file")
    sampling_options(stems)

    cont = sub.add_parser("continue", help="continue an audio file")
    cont.add_argument("file")
    cont.add_argument("--prompt", default="")
    cont.add_argument("--duration", type=float, default=10.0, help="seconds to add (the whole piece up to 5 min)")
    sampling_options(cont)

    sub.add_parser("doctor", help="check the set-up")
    download = sub.add_parser("download", help="fetch models into the cache ahead of time")
    download.add_argument("model", nargs="?")
    backup = sub.add_parser("backup", help="online backup of the database and audio")
    backup.add_argument("path")
    restore = sub.add_parser("restore", help="restore a backup into the data directory (bot stopped)")
    restore.add_argument("path")
    verify = sub.add_parser("verify", help="what a file's Content Credentials say (exit 0: trusted)")
    verify.add_argument("file")
    verify.add_argument("--json", action="store_true", help="one JSON object (signed, trusted, altered, ...)")
    sub.add_parser("console", help="the bot in this terminal")
    sub.add_parser("discord", help="the Discord bot")
    sub.add_parser("worker", help="a GPU worker taking jobs from Redis")
    sub.add_parser("status", help="queued and running jobs per user and model, from the database")
    return parser


def dispatch(settings, args) -> int:
    from app import commands
    from bot.core import ComposeOptions, Upload

    if args.command in ("replace", "cover", "stems") or (args.command == "compose" and args.lyrics is not None):
        from app import vocal_commands

        try:
            return getattr(vocal_commands, "compose_song" if args.command == "compose" else args.command)(settings, args)
        except OSError as error:
            print(f"error: cannot read {getattr(error, 'filename', '') or 'the file'}: {error.strerror}", file=sys.stderr)
            return 2
    if args.command == "compose" and args.duration is None:
        args.duration = 8.0
    if args.command in ("compose", "continue"):
        upload = None
        prompt = args.prompt
        if args.command == "continue":
            path = Path(args.file).expanduser()
            try:
                upload = Upload(path.name, path.read_bytes())
            except OSError as error:
                print(f"error: cannot read {args.file}: {error.strerror}", file=sys.stderr)
                return 2
        opts = ComposeOptions(prompt=prompt, duration_s=args.duration, variations=args.variations, seed=args.seed,
                              temperature=args.temperature, guidance=args.guidance, model=args.model,
                              top_k=args.top_k, top_p=args.top_p)
        return commands.one_shot(settings, opts, Path(args.out), as_json=args.json, upload=upload)
    simple = {"doctor": commands.doctor, "console": commands.console, "discord": commands.discord,
              "worker": commands.worker, "status": commands.status, None: commands.run}
    if args.command in simple:
        return simple[args.command](settings)
    if args.command == "verify":
        return commands.verify(settings, Path(args.file).expanduser(), as_json=args.json)
    if args.command == "download":
        return commands.download(settings, args.model)
    return {"backup": commands.backup, "restore": commands.restore}[args.command](settings, args.path)


def main(argv: list[str] | None = None) -> int:
    try:
        from dotenv import load_dotenv

        load_dotenv(override=False)
    except ImportError:
        pass
    args = build_parser().parse_args(argv)
    from app.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    from app.commands import setup_logging
    from app.services import StartupError
    from generation.backend import ModelLoadError

    setup_logging(settings.log_level)
    try:
        return dispatch(settings, args)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The console's song commands: `song` (sections, or words to sing), `cover` and `stems`, typed on one line.

They make the same core calls as Discord's /song, /cover and /stems (plan, then submit with the file read from
disk), so every check and refusal is the core's. Files stand in for attachments: `--reference FILE`,
`--lyrics @FILE`, and a path where a track id could be. Which model sings, covers or splits is the core's choice
(`ModelInfo` abilities, bot/vocals.py); the console only decides, as /song does, whether a song is sung (words, a
reference, a song option, or no sections) or built from sections.
"""

from __future__ import annotations

from pathlib import Path

from bot.core import Bandmate, Refusal, Request, SongOptions, Upload, UploadInfo
from generation.jobs import Job

MAX_LYRICS_FILE_BYTES = 64 * 1024  # as a Discord lyrics attachment
SUNG_OPTIONS = ("lyrics", "language", "bpm", "key", "duration", "reference")  # only a sung song has these
SONG_USAGE = ('Write song "PROMPT" --lyrics "[verse] line / line [chorus] line" [--language en] [--bpm 120] '
              '[--key "C major"] [--duration S] [--reference FILE], or song "PROMPT" "intro 8, verse 16, chorus 16, '
              'outro 8" [--melody-chorus].')
SECTIONS_USAGE = ('Give the song its sections: song "PROMPT" "intro 8, verse 16, chorus 16, outro 8" '
                  "(songs with words need an ACE-Step model, and none is offered here).")

HELP = """Songs (ACE-Step):
• song "PROMPT" --lyrics "[verse] line / line [chorus] line" [--language en] [--bpm 120] [--key "C major"]
  [--duration S] [--reference FILE] [--seed N]: a sung song; --lyrics @FILE reads the words from a text file;
  no lyrics: an instrumental; --reference: a file whose sound the song takes
• song "PROMPT" "intro 8, verse 16, chorus 16, outro 8" [--melody-chorus]: a song built from sections
• cover TRACK|FILE STYLE [--strength 0.8]: the same song in another style
• stems TRACK|FILE: vocals, drums, bass and the rest, one file each
• reply TRACK redo the bridge | replace 0:40-0:55 with a guitar solo | change the second chorus to: new / lines |
  make the intro calmer: a part of a song made anew"""


def split_options(args: list[str], names: tuple[str, ...], flags: tuple[str, ...] = ()) \
        -> tuple[list[str], dict[str, str], set[str]]:
    """The words, the `--name VALUE` options among `names` and the `--flag`s among `flags`; anything else
    (a preset's `--name`) stays a word, for the core to expand."""
    words: list[str] = []
    options: dict[str, str] = {}
    seen: set[str] = set()
    i = 0
    while i < len(args):
        name = args[i][2:].lower() if args[i].startswith("--") else None
        if name in flags:
            seen.add(name)
            i += 1
        elif name in names:
            if i + 1 >= len(args):
                raise Refusal(f"--{name} needs a value.")
            options[name] = args[i + 1]
            i += 2
        else:
            words.append(args[i])
            i += 1
    return words, options, seen


def _number(options: dict[str, str], name: str, kind: type):
    if name not in options:
        return None
    try:
        return kind(options[name].rstrip("s") if kind is float else options[name])
    except ValueError:
        raise Refusal(f"--{name} takes a number, not {options[name][:20]!r}.") from None


def _file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise Refusal(f"I can't find the file {text[:200]}.")
    return path


def read_lyrics(value: str) -> str:
    """`--lyrics TEXT` as typed (" / " breaks a line; the core reads that), or `--lyrics @FILE` from a UTF-8 file."""
    if not value.startswith("@"):
        return value
    path = _file(value[1:])
    if path.stat().st_size > MAX_LYRICS_FILE_BYTES:
        raise Refusal("That lyrics file is too large; lyrics can be up to 4000 characters.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Refusal("The lyrics file must be plain text (UTF-8).") from None


async def song(core: Bandmate, request: Request, args: list[str]) -> Job:
    """`song "PROMPT" --lyrics ...` (sung) or `song "PROMPT" "SECTIONS"` (built from sections), as /song decides."""
    words, options, flags = split_options(args, SUNG_OPTIONS + ("seed",), ("melody-chorus",))
    if not words:
        raise Refusal(SONG_USAGE)
    seed = _number(options, "seed", int)
    sung = any(name in options for name in SUNG_OPTIONS) or len(words) == 1
    if not sung:
        chorus = "melody" if "melody-chorus" in flags else "reuse"
        return await core.song(request, words[0], " ".join(words[1:]), seed=seed, chorus=chorus)
    if not options and not core.offers("lyrics"):
        raise Refusal(SECTIONS_USAGE)  # `song "jazz"` on a server that cannot sing: it wanted sections
    opts = SongOptions(prompt=" ".join(words), lyrics=read_lyrics(options.get("lyrics", "")),
                       language=options.get("language"), bpm=_number(options, "bpm", int), key=options.get("key"),
                       duration_s=_number(options, "duration", float), seed=seed)
    reference = _file(options["reference"]) if "reference" in options else None
    info = UploadInfo(reference.name, reference.stat().st_size) if reference is not None else None
    plan = await core.plan_lyric_song(request, opts, info)  # every check before the file is read
    return await core.submit(plan, Upload(reference.name, reference.read_bytes()) if reference is not None else None)


def _source(target: str) -> tuple[str | None, Path | None]:
    """A track id, or a file on disk (a path that exists)."""
    path = Path(target).expanduser()
    if path.is_file():
        return None, path
    if "/" in target or path.suffix:  # track ids have neither: this was meant as a file
        raise Refusal(f"I can't find the file {target[:200]}.")
    return target, None


async def cover(core: Bandmate, request: Request, args: list[str]) -> Job:
    """`cover TRACK|FILE STYLE [--strength 0.8]`."""
    words, options, _ = split_options(args, ("strength",))
    if len(words) < 2:
        raise Refusal("Write cover TRACK|FILE STYLE [--strength 0.8], e.g. cover abc123 acoustic folk, female "
                      "singer.")
    track_id, path = _source(words[0])
    info = UploadInfo(path.name, path.stat().st_size) if path is not None else None
    plan = await core.plan_cover(request, " ".join(words[1:]), track_id=track_id, upload=info,
                                 strength=_number(options, "strength", float))
    return await core.submit(plan, Upload(path.name, path.read_bytes()) if path is not None else None)


async def stems(core: Bandmate, request: Request, args: list[str]) -> Job:
    """`stems TRACK|FILE`."""
    if len(args) != 1:
        raise Refusal("Write stems TRACK|FILE, e.g. stems abc123 or stems ~/song.mp3.")
    track_id, path = _source(args[0])
    info = UploadInfo(path.name, path.stat().st_size) if path is not None else None
    plan = await core.plan_stems(request, track_id=track_id, upload=info)
    return await core.submit(plan, Upload(path.name, path.read_bytes()) if path is not None else None)

"""ACE-Step in the console, end to end: `python bot.py console` fed line by line like a person at a terminal, on the
tiny fixtures. A sung song (lyrics from a file; the MP3 decoded for its length; the words shown with the result),
replies that replace a section by name or by time (new tracks with operation replace), a cover, stems (one file
per stem), MusicGen's sections song still working, and the refusals (unknown section, a range past the end, a
family that cannot repaint, bad options), each printed as plain text with nothing queued. Then the limits
`.env.example` ships: a person replying right after a result is served is never held back."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

try:
    from botprocess import shipped_settings
    from consoleprocess import Console
except ImportError:  # tests/ as a package
    from tests.botprocess import shipped_settings
    from tests.consoleprocess import Console

ROOT = Path(__file__).resolve().parent.parent
ACE = ROOT / "tests" / "fixtures" / "tiny-ace-step"
MUSICGEN = ROOT / "tests" / "fixtures" / "tiny-musicgen"
MP3_FRAME_S = 1152 / 48_000
LYRICS = ("[intro]\n[verse]\nwalking down the street tonight\nlights are shining bright\n"
          "[chorus]\noh we sing\n[verse]\nmorning comes again\n[chorus]\noh we sing\n[bridge]\nhold on\n[outro]\n")


def mp3_seconds(path: Path) -> float:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    return len(np.frombuffer(raw, dtype=np.float32)) / 48_000


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """MusicGen as the server's model, ACE-Step offered beside it (it sings, replaces, covers, splits)."""
    data = tmp_path_factory.mktemp("console-ace")
    console = Console(data, BANDMATE_MODEL=str(MUSICGEN), BANDMATE_MODELS=str(ACE), BANDMATE_USER_PENDING="20",
                      BANDMATE_RATE_BURST="50")
    console.expect(r"Bandmate console")
    yield console
    assert console.close() == 0
    console.assert_clean()


SONG: dict[str, str] = {}


def test_a_sung_song_from_a_lyrics_file_shows_its_words(console):
    words = console.data / "song.txt"
    words.write_text(LYRICS, encoding="utf-8")
    console.ask(f'song "indie pop" --lyrics @{words} --language en --bpm 120 --key "c minor" --duration 8 --seed 2',
                r"job (\w+): Composing: indie pop")
    (track,) = console.results(1)
    shown = console.seen[-25:]
    assert any("tiny-ace-step" in line for line in shown) and any("Sections: Intro" in line for line in shown)
    assert "  walking down the street tonight" in shown and "  [bridge]" in shown  # the lyrics, line by line
    stored = console.track(track)
    assert stored["params"]["lyrics"] == LYRICS.strip() and stored["params"]["key"] == "C minor"
    assert str(stored["mp3"]) in " ".join(shown)
    assert abs(mp3_seconds(stored["mp3"]) - 8.0) <= MP3_FRAME_S
    SONG["track"] = track


def test_inline_lyrics_and_a_reference_upload(console, tmp_path):
    rate = 32_000
    tune = tmp_path / "like-this.wav"
    sf.write(tune, (0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * rate) / rate)).astype(np.float32), rate)
    console.ask(f'song "dream pop" --lyrics "[verse] la la la / over the sea [chorus] oh" --duration 3 '
                f'--reference {tune} --seed 4', r"job \w+: Composing: dream pop")
    (track,) = console.results(1)
    assert "  la la la" in console.seen and "  over the sea" in console.seen  # " / " broke the line
    stored = console.track(track)
    assert stored["params"]["lyrics"] == "[verse]\nla la la\nover the sea\n[chorus]\noh"
    assert abs(mp3_seconds(stored["mp3"]) - 3.0) <= MP3_FRAME_S


def test_replies_replace_a_section_by_name_or_by_time(console):
    track = SONG["track"]
    sections = console.track(track)["params"]["sections"]
    bridge = next(s for s in sections if s["label"] == "Bridge")
    replies = ["redo the bridge", "replace 0:01-0:03 with a guitar solo",
               "change the second chorus to: sing it louder / right now", "make the intro calmer"]
    jobs = []
    for text in replies:
        jobs.append(console.ask(f"reply {track} {text}", r"job (\w+): Replacing a part").group(1))
    new = console.results(len(replies))
    assert any(line.startswith("Replaced 0:01-0:03") for line in console.seen)
    by_job = {console.track(t)["job_id"]: console.track(t) for t in new}
    assert set(by_job) == set(jobs)
    for job_id in jobs:
        stored = by_job[job_id]
        assert stored["operation"] == "replace" and stored["parent"] == track
        assert abs(mp3_seconds(stored["mp3"]) - 8.0) <= MP3_FRAME_S
    named, ranged, words, calmer = (by_job[j] for j in jobs)
    assert named["params"]["replace"] == {"start_s": bridge["start_s"], "end_s": bridge["end_s"]}
    assert ranged["params"]["replace"] == {"start_s": 1.0, "end_s": 3.0}
    assert "sing it louder\nright now" in words["params"]["lyrics"]
    assert words["params"]["lyrics"].count("oh we sing") == 1
    assert calmer["params"]["replace"]["start_s"] == 0.0


def test_a_cover_of_a_track(console):
    track = SONG["track"]
    console.ask(f"cover {track} acoustic folk, female singer --strength 0.7", r"job \w+: Covering: acoustic folk")
    (covered,) = console.results(1)
    stored = console.track(covered)
    assert stored["operation"] == "cover" and stored["parent"] == track
    assert abs(mp3_seconds(stored["mp3"]) - 8.0) <= MP3_FRAME_S


def test_stems_of_a_file_one_path_each(console, tmp_path):
    rate = 44_100
    wav = tmp_path / "tune.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 330 * np.arange(int(2.5 * rate)) / rate)).astype(np.float32), rate)
    console.ask(f"stems {wav}", r"job \w+: Splitting into stems")
    paths = {}
    for stem in ("vocals", "drums", "bass", "other"):
        paths[stem] = Path(console.expect(rf"^  {stem} stem: (\S+\.mp3)$").group(1))
    for path in paths.values():
        assert path.is_file() and abs(mp3_seconds(path) - 2.5) <= MP3_FRAME_S
    assert len(set(paths.values())) == 4


def test_musicgen_songs_from_sections_still_work(console):
    console.ask('song "lofi beat" "intro 2, verse 2" --seed 1', r"job \w+: Composing: lofi beat")
    (track,) = console.results(1)
    assert any(line.startswith("Sections: intro 2s, verse 2s") for line in console.seen[-12:])
    assert console.track(track)["operation"] == "compose"


def test_refusals_are_plain_text_and_queue_nothing(console):
    track = SONG["track"]
    console.ask("/compose piano --duration 1 --seed 1", r"job \w+: Composing: piano")
    (musicgen,) = console.results(1)
    before = console.jobs()
    console.ask(f"reply {track} redo the third chorus", r"no third chorus")
    assert re.search(r"Intro 0:00-0:\d\d.*Bridge", console.seen[-1])  # the hint lists the sections with times
    console.ask(f"reply {track} replace 0:05-0:40 with drums", r"runs past its end")
    assert "0:08 long" in console.seen[-1]
    console.ask(f"reply {musicgen} replace 0:00-0:01 with drums", r"can't repaint")
    console.ask(f"stems {musicgen} extra", r"Write stems TRACK\|FILE")
    console.ask('song "x" --lyrics @/no/such/lyrics.txt', r"can't find the file /no/such/lyrics.txt")
    console.ask('song "x" --lyrics "[verse] la" --bpm fast', r"--bpm takes a number")
    console.ask('song "x" --lyrics "[verse] la" --bpm 500', r"bpm must be between 30 and 300")
    console.ask(f"cover {track} jazz --strength 2", r"strength must be between 0 and 1")
    console.ask("cover nosuchtrack jazz", r"can't find that track")
    assert console.jobs() == before
    assert not [line for line in console.seen if re.search(r"^job \w+: (Replacing|Covering|Splitting)", line)
                and line in console.seen[-12:]]


def test_help_lists_the_song_commands(console):
    console.ask("help", r"Bandmate makes music")
    shown = "\n".join(console.answer)
    for words in ("--lyrics", "cover TRACK|FILE STYLE", "stems TRACK|FILE", "redo the bridge",
                  "replace 0:40-0:55 with a guitar solo", "/compose PROMPT"):
        assert words in shown, words


def test_with_the_shipped_limits_a_reply_right_after_a_result_is_never_held(tmp_path):
    settings = shipped_settings()
    assert settings["BANDMATE_RATE_BURST"] == "3" and settings["BANDMATE_USER_PENDING"] == "3"
    console = Console(tmp_path / "shipped", **settings, BANDMATE_MODEL=str(ACE))
    try:
        console.expect(r"Bandmate console")
        # The burst at once: three songs (the most one person may have waiting, too).
        for n in range(3):
            console.send(f'song "take {n}" --lyrics "[verse] la la / la [chorus] oh oh" --duration 2 --seed {n}')
        first = console.results(1)[0]
        # Right after the first is served, its owner replies: queued at once, never "starts in" (rate limit).
        console.ask(f"reply {first} redo the chorus", r"job (\w+): Replacing a part")
        assert "starts in" not in console.seen[-1]
        new = console.results(3)  # the other two songs and the replaced part, all served
        replaced = [t for t in new if console.track(t)["operation"] == "replace"]
        assert len(replaced) == 1 and console.track(replaced[0])["parent"] == first
        assert abs(mp3_seconds(console.track(replaced[0])["mp3"]) - 2.0) <= MP3_FRAME_S
    finally:
        assert console.close() == 0
    console.assert_clean()


def test_without_an_ace_step_model_the_song_commands_say_what_is_needed(tmp_path):
    console = Console(tmp_path / "musicgen-only", BANDMATE_MODEL=str(MUSICGEN))
    try:
        console.expect(r"Bandmate console")
        console.ask('song "jazz"', r'Give the song its sections: song "PROMPT" "intro 8, verse 16')
        console.ask('song "jazz" --lyrics "[verse] la la"', r"Songs with lyrics need an ACE-Step model")
        wav = tmp_path / "tune.wav"
        sf.write(wav, np.zeros(16_000, dtype=np.float32), 16_000)
        console.ask(f"cover {wav} rock", r"Covers need an ACE-Step model")
        console.ask(f"stems {wav}", r"Stems need an ACE-Step model")
        console.ask("stems no/such/file.mp3", r"can't find the file no/such/file.mp3")
        console.ask("help", r"Bandmate makes music")
        assert console.jobs() == 0
    finally:
        assert console.close() == 0
    console.assert_clean()

"""ACE-Step end to end: `python bot.py` with the tiny ACE-Step fixture against the fake Discord (every body checked
against Discord's OpenAPI spec). /song with lyrics, a thread reply that replaces a section, /cover, the 🎚 stems
button; every posted MP3 is decoded and its length checked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

try:
    from botprocess import fake, no_spec_violations, running_bot  # noqa: F401 - shared fixtures
except ImportError:  # tests/ as a package
    from tests.botprocess import fake, no_spec_violations, running_bot  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ACE = ROOT / "tests" / "fixtures" / "tiny-ace-step"
FRAME_S = 1152 / 48_000
SONG_S = 6.0

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    async for process in running_bot(fake, tmp_path_factory.mktemp("ace-data"), BANDMATE_MODEL=str(ACE)):
        yield process


def mp3s(message) -> list:
    return [a for a in message.attachments if a.filename.endswith(".mp3")]


def seconds(data: bytes, tmp: Path) -> float:
    path = tmp / "x.mp3"
    path.write_bytes(data)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    return len(np.frombuffer(raw, dtype=np.float32)) / 48_000


SEEN: set[int] = set()
RESULTS: dict = {}


async def command(fake, name, options, *, attachments=None, timeout=120):
    interaction = await fake.slash(name, options, attachments=attachments)
    await fake.wait_for_callback(interaction, timeout=5)
    result = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)) and m.id not in SEEN,
                                         timeout=timeout)
    SEEN.add(result.id)
    return result


async def test_song_with_lyrics_is_sung_posted_and_its_thread_shows_lyrics_and_sections(fake, bot, tmp_path):
    result = await command(fake, "song", {"prompt": "indie pop", "duration": SONG_S, "seed": 4, "bpm": 120,
                                          "lyrics": "[verse] walking down the street / under the lights "
                                                    "[chorus] oh we sing"})
    (song,) = mp3s(result)
    assert abs(seconds(song.data, tmp_path) - SONG_S) <= FRAME_S
    assert "Sections: Verse" in result.content
    assert any(i.startswith("bandmate:stems:") for i in result.custom_ids)
    thread = await fake.wait_until(lambda: fake.message(result.id).thread_id, timeout=10, what="a thread")
    intro = await fake.wait_for_message(thread, lambda m: "Lyrics" in m.content, timeout=10)
    assert "under the lights" in intro.content and "redo the bridge" in intro.content
    RESULTS.update(song=result, thread=thread, track=song.filename[len("bandmate-"):-len(".mp3")])


async def test_a_thread_reply_replaces_the_chorus(fake, bot, tmp_path):
    thread = RESULTS["thread"]
    await fake.post(thread, "redo the chorus with a choir", user=fake.user)
    replaced = await fake.wait_for_message(thread, lambda m: bool(mp3s(m)), timeout=120)
    assert "part replaced" in replaced.content
    assert abs(seconds(mp3s(replaced)[0].data, tmp_path) - SONG_S) <= FRAME_S
    await fake.post(thread, "redo the bridge", user=fake.user)
    hint = await fake.wait_for_message(thread, lambda m: "no bridge" in m.content, timeout=10)
    assert "Verse" in hint.content and "Chorus" in hint.content


async def test_a_thread_reply_adds_an_instrument(fake, bot, tmp_path):
    thread = RESULTS["thread"]
    await fake.post(thread, "add a guitar part", user=fake.user)
    added = await fake.wait_for_message(thread, lambda m: bool(mp3s(m)) and "part added" in m.content, timeout=120)
    assert abs(seconds(mp3s(added)[0].data, tmp_path) - SONG_S) <= FRAME_S


async def test_cover_of_the_song(fake, bot, tmp_path):
    result = await command(fake, "cover", {"style": "acoustic folk", "track": RESULTS["track"], "strength": 0.6})
    assert "cover" in result.content
    assert abs(seconds(mp3s(result)[0].data, tmp_path) - SONG_S) <= FRAME_S


async def test_the_stems_button_posts_one_mp3_per_stem(fake, bot, tmp_path):
    song = RESULTS["song"]
    button = next(i for i in song.custom_ids if i.startswith("bandmate:stems:"))
    click = await fake.click(song, button)
    await fake.wait_for_callback(click, timeout=5)
    stems = await fake.wait_for_message(fake.text_channel, lambda m: "Stems" in m.content and bool(mp3s(m))
                                        and m.id not in SEEN, timeout=120)
    SEEN.add(stems.id)
    names = [a.filename.rsplit("-", 1)[-1] for a in mp3s(stems)]
    assert names == ["vocals.mp3", "drums.mp3", "bass.mp3", "other.mp3"]
    for attachment in mp3s(stems):
        assert abs(seconds(attachment.data, tmp_path) - SONG_S) <= FRAME_S


async def test_long_lyrics_typed_in_the_form_keep_their_lines(fake, bot, tmp_path):
    shown = await fake.slash("song", {"prompt": "folk ballad", "duration": 4.0, "seed": 2, "lyrics_form": True})
    await fake.wait_for_callback(shown, timeout=5)
    assert shown.response_type == 9  # the form, not a deferral: the words are not known yet
    words = "[verse]\nriver running slow\nunder northern skies\n[chorus]\nhome again"
    submitted = await fake.submit_modal(shown, {"bandmate:lyrics": words})
    await fake.wait_for_callback(submitted, timeout=5)
    result = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)) and m.id not in SEEN,
                                         timeout=120)
    SEEN.add(result.id)
    assert abs(seconds(mp3s(result)[0].data, tmp_path) - 4.0) <= FRAME_S
    thread = await fake.wait_until(lambda: fake.message(result.id).thread_id, timeout=10, what="a thread")
    intro = await fake.wait_for_message(thread, lambda m: "Lyrics" in m.content, timeout=10)
    assert "river running slow\nunder northern skies" in intro.content

    refused = await fake.slash("song", {"prompt": "folk", "lyrics_form": True})
    await fake.wait_for_callback(refused, timeout=5)
    blocked = await fake.submit_modal(refused, {"bandmate:lyrics": "[verse]\n" + "la la\n" * 170})
    callback = await fake.wait_for_callback(blocked, timeout=5)
    assert blocked.response_type == 4 and "lines" in callback.json["data"]["content"]

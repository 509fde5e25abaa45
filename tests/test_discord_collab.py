"""The collaborator end to end: the real bot against the fake Discord (taste, extend, song, remix, voting)."""

from __future__ import annotations

import io
import sqlite3
import subprocess

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from mutagen.id3 import ID3

try:
    from botprocess import fake, no_spec_violations, running_bot  # noqa: F401 - shared fixtures
except ImportError:  # tests/ as a package
    from tests.botprocess import fake, no_spec_violations, running_bot  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    async for process in running_bot(fake, tmp_path_factory.mktemp("collab-data"), BANDMATE_VOTING_WINDOW_S="3"):
        yield process


def mp3s(message) -> list:
    return [a for a in message.attachments if a.filename.endswith(".mp3")]


def seconds_of(data: bytes, tmp) -> float:
    path = tmp / "x.mp3"
    path.write_bytes(data)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "32000", "-"],
                         capture_output=True, check=True).stdout
    return len(raw) / 4 / 32000


async def command(fake, name, options, *, user=None, attachments=None, match=None, timeout=120):
    """Run a slash command and wait for the posted result (the message with an MP3 that answers it)."""
    before = {m.id for m in fake.messages_in(fake.text_channel)}
    interaction = await fake.slash(name, options, user=user or fake.user, attachments=attachments)
    await fake.wait_for_callback(interaction, timeout=5)
    return await fake.wait_for_message(
        fake.text_channel, lambda m: m.id not in before and bool(mp3s(m)) and (match is None or match in m.content),
        timeout=timeout)


async def click_and_wait(fake, message, custom_id, user, match):
    before = {m.id for m in fake.messages_in(fake.text_channel)}
    click = await fake.click(message, custom_id, user=user)
    await fake.wait_for_callback(click, timeout=5)
    return await fake.wait_for_message(fake.text_channel, lambda m: m.id not in before and bool(mp3s(m))
                                       and match in m.content, timeout=120)


async def test_three_jazz_votes_then_more_like_this_blends_jazz(fake, bot):
    bob = await fake.add_user("bob")
    for prompt in ("smooth jazz trio", "late night jazz club", "jazz saxophone solo"):
        result = await command(fake, "compose", {"prompt": prompt, "duration": 1.0}, user=bob)
        vote = next(i for i in result.custom_ids if i.startswith("bandmate:vote:"))
        click = await fake.click(result, vote, user=fake.user)
        await fake.wait_for_callback(click, timeout=5)
    mine = await command(fake, "compose", {"prompt": "piano ballad", "duration": 1.0})
    like = next(i for i in mine.custom_ids if i.startswith("bandmate:like:"))
    more = await click_and_wait(fake, mine, like, fake.user, "Blended in your taste")
    assert "jazz" in more.content.split("Blended in your taste:")[1]


async def test_extend_to_sixty_seconds_posts_one_sixty_second_file(fake, bot, tmp_path):
    first = await command(fake, "compose", {"prompt": "ambient drone", "duration": 2.0})
    track_id = mp3s(first)[0].filename.removeprefix("bandmate-").removesuffix(".mp3")
    mark = len(fake.calls)
    longer = await command(fake, "extend", {"track": track_id, "seconds": 60.0}, match="extended")
    assert len(mp3s(longer)) == 1
    assert abs(seconds_of(mp3s(longer)[0].data, tmp_path) - 60.0) <= 1152 / 32000
    # 2 s + 58 s is three model windows, each a job of its own (two helpers, then the request itself) ...
    with sqlite3.connect(f"file:{bot.data / 'bandmate.db'}?mode=ro", uri=True) as db:
        helpers = db.execute("SELECT state FROM jobs WHERE spec LIKE '%window_of%'").fetchall()
    assert helpers == [("done",), ("done",)]
    assert not list(bot.data.glob("audio/*/*.wav"))  # their intermediate audio is gone
    # ... and the status message shows which window is being made.
    edits = [c.json.get("content", "") for c in fake.find_calls("PATCH", since=mark) if isinstance(c.json, dict)]
    assert any("window 1 of 3" in text for text in edits)


async def test_a_song_has_sections_and_chapters(fake, bot, tmp_path):
    song = await command(fake, "song", {"prompt": "synthwave drive",
                                        "sections": "intro 2, chorus 2, verse 2, chorus 2, outro 2"})
    assert "Sections: intro 2s, chorus 2s, verse 2s, chorus 2s, outro 2s" in song.content
    path = tmp_path / "song.mp3"
    path.write_bytes(mp3s(song)[0].data)
    assert [c.element_id for c in ID3(path).getall("CHAP")] and len(ID3(path).getall("CHAP")) == 5


async def test_remix_of_an_uploaded_arpeggio(fake, bot, tmp_path):
    rate = 44100
    t = np.arange(rate // 2) / rate
    arpeggio = np.concatenate([0.4 * np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0, 523.25)])
    buf = io.BytesIO()
    sf.write(buf, arpeggio.astype(np.float32), rate, format="WAV")
    remix = await command(fake, "remix", {"style": "jazz piano", "duration": 2.0},
                          attachments={"audio": ("arpeggio.wav", buf.getvalue())}, match="remix")
    assert abs(seconds_of(mp3s(remix)[0].data, tmp_path) - 2.0) <= 1152 / 32000


async def test_the_voting_window_closes_with_the_winner_marked(fake, bot):
    result = await command(fake, "compose", {"prompt": "funky bass", "duration": 1.0, "variations": 2})
    second = [i for i in result.custom_ids if i.startswith("bandmate:vote:")][1]
    click = await fake.click(result, second, user=fake.user)
    await fake.wait_for_callback(click, timeout=5)
    await fake.wait_until(lambda: "won with 1 vote" in fake.message(result.id).content, timeout=30,
                          what="the winner marked")
    assert "#2 won" in fake.message(result.id).content
    with sqlite3.connect(f"file:{bot.data / 'bandmate.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM voting_windows WHERE closed = 1 AND winner_track_id IS NOT NULL"
                          ).fetchone()[0] >= 1


async def test_presets_expand_in_compose(fake, bot):
    dave = await fake.add_user("dave")
    interaction = await fake.slash("prefer", {"name": "dreamy", "value": "soft pads, reverb"}, user=dave,
                                   subcommand="set")
    await fake.wait_for_callback(interaction, timeout=5)
    result = await command(fake, "compose", {"prompt": "piano --dreamy", "duration": 1.0}, user=dave)
    assert "piano soft pads, reverb" in result.content


async def test_forget_leaves_nothing_of_the_user(fake, bot):
    carol = await fake.add_user("carol")
    result = await command(fake, "compose", {"prompt": "carols jazz waltz", "duration": 1.0}, user=carol)
    vote = next(i for i in result.custom_ids if i.startswith("bandmate:vote:"))
    click = await fake.click(result, vote, user=carol)
    await fake.wait_for_callback(click, timeout=5)
    interaction = await fake.slash("forget", {"tracks": "delete"}, user=carol)
    await fake.wait_for_callback(interaction, timeout=5)
    confirm_msg = await fake.wait_until(
        lambda: next((fake.message(i) for i in [interaction.original_message_id, *interaction.followup_message_ids]
                      if i and fake.message(i).custom_ids), None), timeout=10, what="the confirmation")
    confirm = next(i for i, label in zip(confirm_msg.custom_ids, [
        c.get("label") for row in confirm_msg.components for c in row.get("components", [])]) if "Confirm" in label)
    click = await fake.click(confirm_msg, confirm, user=carol)
    await fake.wait_for_callback(click, timeout=5)
    user_id = str(carol.id)

    def traces() -> list[str]:
        found = []
        with sqlite3.connect(f"file:{bot.data / 'bandmate.db'}?mode=ro", uri=True) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for row in db.execute(f"SELECT * FROM {table}").fetchall():
                    if any(user_id in str(v) or "carols jazz" in str(v) for v in row if v is not None):
                        found.append(table)
        return found

    await fake.wait_until(lambda: not traces(), timeout=20, what="the user forgotten")
    # The person is told it is done (the confirmation's last edit), and nothing is left unsaid at shutdown.
    await fake.wait_until(lambda: "forgotten you" in fake.message(confirm_msg.id).content, timeout=20,
                          what="the forget answer")
    track_id = mp3s(result)[0].filename.removeprefix("bandmate-").removesuffix(".mp3")
    assert not list(bot.data.glob(f"audio/*/{track_id}.*"))

"""`/verify` and a reply `verify` through the real `python bot.py` against the fake Discord, with the settings of the
shipped .env.example: a posted (refit) Bandmate MP3, a foreign file, and a hostile corpus."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile
from dotenv import dotenv_values

try:
    from botprocess import ROOT, fake, no_spec_violations, running_bot  # noqa: F401 - shared fixtures
except ImportError:
    from tests.botprocess import ROOT, fake, no_spec_violations, running_bot  # noqa: F401

from generation.credentials import KEY_DIR_NAME, verify_with_key_dir
from generation.verification import CredentialStatus

pytestmark = pytest.mark.asyncio(loop_scope="module")

OURS = "Made by this server's Bandmate"
KEEP_FROM_TEST = {"BANDMATE_MODEL", "BANDMATE_MODELS", "BANDMATE_MELODY_MODEL", "BANDMATE_DATA"}
STATE: dict = {}


def shipped_env() -> dict[str, str]:
    """The .env.example's settings, except the models and the data folder (the tests' tiny ones)."""
    values = dotenv_values(ROOT / ".env.example")
    return {k: v or "" for k, v in values.items() if k.startswith("BANDMATE_") and k not in KEEP_FROM_TEST}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    data = tmp_path_factory.mktemp("verify-data")
    STATE["data"] = data
    async for process in running_bot(fake, data, **shipped_env()):
        yield process


def mp3s(message) -> list:
    return [a for a in message.attachments if a.filename.endswith(".mp3")]


async def verify_slash(fake, filename: str, data: bytes) -> str:
    interaction = await fake.slash("verify", {}, attachments={"file": (filename, data)})
    message = await fake.wait_for_message(
        fake.text_channel, lambda m: m.interaction_id == interaction.id and bool(m.content.strip("… ")), timeout=30)
    return message.content


def id3_size(data: bytes) -> int:
    assert data[:3] == b"ID3"
    return 10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9])


async def test_a_posted_refit_track_verifies(fake, bot, tmp_path):
    interaction = await fake.slash("compose", {"prompt": "warm rhodes chords", "duration": 3.0},
                                   attachment_size_limit=30_000)
    await fake.wait_for_callback(interaction, timeout=5)
    result = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)), timeout=120)
    STATE["result"] = result
    posted = mp3s(result)[0].data
    assert len(posted) <= 30_000  # refit below the default bitrate to fit
    path = tmp_path / "posted.mp3"
    path.write_bytes(posted)
    report = verify_with_key_dir(path, STATE["data"] / KEY_DIR_NAME)
    assert report.status is CredentialStatus.TRUSTED and report.operation == "compose"
    STATE["posted"] = posted
    STATE["track_id"] = report.track_id


async def test_verify_a_bandmate_track(fake, bot):
    text = await verify_slash(fake, "rhodes.mp3", STATE["posted"])
    assert OURS in text and STATE["track_id"] in text and "Altered after signing: no" in text
    assert str(fake.user.id) not in text and fake.user.username not in text


async def test_reply_verify_to_the_result(fake, bot):
    await fake.post(fake.text_channel, "verify", user=fake.user, reference=STATE["result"])
    reply = await fake.wait_for_message(fake.text_channel, lambda m: OURS in m.content and m.author.bot, timeout=30)
    assert STATE["track_id"] in reply.content


async def test_verify_a_foreign_file(fake, bot, tmp_path):
    wav = io.BytesIO()
    soundfile.write(wav, 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000, format="WAV")
    assert "No Content Credentials" in await verify_slash(fake, "mine.wav", wav.getvalue())


async def test_a_hostile_corpus_gets_clear_answers(fake, bot, tmp_path):
    posted = STATE["posted"]
    truncated = await verify_slash(fake, "cut.mp3", posted[: id3_size(posted) // 2])
    assert OURS not in truncated and truncated.strip()
    assert "isn't an audio file" in await verify_slash(fake, "notes.mp3", b"just some text, not music\n" * 40)
    plain = tmp_path / "plain.mp3"
    src = tmp_path / "src.wav"
    soundfile.write(src, 0.1 * np.sin(np.arange(32000) / 9).astype(np.float32), 32000)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-map_metadata", "-1", "-id3v2_version", "0",
                    str(plain)], check=True)
    borrowed = posted[: id3_size(posted)] + plain.read_bytes()  # this server's manifest on another file's audio
    answer = await verify_slash(fake, "borrowed.mp3", borrowed)
    assert OURS not in answer and ("Altered" in answer or "Damaged" in answer)
    before = len(fake.cdn_requests)
    interaction = await fake.slash("verify", {}, attachments={"file": ("zeros.mp3", bytes(100 * 1024 * 1024))})
    refusal = await fake.wait_for_message(fake.text_channel, lambda m: m.interaction_id == interaction.id
                                          and "MB" in m.content, timeout=30)
    assert refusal.ephemeral and "100.0 MB" in refusal.content and "up to 25 MB" in refusal.content
    assert len(fake.cdn_requests) == before  # refused by its size, never downloaded

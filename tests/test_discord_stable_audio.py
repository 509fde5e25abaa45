"""The same end-to-end path with the second model family: Stable Audio Open (its tiny fixture) as the bot's model."""

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
STABLE = ROOT / "tests" / "fixtures" / "tiny-stable-audio"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    async for process in running_bot(fake, tmp_path_factory.mktemp("stable-data"), BANDMATE_MODEL=str(STABLE),
                                     BANDMATE_MAX_DURATION_S="1"):
        yield process


def mp3s(message) -> list:
    return [a for a in message.attachments if a.filename.endswith(".mp3")]


def decode(data: bytes, tmp: Path) -> tuple[int, int, int]:
    """(channels, sample rate, frames) of an MP3, as ffprobe/ffmpeg see it."""
    path = tmp / "x.mp3"
    path.write_bytes(data)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=channels,sample_rate", "-of", "csv=p=0",
                            str(path)], capture_output=True, text=True, check=True).stdout.strip().split(",")
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-"], capture_output=True,
                         check=True).stdout
    channels, rate = int(probe[1]), int(probe[0])
    return channels, rate, len(np.frombuffer(raw, dtype=np.float32)) // channels


RESULTS: dict = {}


async def test_compose_posts_stereo_audio_from_stable_audio(fake, bot, tmp_path):
    interaction = await fake.slash("compose", {"prompt": "warm analog pads", "duration": 1.0, "variations": 2})
    await fake.wait_for_callback(interaction, timeout=5)
    result = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)), timeout=90)
    channels, rate, frames = decode(mp3s(result)[0].data, tmp_path)
    assert (channels, rate) == (2, 44100) and abs(frames - 44100) <= 1152
    assert len(mp3s(result)) == 2
    RESULTS["first"] = result


async def test_variations_of_a_stable_audio_track_start_from_its_audio(fake, bot):
    result = RESULTS["first"]
    before = {m.id for m in fake.messages_in(fake.text_channel)}
    variations = next(i for i in result.custom_ids if i.startswith("bandmate:var:"))
    click = await fake.click(result, variations, user=fake.user)
    await fake.wait_for_callback(click, timeout=5)
    again = await fake.wait_for_message(fake.text_channel, lambda m: m.id not in before and bool(mp3s(m)), timeout=90)
    assert "new take" in again.content


async def test_continuing_is_refused_with_a_clear_message(fake, bot):
    result = RESULTS["first"]
    extend = next(i for i in result.custom_ids if i.startswith("bandmate:ext:"))
    click = await fake.click(result, extend, user=fake.user)
    callback = await fake.wait_for_callback(click, timeout=5)
    assert click.response_type == 4 and callback.json["data"]["flags"] & 64
    assert "can't continue audio" in callback.json["data"]["content"]


async def test_help_shows_the_models_licence(fake, bot):
    interaction = await fake.slash("help", {})
    callback = await fake.wait_for_callback(interaction, timeout=5)
    assert "Stability AI Community License" in callback.json["data"]["content"]

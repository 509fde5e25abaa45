"""Without the privileged Message Content intent the bot reconnects without it, and still works where it can."""

from __future__ import annotations

import pytest
import pytest_asyncio

try:
    from botprocess import running_bot
    from fakediscord import FakeDiscord
    from fakediscord.state import Intents
except ImportError:  # tests/ as a package
    from tests.botprocess import running_bot
    from tests.fakediscord import FakeDiscord
    from tests.fakediscord.state import Intents

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake():
    async with FakeDiscord(enabled_privileged_intents=0) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    async for process in running_bot(fake, tmp_path_factory.mktemp("intents-data")):
        yield process


async def test_without_message_content_the_bot_connects_and_says_so(fake, bot):
    assert any("reconnecting without it" in line for line in bot.lines)
    assert not fake.intents & Intents.MESSAGE_CONTENT
    interaction = await fake.slash("compose", {"prompt": "quiet piano", "duration": 1.0})
    await fake.wait_for_callback(interaction, timeout=5)
    result = await fake.wait_for_message(fake.text_channel, lambda m: any(a.filename.endswith(".mp3")
                                                                          for a in m.attachments), timeout=60)
    thread = await fake.wait_until(lambda: fake.message(result.id).thread_id, timeout=10, what="a thread")
    await fake.wait_for_message(thread, lambda m: "Reply here" in m.content, timeout=10)  # the bot linked it
    await fake.post(thread, "continue", user=fake.user)  # arrives without content: the intent is off
    hint = await fake.wait_for_message(thread, lambda m: "mention me" in m.content, timeout=10)
    assert "@Bandmate continue" in hint.content

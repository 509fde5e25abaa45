"""The bot, started exactly as in production (`python bot.py` with a token), against the fake Discord.

Every body the bot sends is validated against Discord's OpenAPI spec by the fake; a violation fails the test.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

try:
    from botprocess import fake, no_spec_violations, running_bot  # noqa: F401 - shared fixtures
except ImportError:  # tests/ as a package
    from tests.botprocess import fake, no_spec_violations, running_bot  # noqa: F401

WEBHOOK = "/webhooks/{webhook_id}/{webhook_token}"
CHANNEL_MESSAGES = "/channels/{channel_id}/messages"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    async for process in running_bot(fake, tmp_path_factory.mktemp("bot-data")):
        yield process


def mp3s(message) -> list:
    return [a for a in message.attachments if a.filename.endswith(".mp3")]


def mp3_seconds(data: bytes, tmp: Path) -> float:
    path = tmp / "x.mp3"
    path.write_bytes(data)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "32000", "-"],
                         capture_output=True, check=True).stdout
    return len(np.frombuffer(raw, dtype=np.float32)) / 32000


def jobs_in(data: Path) -> int:
    with sqlite3.connect(f"file:{data / 'bandmate.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0]


async def compose(fake, options, **kw):
    started = time.monotonic()
    interaction = await fake.slash("compose", options, **kw)
    await fake.wait_for_callback(interaction, timeout=5)
    result = await fake.wait_for_message(
        fake.text_channel, lambda m: m.interaction_id == interaction.id and bool(mp3s(m))
        or (m.nonce or "").startswith("bm") and bool(mp3s(m)) and m.id not in SEEN, timeout=90)
    SEEN.add(result.id)
    return interaction, result, time.monotonic() - started


SEEN: set[int] = set()
RESULTS: dict[str, object] = {}


async def test_compose_is_acknowledged_first_then_posted_with_buttons_and_a_thread(fake, bot, tmp_path):
    interaction, result, total = await compose(
        fake, {"prompt": "lo-fi piano, rainy night", "duration": 2.0, "variations": 2, "seed": 1})
    # the acknowledgement is the first thing the bot did, well within Discord's 3 s
    assert fake.calls[interaction.call_mark].route == "/interactions/{interaction_id}/{interaction_token}/callback"
    assert interaction.response_type == 5 and interaction.callback_latency < 3.0
    files = mp3s(result)
    assert len(files) == 2
    for f in files:
        assert abs(mp3_seconds(f.data, tmp_path) - 2.0) <= 1152 / 32000
    assert any(a.filename.endswith(".png") for a in result.attachments)
    ids = result.custom_ids
    assert sum(i.startswith("bandmate:vote:") for i in ids) == 2
    assert any(i.startswith("bandmate:ext:") for i in ids) and any(i.startswith("bandmate:like:") for i in ids)
    assert any(i.startswith("bandmate:var:") for i in ids)
    thread = await fake.wait_until(lambda: fake.message(result.id).thread_id, timeout=10, what="a thread")
    RESULTS.update(first=result, thread=thread)
    print(f"\ncommand->callback {interaction.callback_latency * 1000:.0f} ms; command->posted MP3 {total:.2f} s")


async def test_a_vote_is_recorded_once_per_user_and_shown(fake, bot):
    result = RESULTS["first"]
    vote = next(i for i in result.custom_ids if i.startswith("bandmate:vote:"))
    bob = await fake.add_user("bob")
    for user in (fake.user, fake.user, bob):
        click = await fake.click(result, vote, user=user)
        await fake.wait_for_callback(click, timeout=5)
    with sqlite3.connect(f"file:{bot.data / 'bandmate.db'}?mode=ro", uri=True) as db:
        votes = db.execute("SELECT user_id, track_id FROM votes").fetchall()
    assert sorted(u for u, _ in votes) == sorted([str(fake.user.id), str(bob.id)])
    labels = [c.get("label") for row in fake.message(result.id).components for c in row.get("components", [])]
    assert "#1 · 2" in labels


async def test_a_thread_reply_extends_the_track(fake, bot, tmp_path):
    thread = RESULTS["thread"]
    await fake.post(thread, "extend 4 seconds", user=fake.user)
    longer = await fake.wait_for_message(thread, lambda m: bool(mp3s(m)), timeout=90)
    assert abs(mp3_seconds(mp3s(longer)[0].data, tmp_path) - 6.0) <= 1152 / 32000
    assert "extended" in longer.content


async def test_unknown_reply_gets_a_hint(fake, bot):
    thread = RESULTS["thread"]
    await fake.post(thread, "what a lovely day", user=fake.user)
    hint = await fake.wait_for_message(thread, lambda m: "didn't catch that" in m.content, timeout=10)
    assert "extend 20s" in hint.content


async def test_expired_token_posts_the_result_as_a_channel_message(fake, bot, tmp_path):
    interaction = await fake.slash("compose", {"prompt": "slow ambient pads", "duration": 3.0})
    await fake.wait_for_callback(interaction, timeout=5)
    fake.expire_interaction(interaction)
    result = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)) and m.interaction_id is None
                                         and m.id not in SEEN and "slow ambient pads" in m.content, timeout=90)
    SEEN.add(result.id)
    assert result.nonce and str(result.nonce).startswith("bm")
    post = [c for c in fake.find_calls("POST", CHANNEL_MESSAGES) if c.json and c.json.get("nonce") == result.nonce]
    assert post and post[0].json.get("enforce_nonce") is True
    assert abs(mp3_seconds(mp3s(result)[0].data, tmp_path) - 3.0) <= 1152 / 32000


async def test_a_429_on_the_upload_still_delivers_once(fake, bot):
    fake.fail_next("POST", WEBHOOK, status=429, retry_after=0.3)
    interaction, result, _ = await compose(fake, {"prompt": "funky bass groove", "duration": 1.0})
    assert any(c.injected and c.status == 429 for c in fake.calls)
    posted = [m for m in fake.messages_in(fake.text_channel) if mp3s(m) and "funky bass groove" in m.content]
    assert len(posted) == 1


async def test_mentions_in_a_prompt_never_ping(fake, bot):
    carol = await fake.add_user("carol")
    prompt = "@everyone @here <@%d> <@&123> loud drums" % carol.id
    interaction, result, _ = await compose(fake, {"prompt": prompt, "duration": 1.0})
    assert not result.mention_everyone
    assert carol.id not in [u.id for u in result.mentions]  # the prompt's mention is escaped, not a mention
    for call in fake.calls[interaction.call_mark:]:
        body = call.json or {}
        if call.method in ("POST", "PATCH") and "content" in body:
            assert body.get("allowed_mentions", {}).get("parse") == [], call
    assert "@everyone" not in result.content.replace("@\u200beveryone", "")


async def test_a_malformed_attachment_gets_an_ephemeral_error_and_nothing_is_queued(fake, bot):
    before = jobs_in(bot.data)
    interaction = await fake.slash("compose", {"prompt": "continue this", "duration": 2.0},
                                   attachments={"audio": ("song.mp3", b"this is not audio at all" * 40)})
    await fake.wait_for_callback(interaction, timeout=5)
    error = await fake.wait_until(
        lambda: next((m for m in fake.messages_in(fake.text_channel) if m.ephemeral
                      and m.interaction_id == interaction.id), None)
        or next((fake.message(i) for i in interaction.followup_message_ids if fake.message(i).ephemeral), None),
        timeout=15, what="an ephemeral error")
    assert "audio file" in error.content
    assert jobs_in(bot.data) == before


async def test_refusals_before_acknowledging_are_ephemeral(fake, bot):
    interaction = await fake.slash("compose", {"prompt": "x", "duration": 2.0},
                                   attachments={"audio": ("notes.txt", b"hello")})
    callback = await fake.wait_for_callback(interaction, timeout=5)
    assert interaction.response_type == 4 and callback.json["data"]["flags"] & 64
    assert "mp3, wav, flac" in callback.json["data"]["content"]


async def test_doctor_checks_token_intents_and_permissions_without_printing_the_token(fake, bot):
    import asyncio
    import os
    import sys

    env = {**os.environ, "DISCORD_TOKEN": fake.token, "DISCORD_API_BASE": fake.api_base,
           "DISCORD_GATEWAY_URL": str(fake.gateway_url), "BANDMATE_MODEL": str(bot.data), "BANDMATE_DATA": str(bot.data)}
    root = Path(__file__).resolve().parent.parent
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, str(root / "bot.py"), "doctor"], env=env,
                                   capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "valid: logged in as Bandmate" in out
    assert "Message Content intent enabled" in out
    assert "all needed permissions" in out
    assert "permissions=309237745664" in out
    assert fake.token not in out


async def test_results_are_fitted_to_the_interactions_upload_limit(fake, bot, tmp_path):
    limit = 400_000
    interaction = await fake.slash("compose", {"prompt": "orchestral strings", "duration": 8.0, "variations": 4},
                                   attachment_size_limit=limit)
    await fake.wait_for_callback(interaction, timeout=5)
    await fake.wait_until(lambda: sum(len(mp3s(m)) for m in fake.messages_in(fake.text_channel)
                                      if "orchestral strings" in m.content or "part" in m.content) >= 4,
                          timeout=120, what="four MP3s")
    posted = [m for m in fake.messages_in(fake.text_channel) if mp3s(m)
              and ("orchestral strings" in m.content or "(continued" in m.content)]
    for message in posted:
        assert sum(len(a.data) for a in message.attachments) <= limit
    files = [a for m in posted for a in mp3s(m)]
    assert len(files) == 4
    for f in files:
        assert len(f.data) < 8 * 192_000 / 8  # re-encoded below 192 kbps to fit
        assert abs(mp3_seconds(f.data, tmp_path) - 8.0) <= 1152 / 32000


async def test_a_reply_to_the_result_message_continues_it(fake, bot, tmp_path):
    result = RESULTS["first"]
    await fake.post(fake.text_channel, "#2 continue 2s", user=fake.user, reference=result)
    longer = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)) and "continued" in m.content
                                         and m.id not in SEEN, timeout=90)
    SEEN.add(longer.id)
    assert abs(mp3_seconds(mp3s(longer)[0].data, tmp_path) - 4.0) <= 1152 / 32000


async def test_after_a_restart_an_old_button_still_works(fake, bot):
    assert await bot.stop() == 0
    bot.start()
    await bot.wait_log(r"connected as")
    assert any("not syncing" in line for line in bot.lines)  # definitions unchanged: no second sync
    result = RESULTS["first"]
    vote = [i for i in result.custom_ids if i.startswith("bandmate:vote:")][1]
    click = await fake.click(result, vote, user=fake.user)
    await fake.wait_for_callback(click, timeout=5)
    assert click.response_type == 7  # the message was updated with the new tally
    labels = [c.get("label") for row in fake.message(result.id).components for c in row.get("components", [])]
    assert "#2 · 1" in labels

"""The bot as a new operator runs it: `python bot.py` with the limits `.env.example` ships (a burst of 3, then 6
a minute; 3 pending per user), against the fake Discord. A conversation is never refused by the rate limit, a
flood is queued or refused with reasons, and every status message ends on the truth.

Every body the bot sends is validated against Discord's OpenAPI spec by the fake; a violation fails the test.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time

import pytest
import pytest_asyncio

try:
    from botprocess import fake, no_spec_violations, running_bot, shipped_settings  # noqa: F401 - shared fixtures
except ImportError:  # tests/ as a package
    from tests.botprocess import fake, no_spec_violations, running_bot, shipped_settings  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHANNEL_MESSAGES = "/channels/{channel_id}/messages"
EDIT_ROUTES = ("/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
               "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
               "/channels/{channel_id}/messages/{message_id}")
REASON = re.compile(r"\(the limit is \d+\)|queue is full \(\d+|\d+ pieces in the last 24 hours")
RESULTS: dict[str, object] = {}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake, tmp_path_factory):
    settings = shipped_settings()
    assert settings["BANDMATE_RATE_BURST"] == "3" and settings["BANDMATE_RATE_PER_MIN"] == "6"
    async for process in running_bot(fake, tmp_path_factory.mktemp("shipped-data"), **settings):
        yield process


def mp3s(message) -> list:
    return [a for a in message.attachments if a.filename.endswith(".mp3")]


def link(fake, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{fake.guild.id}/{channel_id}/{message_id}"


def status_edits(fake, status_id: int) -> list:
    """Every edit of one status message (through the interaction's webhook or the channel), in the order sent."""
    return [c for c in fake.calls if c.method == "PATCH" and c.route in EDIT_ROUTES
            and c.params.get("message_id") == str(status_id) and c.json and "content" in c.json]


def posting_call(fake, message_id: int):
    """The REST call that created a message."""
    return next(c for c in fake.calls if c.method == "POST" and isinstance(c.response, dict)
                and c.response.get("id") == str(message_id))


def rows(data, sql: str, args=()) -> list[tuple]:
    with sqlite3.connect(f"file:{data / 'bandmate.db'}?mode=ro", uri=True) as db:
        return db.execute(sql, args).fetchall()


async def assert_final_status_is_delivered(fake, status_id: int, channel_id: int, result) -> None:
    """The status message's last edit links the result, lands after it, and stays the last (past the throttle)."""
    target = link(fake, channel_id, result.id)
    await fake.wait_until(lambda: target in fake.message(status_id).content or None, timeout=15,
                          what="the status saying delivered")
    await asyncio.sleep(2.5)  # longer than the status throttle: a stale edit would have landed by now
    edits = status_edits(fake, status_id)
    assert edits and target in edits[-1].json["content"] and "delivered" in edits[-1].json["content"]
    assert target in fake.message(status_id).content
    assert edits[-1].time >= posting_call(fake, result.id).finished_at


async def compose(fake, options, user):
    before = {m.id for m in fake.messages_in(fake.text_channel)}
    interaction = await fake.slash("compose", options, user=user)
    await fake.wait_for_callback(interaction, timeout=5)
    result = await fake.wait_for_message(fake.text_channel, lambda m: m.id not in before and bool(mp3s(m))
                                         and options["prompt"] in m.content, timeout=90)
    return interaction, result


async def test_the_final_status_says_delivered_with_a_link_and_lands_after_the_result(fake, bot):
    alice = await fake.add_user("alice")
    interaction, result = await compose(fake, {"prompt": "warm rhodes chords", "duration": 2.0}, alice)
    await assert_final_status_is_delivered(fake, interaction.original_message_id, fake.text_channel.id, result)
    thread = await fake.wait_until(lambda: fake.message(result.id).thread_id, timeout=10, what="a thread")
    RESULTS.update(alice=alice, first=result, thread=thread)


async def test_a_thread_reply_one_second_after_a_delivery_is_served(fake, bot):
    alice, thread = RESULTS["alice"], RESULTS["thread"]
    await asyncio.sleep(1.0)
    await fake.post(thread, "extend 2 seconds", user=alice)
    longer = await fake.wait_for_message(thread, lambda m: bool(mp3s(m)), timeout=90)
    assert "extended" in longer.content
    said = [m.content for m in fake.messages_in(thread)]
    assert not any("Easy there" in text or "starts in" in text for text in said)
    # its status (the bot's reply in the thread) ends on "delivered", linking the result in the thread
    status = await fake.wait_until(lambda: next((m for m in fake.messages_in(thread) if m.author.id == fake.bot_user.id
                                                 and link(fake, thread, longer.id) in m.content), None),
                                   timeout=15, what="the reply's status saying delivered: "
                                   + repr([m.content for m in fake.messages_in(thread)]))
    await assert_final_status_is_delivered(fake, status.id, thread, longer)
    # a result sent as a channel message pings its requester, and only them
    sent = posting_call(fake, longer.id).json["allowed_mentions"]
    assert sent.get("parse") == [] and [int(u) for u in sent.get("users", [])] == [alice.id]
    RESULTS["longer"] = longer


async def test_more_like_this_one_second_after_a_delivery_is_served(fake, bot):
    alice, first = RESULTS["alice"], RESULTS["first"]
    await asyncio.sleep(1.0)
    before = {m.id for m in fake.messages_in(fake.text_channel)}
    like = next(i for i in first.custom_ids if i.startswith("bandmate:like:"))
    click = await fake.click(first, like, user=alice)
    await fake.wait_for_callback(click, timeout=5)
    assert click.response_type == 5  # acknowledged and queued, not refused
    more = await fake.wait_for_message(fake.text_channel, lambda m: m.id not in before and bool(mp3s(m))
                                       and "more like this" in m.content, timeout=90)
    await assert_final_status_is_delivered(fake, click.original_message_id, fake.text_channel.id, more)


async def test_a_flood_of_twelve_composes_starts_three_and_queues_or_refuses_the_rest_with_reasons(fake, bot):
    dave = await fake.add_user("dave")
    interactions = []
    started = time.monotonic()
    for i in range(12):
        interactions.append(await fake.slash("compose", {"prompt": f"flood number {i}", "duration": 1.0}, user=dave))
        await asyncio.sleep(max(0.0, started + (i + 1) * 2.0 / 12 - time.monotonic()))
    assert time.monotonic() - started < 2.5

    def job_of(interaction):
        found = rows(bot.data, "SELECT id, spec FROM jobs WHERE idempotency_key = ?",
                     [f"discord:interaction:{interaction.id}"])
        return (found[0][0], json.loads(found[0][1] or "{}")) if found else None

    def refusal_of(interaction):
        if interaction.response_type == 4:
            return interaction.response_data.get("content")
        texts = [fake.message(i).content for i in interaction.followup_message_ids if fake.message(i).ephemeral]
        return texts[0] if texts else None

    def answered():
        told = {i.id: job_of(i) or refusal_of(i) for i in interactions}
        return told if all(told.values()) else None

    told = await fake.wait_until(answered, timeout=60, what="an answer to every compose")
    accepted = {i.id: job_of(i) for i in interactions if job_of(i)}
    refused = {i.id: refusal_of(i) for i in interactions if not job_of(i)}
    assert len(accepted) + len(refused) == 12 == len(told)  # nothing dropped without a word
    at_once = [i for i in interactions if i.id in accepted and "not_before" not in accepted[i.id][1]]
    held = [i for i in interactions if i.id in accepted and "not_before" in accepted[i.id][1]]
    assert len(at_once) == 3 and at_once == interactions[:3]  # the burst
    for text in refused.values():
        assert REASON.search(text), text
    for interaction in held:  # over the rate limit: queued, and the status said when it starts
        await fake.wait_until(lambda: any("starts in" in c.json["content"]
                                          for c in status_edits(fake, interaction.original_message_id)) or None,
                              timeout=10, what="'starts in' on a held job")
    print(f"\nflood: {len(at_once)} started at once, {len(held)} held, {len(refused)} refused: "
          + "; ".join(sorted(set(refused.values())))[:300])
    for interaction in at_once + held:
        job_id = accepted[interaction.id][0]
        result = await fake.wait_until(lambda: next(
            (m for m in fake.messages_in(fake.text_channel) if mp3s(m) and "flood number " in m.content
             and (m.interaction_id == interaction.id)), None), timeout=120, what=f"the result of {job_id}")
        await assert_final_status_is_delivered(fake, interaction.original_message_id, fake.text_channel.id, result)
    for interaction in held:
        job_id, spec = accepted[interaction.id]
        (started_at,), = rows(bot.data, "SELECT started_at FROM jobs WHERE id = ?", [job_id])
        assert started_at >= spec["not_before"] - 0.05


async def test_an_expired_token_result_pings_only_its_requester(fake, bot):
    erin = await fake.add_user("erin")
    mark = len(fake.calls)
    interaction = await fake.slash("compose", {"prompt": "late night synthwave", "duration": 1.0}, user=erin)
    await fake.wait_for_callback(interaction, timeout=5)
    fake.expire_interaction(interaction)
    result = await fake.wait_for_message(fake.text_channel, lambda m: bool(mp3s(m)) and m.interaction_id is None
                                         and "late night synthwave" in m.content, timeout=90)
    post = posting_call(fake, result.id)
    assert post.json["allowed_mentions"].get("parse") == []
    assert [int(u) for u in post.json["allowed_mentions"].get("users", [])] == [erin.id]
    assert f"<@{erin.id}>" in result.content
    await assert_final_status_is_delivered(fake, interaction.original_message_id, fake.text_channel.id, result)
    for call in fake.calls[mark:]:  # every other message pings nobody
        body = call.json or {}
        if call is not post and call.method in ("POST", "PATCH") and "content" in body:
            assert body.get("allowed_mentions") == {"parse": []}, call


async def test_latencies_seen_in_this_run(fake, bot):
    """Not a speed goal (those live in bench/): the figures of this run, queued->started and done->delivered."""
    offset = time.time() - asyncio.get_running_loop().time()  # the fake's loop clock -> wall clock
    queued_started, done_delivered, done_status = [], [], []
    for job_id, created, started, finished, spec, delivery in rows(
            bot.data, "SELECT id, created_at, started_at, finished_at, spec, delivery FROM jobs WHERE state = 'done'"):
        not_before = json.loads(spec or "{}").get("not_before") or 0.0
        if "window_of" in (spec or ""):
            continue
        queued_started.append(started - max(created, not_before))  # the wait in line, not the rate limit's hold
        refs = [r for (r,) in rows(bot.data, "SELECT ref FROM conversation_links WHERE job_id = ?", [job_id])
                if r.startswith("discord:message:")]
        if refs:
            done_delivered.append(posting_call(fake, int(refs[0].rsplit(":", 1)[1])).finished_at + offset - finished)
        status_id = json.loads(delivery or "{}").get("status_message_id")
        edits = status_edits(fake, int(status_id)) if status_id else []
        if edits and "delivered" in edits[-1].json["content"]:
            done_status.append(edits[-1].finished_at + offset - finished)
    assert len(queued_started) >= 8 and len(done_delivered) >= 8

    def pct(values, q):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    print(f"\nqueued->started p50 {pct(queued_started, .5):.3f} s p95 {pct(queued_started, .95):.3f} s "
          f"(n={len(queued_started)}); done->delivered p50 {pct(done_delivered, .5):.3f} s "
          f"p95 {pct(done_delivered, .95):.3f} s (n={len(done_delivered)}); done->status says delivered p50 "
          f"{pct(done_status, .5):.3f} s p95 {pct(done_status, .95):.3f} s (n={len(done_status)})")

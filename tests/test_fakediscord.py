"""The fake Discord, proven with the real discord.py client.

A tiny bot (defined here, not the product's bot) logs in once per module against the fake and is driven as a user
would: slash commands, button clicks, messages in threads. Each test also checks what reached "Discord": the REST
calls, their order, and that every body matches Discord's OpenAPI spec (the ``no_spec_violations`` fixture).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import re
from typing import Any, Callable, Optional, TypeVar

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands

try:
    from fakediscord import FakeDiscord, Interaction, Message
    from openapi_validation import ALLOWED_MISMATCHES, format_violations
except ImportError:  # tests/ turned into a package
    from tests.fakediscord import FakeDiscord, Interaction, Message
    from tests.openapi_validation import ALLOWED_MISMATCHES, format_violations

log = logging.getLogger(__name__)

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = TypeVar("T")
WEBHOOK = "/webhooks/{webhook_id}/{webhook_token}"
CALLBACK = "/interactions/{interaction_id}/{interaction_token}/callback"
CHANNEL_MESSAGES = "/channels/{channel_id}/messages"


class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"test:vote:(?P<track>\d+)"):
    """A button that survives restarts: its state lives in the custom_id."""

    def __init__(self, track: int) -> None:
        super().__init__(discord.ui.Button(label="Vote", style=discord.ButtonStyle.primary,
                                           custom_id=f"test:vote:{track}"))
        self.track = track

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "VoteButton":
        return cls(int(match["track"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: TinyBot = interaction.client  # type: ignore[assignment]
        bot.votes.append((self.track, interaction.user.id))
        bot.changed()
        await interaction.response.send_message(f"Voted for track {self.track}", ephemeral=True)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"test:reroll:(?P<track>\d+)"):
    """Answers its click by updating the message in place (callback type 7), then edits @original."""

    def __init__(self, track: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", style=discord.ButtonStyle.secondary,
                                           custom_id=f"test:reroll:{track}"))
        self.track = track

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "RerollButton":
        return cls(int(match["track"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=f"Rerolling track {self.track}...", view=None)
        await interaction.edit_original_response(content=f"Rerolled track {self.track}")


class TinyBot(commands.Bot):
    """Just enough bot to exercise the fake: a deferred slash command with a file and a button, a slow command
    that falls back to a channel message when its token is gone, and message recording."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=0.2)
        self.seen: list[discord.Message] = []
        self.votes: list[tuple[int, int]] = []
        self.melodies: list[bytes] = []
        self.followup_errors: list[discord.HTTPException] = []
        self.release_slow = asyncio.Event()
        self._tracks = itertools.count(1)
        self._changed = asyncio.Event()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(VoteButton, RerollButton)

        @self.tree.command(name="generate", description="Make a tiny track")
        @app_commands.describe(prompt="What to play", melody="A melody to follow")
        async def generate(interaction: discord.Interaction, prompt: str,
                           melody: Optional[discord.Attachment] = None) -> None:
            await interaction.response.defer(thinking=True)
            seed = b""
            if melody is not None:
                seed = await melody.read()  # downloaded from the fake's CDN
                self.melodies.append(seed)
            track = next(self._tracks)
            view = discord.ui.View(timeout=None)
            view.add_item(VoteButton(track))
            view.add_item(RerollButton(track))
            audio = discord.File(io.BytesIO(b"RIFF" + seed), filename=f"track-{track}.wav")
            await interaction.followup.send(f"Here is {prompt!r}", file=audio, view=view)

        @self.tree.command(name="slow", description="Defer, wait, then answer (or fall back to the channel)")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await self.release_slow.wait()
            self.release_slow.clear()
            try:
                await interaction.followup.send("finished")
            except discord.HTTPException as exc:
                self.followup_errors.append(exc)
                self.changed()
                assert interaction.channel is not None
                await interaction.channel.send(f"{interaction.user.mention} finished")  # type: ignore[union-attr]

        await self.tree.sync()

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)
        self.changed()

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, check: Callable[[], Optional[T]], timeout: float = 5.0) -> T:
        """Event-driven wait on the bot's own state (the fake's notifier cannot see it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (result := check()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("bot state condition not reached")
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return result


async def start_client(client: discord.Client, fake: FakeDiscord, timeout: float = 10.0) -> asyncio.Task[None]:
    """Start a client against the fake and wait for on_ready (or its start() failing)."""
    task = asyncio.create_task(client.start(fake.token))
    ready = asyncio.create_task(client.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task.done():
            task.result()  # re-raise the login/connection error
        raise TimeoutError("client did not become ready")
    return task


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake() -> Any:
    async with FakeDiscord() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(fake: FakeDiscord) -> Any:
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    client = TinyBot()
    loop = asyncio.get_running_loop()
    started = loop.time()
    task: Optional[asyncio.Task[None]] = None
    try:
        task = await start_client(client, fake)
        client.login_to_ready = loop.time() - started  # type: ignore[attr-defined]
        log.info("login to ready: %.2fs", client.login_to_ready)  # type: ignore[attr-defined]
        yield client
    finally:
        await client.close()
        if task is not None:
            await task
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


@pytest.fixture(autouse=True)
def no_spec_violations(fake: FakeDiscord) -> Any:
    """Fail the test if the bot sent any body that Discord's OpenAPI spec rejects."""
    yield
    violations = fake.take_violations()
    if violations:
        pytest.fail(format_violations(violations), pytrace=False)


async def generate(fake: FakeDiscord, prompt: str = "lofi", **kwargs: Any) -> tuple[Interaction, Message]:
    """Run /generate as a user and return the interaction and the finished bot message."""
    interaction = await fake.slash("generate", {"prompt": prompt}, **kwargs)
    message = await fake.wait_for_message(
        fake.text_channel, lambda m: m.interaction_id == interaction.id and bool(m.attachments))
    return interaction, message


# ---- tests ------------------------------------------------------------------------------------------------


async def test_login_identify_and_ready(fake: FakeDiscord, bot: TinyBot) -> None:
    assert bot.user is not None and bot.user.id == fake.bot_user.id
    assert bot.get_guild(fake.guild.id) is not None
    assert bot.get_channel(fake.text_channel.id) is not None
    assert fake.intents is not None and fake.intents & (1 << 15)  # MESSAGE_CONTENT was requested
    assert fake.gateway.connect_queries[0].get("compress") in ("zlib-stream", "zstd-stream")
    assert [c.route for c in fake.calls[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    assert [c["name"] for c in fake.state.global_commands] == ["generate", "slow"]
    assert bot.login_to_ready < 3.0  # type: ignore[attr-defined]


async def test_slash_defers_then_follows_up_with_file_and_button(fake: FakeDiscord, bot: TinyBot) -> None:
    interaction, message = await generate(fake, "jazz", attachments={"melody": ("melody.wav", b"MELODY")})

    callback = fake.calls[interaction.call_mark]  # the first REST call after the interaction...
    assert callback.route == CALLBACK and callback.ok  # ...is its callback
    assert callback.json == {"type": 5}
    assert interaction.callback is callback and interaction.callback_latency is not None
    assert interaction.callback_latency < 1.0

    followup = await fake.wait_for_call("POST", WEBHOOK, since=interaction.call_mark)
    assert followup.ok and followup.multipart
    assert followup.query.get("wait") == "1"
    assert [f.filename for f in followup.files] == [message.attachments[0].filename]
    assert followup.json["components"][0]["components"][0]["custom_id"].startswith("test:vote:")

    # the follow-up replaced the "thinking" message, as Discord does
    assert message.id == interaction.original_message_id and not message.loading
    assert message.content == "Here is 'jazz'"
    assert message.attachments[0].data == b"RIFFMELODY"
    assert bot.melodies[-1] == b"MELODY"  # the bot downloaded the option's attachment from the fake
    assert message.custom_ids == [c["custom_id"] for c in followup.json["components"][0]["components"]]


async def test_click_runs_dynamic_item_callback(fake: FakeDiscord, bot: TinyBot) -> None:
    _, message = await generate(fake, "vote me")
    custom_id = message.custom_ids[0]
    track = int(custom_id.rsplit(":", 1)[1])

    click = await fake.click(message, custom_id)
    callback = await fake.wait_for_callback(click)
    assert fake.calls[click.call_mark] is callback
    assert callback.json["type"] == 4 and callback.json["data"]["flags"] == 64
    assert (track, fake.user.id) in bot.votes
    reply = fake.message(click.original_message_id or 0)
    assert reply.ephemeral and reply.content == f"Voted for track {track}"

    with pytest.raises(ValueError):  # Discord only sends clicks for components the message has
        await fake.click(message, "test:vote:999999")


async def test_message_in_thread_from_bot_message_reaches_on_message(fake: FakeDiscord, bot: TinyBot) -> None:
    _, message = await generate(fake, "thread me")
    channel = bot.get_channel(fake.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    bot_message = await channel.fetch_message(message.id)
    thread = await bot_message.create_thread(name="jam session")
    assert thread.id == message.id and fake.state.channels[thread.id].is_thread

    posted = await fake.post(thread.id, "nice track!")
    seen = await bot.wait_until(lambda: next((m for m in bot.seen if m.id == posted.id), None))
    assert isinstance(seen.channel, discord.Thread) and seen.channel.id == thread.id
    assert seen.content == "nice track!" and seen.author.id == fake.user.id

    answer = await seen.reply("thanks!")  # message_reference sent by discord.py with integer ids
    stored = fake.message(answer.id)
    assert stored.channel_id == thread.id and stored.type == 19 and stored.referenced_message_id == posted.id

    reply = await fake.post(fake.text_channel, f"{fake.bot_user.mention} again", reference=message)
    seen_reply = await bot.wait_until(lambda: next((m for m in bot.seen if m.id == reply.id), None))
    assert seen_reply.reference is not None and seen_reply.reference.message_id == message.id
    assert bot.user in seen_reply.mentions


async def test_component_update_then_original_edit(fake: FakeDiscord, bot: TinyBot) -> None:
    _, message = await generate(fake, "reroll me")
    custom_id = next(c for c in message.custom_ids if c.startswith("test:reroll:"))
    track = custom_id.rsplit(":", 1)[1]

    click = await fake.click(message, custom_id)
    callback = await fake.wait_for_callback(click)
    assert callback.json["type"] == 7 and callback.json["data"]["components"] == []
    edit = await fake.wait_for_call("PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                                    since=click.call_mark)
    assert edit.ok and click.original_message_id == message.id
    assert message.content == f"Rerolled track {track}" and message.components == []
    assert [h["content"] for h in message.history][-1] == f"Rerolling track {track}..."


async def test_gateway_reconnect_resumes(fake: FakeDiscord, bot: TinyBot) -> None:
    mark = len(fake.events)
    await fake.reconnect(resume=True)
    await fake.wait_for_event("RESUMED", since=mark)
    assert any(p.get("op") == 6 for p in fake.gateway.received)
    posted = await fake.post(fake.text_channel, "still there?")
    await bot.wait_until(lambda: any(m.id == posted.id for m in bot.seen))


async def test_thread_in_dm_fails_like_discord(fake: FakeDiscord, bot: TinyBot) -> None:
    dm = await bot.fetch_channel(fake.dm_channel.id)
    assert isinstance(dm, discord.DMChannel)
    sent = await dm.send("hello in DM")
    with pytest.raises(discord.HTTPException) as info:
        await bot.http.start_thread_with_message(dm.id, sent.id, name="nope", auto_archive_duration=60,
                                                 rate_limit_per_user=None)
    assert info.value.status == 400 and info.value.code == 50024


async def test_rate_limited_followup_is_retried_and_delivered_once(fake: FakeDiscord, bot: TinyBot) -> None:
    rule = fake.fail_next("POST", WEBHOOK, status=429, retry_after=0.3)
    interaction, message = await generate(fake, "retry me")

    webhook_calls = fake.find_calls("POST", WEBHOOK, since=interaction.call_mark)
    assert [c.status for c in webhook_calls] == [429, 200]
    assert rule.exhausted and rule.hits == webhook_calls[:1]
    assert webhook_calls[1].time - webhook_calls[0].time >= 0.3
    delivered = [m for m in fake.messages_in(fake.text_channel) if m.interaction_id == interaction.id]
    assert delivered == [message]


async def test_server_error_on_channel_message_is_retried(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    mark = len(fake.calls)
    fake.fail_next("POST", CHANNEL_MESSAGES, status=500)
    sent = await channel.send("after a 500")
    assert [c.status for c in fake.find_calls("POST", CHANNEL_MESSAGES, since=mark)] == [500, 200]
    assert [m.id for m in fake.messages_in(channel.id) if m.content == "after a 500"] == [sent.id]


async def test_expired_token_fails_followup_and_bot_falls_back(fake: FakeDiscord, bot: TinyBot) -> None:
    interaction = await fake.slash("slow")
    await fake.wait_for_callback(interaction)
    fake.expire_interaction(interaction)
    errors_before = len(bot.followup_errors)
    bot.release_slow.set()

    failed = await fake.wait_for_call("POST", WEBHOOK, since=interaction.call_mark)
    assert failed.status == 401 and failed.response == {"message": "Invalid Webhook Token", "code": 50027}
    error = await bot.wait_until(lambda: bot.followup_errors[errors_before:])
    assert error[0].status == 401 and error[0].code == 50027
    fallback = await fake.wait_for_message(fake.text_channel, lambda m: m.content == f"{fake.user.mention} finished")
    assert fallback.interaction_id is None and fallback.webhook_id is None


async def test_enforced_nonce_creates_one_message(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    mark = len(fake.calls)
    first = await channel.send("exactly once", nonce=424242)
    second = await channel.send("exactly once", nonce=424242)
    assert first.id == second.id
    bodies = [c.json for c in fake.find_calls("POST", CHANNEL_MESSAGES, since=mark)]
    assert bodies[0]["nonce"] == "424242" and bodies[0]["enforce_nonce"] is True  # discord.py sends both
    assert len([m for m in fake.messages_in(channel.id) if m.content == "exactly once"]) == 1


async def test_invalid_body_is_caught_by_the_validator(fake: FakeDiscord, bot: TinyBot) -> None:
    url = f"{fake.api_base}/channels/{fake.text_channel.id}/messages"
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"content": 42, "tts": "yes"}, headers=headers) as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == 50035
        async with session.post(f"{fake.api_base}/interactions/1/x/callback",
                                json={"type": 4, "data": {"components": [{"type": 1, "components": [
                                    {"type": 2, "style": "blue", "custom_id": "a"}]}]}}) as resp:
            assert resp.status == 404
    violations = fake.take_violations()
    found = {(v.route, v.json_path) for v in violations}
    assert (CHANNEL_MESSAGES, "$.content") in found
    assert (CHANNEL_MESSAGES, "$.tts") in found
    assert (CALLBACK, "$.data.components[0].components[0].style") in found
    assert "$.content" in format_violations(violations)
    assert ALLOWED_MISMATCHES  # documented


async def test_unknown_route_is_recorded(fake: FakeDiscord, bot: TinyBot) -> None:
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/not/a/discord/route"))
    assert fake.unknown_calls[-1].path == "/not/a/discord/route"
    assert [v.message for v in fake.take_violations()] == ["route/method is not in Discord's OpenAPI spec"]


async def test_message_content_intent_is_enforced(fake: FakeDiscord, bot: TinyBot) -> None:
    """A client without MESSAGE_CONTENT sees empty content unless it is mentioned, as on Discord."""
    other = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
    seen: list[discord.Message] = []
    arrived = asyncio.Event()

    @other.event
    async def on_message(message: discord.Message) -> None:
        seen.append(message)
        if len(seen) == 2:
            arrived.set()

    task = await start_client(other, fake)
    try:
        assert not fake.gateway.sessions[list(fake.gateway.sessions)[-1]].intents & (1 << 15)
        plain = await fake.post(fake.text_channel, "secret plans")
        mentioned = await fake.post(fake.text_channel, f"{fake.bot_user.mention} play something")
        await asyncio.wait_for(arrived.wait(), 5)
        by_id = {m.id: m for m in seen}
        assert by_id[plain.id].content == ""
        assert by_id[mentioned.id].content == mentioned.content
        full = await bot.wait_until(lambda: next((m for m in bot.seen if m.id == plain.id), None))
        assert full.content == "secret plans"  # the main bot asked for the intent
    finally:
        await other.close()
        await task

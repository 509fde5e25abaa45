"""Presets and server settings: expansion, blocklist, channels, defaults, the store and the service.

Real SQLite files under tmp_path, no mocks. Async tests carry `@pytest.mark.asyncio` and there are no async
fixtures, as in test_storage.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from bot import guild_settings as table
from bot.blocklist import block_entry, check_blocklist
from bot.core import ComposeOptions, CoreConfig, Refusal, Requester
from bot.guild_settings import (
    BotLimits,
    GuildSettings,
    ServerSettings,
    apply_guild_defaults,
    check_channel,
    settings_from_json,
)
from bot.planner import Planner
from bot.presets import MAX_PRESETS, PresetService, expand_presets, preset_name, preset_value
from bot.text import plain
from generation.models import model_info
from storage import DB_FILENAME, Database
from storage.settings import SettingsStore

ADMIN = Requester(user_id="10", name="admin", guild_id="g1", channel_id="c1", is_admin=True)
MEMBER = Requester(user_id="20", name="member", guild_id="g1", channel_id="c1")


@pytest.fixture
def store(tmp_path: Path):
    db = Database(tmp_path / "data" / DB_FILENAME)
    yield SettingsStore(db)
    db.close()


class Services:
    """The core's preset and server-settings services over one store, and the planner's `prepare` that applies
    both to a request (presets first, then the server's rules)."""

    def __init__(self, store: SettingsStore) -> None:
        self.store = store
        self.presets = PresetService(store)
        self.server = ServerSettings(store, BotLimits(max_duration_s=30.0, models=("facebook/musicgen-small",
                                                                                   "facebook/musicgen-medium")))
        self.planner = Planner(scheduler=None, store=None, links=None, files=None, model_info=model_info,
                               config=CoreConfig(default_model="facebook/musicgen-small"), presets=self.presets,
                               server_settings=self.server)

    def __getattr__(self, name: str):
        for target in (self.presets, self.server):
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(name)

    async def prepare(self, who: Requester, opts: ComposeOptions) -> ComposeOptions:
        return await self.planner.prepare(who, opts)

    async def guild(self, guild_id: str) -> GuildSettings:
        return await self.server.get(guild_id)


@pytest.fixture
def service(store: SettingsStore) -> Services:
    return Services(store)


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(Refusal) as info:
        fn(*args, **kwargs)
    return info.value.user_message


async def arefusal(coro) -> str:
    with pytest.raises(Refusal) as info:
        await coro
    return info.value.user_message


# --- expand_presets ---------------------------------------------------------------------------------------


def test_expand_known_preset():
    mine = {"dreamy": "soft pads, reverb, slow", "lofi": "lo-fi hip hop, vinyl crackle"}
    assert expand_presets("piano --dreamy", mine) == "piano soft pads, reverb, slow"
    assert expand_presets("--lofi beat, --dreamy", mine) == "lo-fi hip hop, vinyl crackle beat, soft pads, reverb, slow"
    assert expand_presets("piano,--dreamy", mine) == "piano,soft pads, reverb, slow"
    assert expand_presets("lo-fi piano", mine) == "lo-fi piano"  # a hyphen inside a word is not a reference


def test_expand_is_case_insensitive():
    assert expand_presets("piano --DreaMy", {"dreamy": "soft"}) == "piano soft"
    assert expand_presets("piano --dreamy", {"Dreamy": "soft"}) == "piano soft"


def test_expand_unknown_refuses_naming_it_and_listing_presets():
    message = refusal(expand_presets, "piano --dramy", {"dreamy": "soft", "lofi": "dusty"})
    assert "`--dramy`" in message
    assert "`--dreamy`" in message and "`--lofi`" in message
    message = refusal(expand_presets, "piano --dreamy", {})
    assert "`--dreamy`" in message and "/prefer set" in message


def test_expand_does_not_recurse():
    mine = {"a": "x --b", "b": "y --a"}
    assert expand_presets("start --a", mine) == "start x --b"
    # A value naming an unknown preset is plain text, not a refusal.
    assert expand_presets("--c", {"c": "--nothing here"}) == "--nothing here"


def test_expand_em_dash_only_when_known():
    assert expand_presets("piano \u2014dreamy", {"dreamy": "soft"}) == "piano soft"
    assert expand_presets("piano \u2014 slow", {}) == "piano \u2014 slow"
    assert expand_presets("piano\u2014dreamy", {"dreamy": "soft"}) == "piano\u2014dreamy"


def test_expand_limit_mentions_presets():
    message = refusal(expand_presets, "a --long", {"long": "x" * 200}, limit=100)
    assert "presets" in message and "100" in message


def test_preset_name_and_value_rules():
    assert preset_name("--Dreamy") == "dreamy"
    assert preset_name("lo_fi-2") == "lo_fi-2"
    for bad in ("", "has space", "é", "x" * 33, "a!"):
        assert "1 to 32" in refusal(preset_name, bad)
    assert "compose option" in refusal(preset_name, "seed")
    assert preset_value("soft\npads\t slow") == "soft pads slow"
    assert preset_value("a\u200bb") == "ab"  # zero-width characters removed
    assert "200" in refusal(preset_value, "x" * 201)
    assert "needs some text" in refusal(preset_value, " \n ")


# --- blocklist ----------------------------------------------------------------------------------------------


def test_blocklist_whole_words_case_insensitive():
    message = refusal(check_blocklist, "A BAD song", ["bad"])
    assert message == "This server doesn't allow prompts with \u201cbad\u201d. Try something else."
    refusal(check_blocklist, "bad", ["bad"])
    refusal(check_blocklist, "really bad.", ["bad"])
    check_blocklist("a good song", ["bad"])
    check_blocklist("anything", [])


@pytest.mark.parametrize("prompt", ["b a d", "b.a.d", "b-a-d song", "b4d", "B@D", "bád", "ｂａｄ", "b\u200bad"])
def test_blocklist_catches_obfuscations(prompt: str):
    refusal(check_blocklist, prompt, ["bad"])


@pytest.mark.parametrize("prompt", ["badge", "badminton", "abad", "sinbad", "bass", "class", "assam tea"])
def test_blocklist_no_false_positive_inside_words(prompt: str):
    check_blocklist(prompt, ["bad", "ass"])


def test_blocklist_phrases_and_leetspeak_both_ways():
    refusal(check_blocklist, "some death metal", ["death metal"])
    refusal(check_blocklist, "d3ath m3t4l", ["death metal"])
    refusal(check_blocklist, "h3ll0 w0rld", ["hello world"])
    refusal(check_blocklist, "leet speak", ["l33t"])  # an entry written in leetspeak still matches letters
    refusal(check_blocklist, "5ex", ["sex"])
    refusal(check_blocklist, "1ol", ["lol"])  # 1 for l as well as for i
    check_blocklist("death", ["death metal"])


def test_block_entry_rules():
    assert block_entry("  Bád   Word ") == "bad word"
    assert "letters" in refusal(block_entry, "bad*word")
    assert "word or phrase" in refusal(block_entry, "  ")
    assert "60" in refusal(block_entry, "x" * 61)


# --- channels, defaults, caps -------------------------------------------------------------------------------


def test_channel_allow_list():
    everywhere = GuildSettings()
    check_channel("123", everywhere)
    only = GuildSettings(allowed_channel_ids=("1", "2"))
    check_channel("1", only)
    check_channel(2, only)
    check_channel("99", only, parent_id="2")  # a thread under an allowed channel
    assert "channels the admins chose" in refusal(check_channel, "3", only)
    check_channel(None, only)  # a DM has no server rules


def test_guild_defaults_fill_only_what_is_missing():
    settings = GuildSettings(default_duration_s=20.0, default_model="m-server")
    opts = apply_guild_defaults(ComposeOptions(prompt="jazz"), settings)
    assert (opts.duration_s, opts.model) == (20.0, "m-server")
    opts = apply_guild_defaults(ComposeOptions(prompt="jazz", duration_s=5.0), settings)
    assert opts.duration_s == 5.0 and opts.model == "m-server"
    untouched = apply_guild_defaults(ComposeOptions(prompt="jazz"), GuildSettings())
    assert untouched.duration_s is None and untouched.model is None  # the bot's own defaults apply later


def test_guild_caps():
    settings = GuildSettings(max_variations=2)
    assert apply_guild_defaults(ComposeOptions(prompt="x", variations=2), settings).variations == 2
    assert "up to 2 variations" in refusal(apply_guild_defaults, ComposeOptions(prompt="x", variations=3), settings)
    assert "up to 1 variation " in refusal(apply_guild_defaults, ComposeOptions(prompt="x", variations=2),
                                           GuildSettings(max_variations=1))
    assert "choose the model" in refusal(apply_guild_defaults, ComposeOptions(prompt="x", model="other"),
                                         GuildSettings())
    chosen = apply_guild_defaults(ComposeOptions(prompt="x", model="other"), GuildSettings(allow_model_choice=True))
    assert chosen.model == "other"


# --- SettingsStore ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_store_presets_per_user(store: SettingsStore):
    assert await store.presets("u1") == {}
    await store.set_preset("u1", "dreamy", "soft pads")
    await store.set_preset("u1", "lofi", "dusty")
    await store.set_preset("u2", "dreamy", "something else")
    await store.set_preset("u1", "dreamy", "soft pads, slow")  # replaces
    assert await store.presets("u1") == {"dreamy": "soft pads, slow", "lofi": "dusty"}
    assert await store.presets("u2") == {"dreamy": "something else"}
    assert await store.remove_preset("u1", "lofi") is True
    assert await store.remove_preset("u1", "lofi") is False
    assert await store.remove_preset("nobody", "x") is False
    assert await store.presets("u1") == {"dreamy": "soft pads, slow"}


@pytest.mark.asyncio
async def test_store_keeps_other_prefs_and_creates_user_row(store: SettingsStore):
    def seed(db) -> None:
        db.execute("INSERT INTO users (id, created, prefs) VALUES ('u3', 1, ?)", [json.dumps({"theme": "dark"})])

    await store.db.write(seed)
    await store.set_preset("u3", "a", "b")
    await store.set_preset("u4", "a", "b")
    rows = await store.db.read(lambda db: db.execute("SELECT id, prefs FROM users ORDER BY id").fetchall())
    prefs = {uid: json.loads(text) for uid, text in rows}
    assert prefs["u3"] == {"theme": "dark", "presets": {"a": "b"}}
    assert prefs["u4"] == {"presets": {"a": "b"}}


@pytest.mark.asyncio
async def test_store_keeps_what_each_server_chose(store: SettingsStore):
    assert await store.guild("g1") == {} and settings_from_json({}) == GuildSettings()
    assert GuildSettings().max_variations == 4 and GuildSettings().voting_window_s is None  # the bot default
    updated = await store.update_guild("g1", default_duration_s=20.0, max_variations=2, blocklist=["bad"])
    assert updated == {"default_duration_s": 20.0, "max_variations": 2, "blocklist": ["bad"]}
    assert await store.guild("g1") == updated and await store.guild("g2") == {}  # per server
    partial = await store.update_guild("g1", retention_days=30)
    assert partial["max_variations"] == 2 and partial["retention_days"] == 30  # other keys untouched
    reset = await store.update_guild("g1", max_variations=None, retention_days=None)
    assert "max_variations" not in reset  # a reset follows the default, not a copy of it
    assert settings_from_json(reset).max_variations == 4 and settings_from_json(reset).retention_days is None
    assert await store.guild_ids() == ["g1"]


@pytest.mark.asyncio
async def test_stored_values_this_version_cannot_use_are_ignored(store: SettingsStore):
    bad = json.dumps({"max_variations": "lots", "future_setting": 1, "voting_window_s": 600,
                      "retention_days": float("inf"), "allow_model_choice": None, "default_duration_s": float("nan"),
                      "blocklist": "bad", "allowed_channel_ids": [1, "2", "2"]})

    def seed(db) -> None:
        db.execute("INSERT INTO guild_settings (guild_id, settings, updated) VALUES ('g9', ?, 0)", [bad])

    await store.db.write(seed)
    settings = settings_from_json(await store.guild("g9"))
    assert settings == GuildSettings(voting_window_s=600, allowed_channel_ids=("1", "2"))
    await store.update_guild("g9", retention_days=7)
    assert (await store.guild("g9"))["future_setting"] == 1  # a newer version's key survives an edit


@pytest.mark.asyncio
async def test_concurrent_list_edits_all_land(service: Services):
    await asyncio.gather(*(service.add_channel(ADMIN, "g1", str(100 + i)) for i in range(10)))
    settings = await service.guild("g1")
    assert sorted(settings.allowed_channel_ids) == [str(100 + i) for i in range(10)]


# --- PresetService ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_service_presets(service: Services):
    text = plain(await service.set(MEMBER, "--Dreamy", "soft pads,\nreverb"))
    assert "Saved --dreamy" in text and "soft pads, reverb" in text
    assert "Updated" in plain(await service.set(MEMBER, "dreamy", "soft pads, reverb, slow"))
    assert await service.names(MEMBER) == ["dreamy"]
    listing = plain(await service.list(MEMBER))
    assert "--dreamy soft pads, reverb, slow" in listing
    assert "no presets" in plain(await service.list(ADMIN))
    assert await service.expand(MEMBER, "piano --DREAMY") == "piano soft pads, reverb, slow"
    assert "`--dreamy`" in await arefusal(service.expand(ADMIN, "piano --dreamy"))  # presets are per user
    assert "no preset called" in await arefusal(service.remove(MEMBER, "nope"))
    assert await service.remove(MEMBER, "DREAMY") == "Removed `--dreamy`."
    assert await service.names(MEMBER) == []


@pytest.mark.asyncio
async def test_service_preset_cap(service: Services):
    for i in range(MAX_PRESETS):
        plain(await service.set(MEMBER, f"p{i}", "x"))
    assert "most I keep" in await arefusal(service.set(MEMBER, "one-more", "x"))
    plain(await service.set(MEMBER, "p0", "replacing is fine"))


@pytest.mark.asyncio
async def test_non_admin_cannot_update_settings(service: Services):
    for attempt in (service.update_settings(MEMBER, "g1", max_variations=2),
                    service.add_channel(MEMBER, "g1", "5"), service.clear_channels(MEMBER, "g1"),
                    service.block(MEMBER, "g1", "bad"), service.unblock(MEMBER, "g1", "bad"),
                    service.blocklist_text(MEMBER, "g1")):
        assert "Only server admins" in await arefusal(attempt)
    assert await service.guild("g1") == GuildSettings()


@pytest.mark.asyncio
@pytest.mark.parametrize("changes, expected", [
    ({"default_duration_s": 45}, "between 1 and 30 seconds"),
    ({"default_duration_s": 0.5}, "between 1 and 30 seconds"),
    ({"default_duration_s": "ten"}, "between 1 and 30 seconds"),
    ({"default_model": "has space"}, "no spaces"),
    ({"default_model": "someone/else"}, "Available: `facebook/musicgen-small`"),
    ({"max_variations": 5}, "between 1 and 4"),
    ({"max_variations": 2.5}, "whole number"),
    ({"retention_days": float("nan")}, "whole number"),
    ({"voting_window_s": 10}, "between 1 minute and 7 days"),
    ({"retention_days": 0}, "between 1 and 3650 days"),
    ({"allow_model_choice": "yes"}, "yes or no"),
    ({"allowed_channel_ids": ["general"]}, "isn't a channel"),
    ({"blocklist": "bad"}, "list of words"),
    ({"blocklist": ["ok", "b*d"]}, "letters, digits"),
    ({"colour": "blue"}, "no setting called `colour`"),
    ({"max_variations": 2, "retention_days": -1}, "between 1 and 3650 days"),
    ({}, "what to change"),
])
async def test_invalid_settings_refused_and_nothing_saved(service: Services, changes, expected):
    message = await arefusal(service.update_settings(ADMIN, "g1", **changes))
    assert expected in message
    assert await service.guild("g1") == GuildSettings()


@pytest.mark.asyncio
async def test_admin_updates_and_settings_text(service: Services):
    text = await service.update_settings(ADMIN, "g1", default_duration_s=20, default_model="facebook/musicgen-small",
                                         max_variations=2, voting_window_s=1800, retention_days=30,
                                         allow_model_choice=True)
    assert text.startswith("Updated:") and "20 s" in text and "up to 2" in text and "30 min" in text
    settings = await service.guild("g1")
    assert settings == GuildSettings(default_duration_s=20.0, default_model="facebook/musicgen-small",
                                     max_variations=2, voting_window_s=1800, retention_days=30,
                                     allow_model_choice=True)
    await service.add_channel(ADMIN, "g1", "555")
    shown = plain(await service.settings_text("g1", lambda cid: f"<#{cid}>"))
    for part in ("Default duration: 20 s", "facebook/musicgen-small", "up to 2", "30 days", "<#555>",
                 "Voting window: 30 min", "Members may choose the model: yes", "Blocked words: none"):
        assert part in shown, part
    reset = plain(await service.update_settings(ADMIN, "g1", default_duration_s=None, retention_days=None))
    assert "bot default" in reset and "forever" in reset
    assert "Voting window: bot default" in plain(await service.settings_text("g2"))
    assert "belong to a server" in await arefusal(service.settings_text(None))


@pytest.mark.asyncio
async def test_channel_and_blocklist_commands(service: Services):
    assert "1 music channel in all" in await service.add_channel(ADMIN, "g1", "7")
    assert "2 music channels" in await service.add_channel(ADMIN, "g1", "8")
    await service.add_channel(ADMIN, "g1", "8")
    assert (await service.guild("g1")).allowed_channel_ids == ("7", "8")
    await service.remove_channel(ADMIN, "g1", "7")
    assert "every channel" in await service.clear_channels(ADMIN, "g1")
    assert "Blocked \u201cbad word\u201d" in await service.block(ADMIN, "g1", "  Bád  WORD ")
    await service.block(ADMIN, "g1", "bad word")
    assert await service.blocklist_entries(ADMIN, "g1") == ["bad word"]
    assert "\u201cbad word\u201d" in plain(await service.blocklist_text(ADMIN, "g1"))
    assert "isn't on the blocklist" in await arefusal(service.unblock(ADMIN, "g1", "other"))
    assert "Unblocked" in await service.unblock(ADMIN, "g1", "bad word")
    assert "Nothing is blocked" in plain(await service.blocklist_text(ADMIN, "g1"))


@pytest.mark.asyncio
async def test_prepare_applies_presets_then_server_rules(service: Services):
    plain(await service.set(MEMBER, "edgy", "b4d vibes"))
    plain(await service.update_settings(ADMIN, "g1", blocklist=["bad"], default_duration_s=12, max_variations=2))
    # The blocklist sees the expanded prompt: a preset cannot smuggle a blocked word in.
    assert "\u201cbad\u201d" in await arefusal(service.prepare(MEMBER, ComposeOptions(prompt="rock --edgy")))
    plain(await service.set(MEMBER, "calm", "soft piano"))
    opts = await service.prepare(MEMBER, ComposeOptions(prompt="night --calm"))
    assert opts.prompt == "night soft piano" and opts.duration_s == 12.0
    await arefusal(service.prepare(MEMBER, ComposeOptions(prompt="x", variations=3)))
    plain(await service.update_settings(ADMIN, "g1", allowed_channel_ids=["42"]))
    assert "channels the admins chose" in await arefusal(service.prepare(MEMBER, ComposeOptions(prompt="x")))
    in_thread = dataclasses.replace(MEMBER, channel_id="999", parent_channel_id="42")
    assert (await service.prepare(in_thread, ComposeOptions(prompt="x"))).prompt == "x"
    # Outside a server only presets apply.
    dm = Requester(user_id=MEMBER.user_id)
    assert (await service.prepare(dm, ComposeOptions(prompt="b a d --calm", variations=4))).variations == 4


@pytest.mark.asyncio
async def test_one_table_drives_storage_checks_and_display(service: Services):
    """Every setting is one row of bot/guild_settings.py: its field, its check and its line in /settings show."""
    names = [s.name for s in table.SETTINGS]
    assert names == [f.name for f in dataclasses.fields(GuildSettings)]
    shown = plain(await service.settings_text("g1"))
    for setting in table.SETTINGS:
        assert setting.label[0].upper() + setting.label[1:] + ":" in shown, setting.name
        assert getattr(GuildSettings(), setting.name) == setting.default
    assert "no setting called" in refusal(service.server.validate, "colour", 1)


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning")
async def test_discord_commands_shape(service: Services):
    """The cog registers /prefer for everyone and /settings for Manage Server only, guild-only (no network)."""
    import discord
    from discord.ext import commands

    from bot.discord.cogs.settings import SettingsCog

    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
    await bot.add_cog(SettingsCog(bot, service.presets, service.server))
    tree = {c.name: c.to_dict(bot.tree) for c in bot.tree.get_commands()}
    assert set(tree) == {"prefer", "settings"}
    assert {o["name"] for o in tree["prefer"]["options"]} == {"set", "remove", "list"}
    assert tree["prefer"]["default_member_permissions"] is None
    settings = tree["settings"]
    assert int(settings["default_member_permissions"]) == discord.Permissions(manage_guild=True).value
    assert settings["dm_permission"] is False
    subs = {o["name"]: o for o in settings["options"]}
    assert set(subs) == {"show", "set", "channels", "blocklist"}
    assert {o["name"] for o in subs["blocklist"]["options"]} == {"add", "remove", "list"}
    assert {o["name"] for o in subs["set"]["options"]} == {"duration", "model", "max_variations",
                                                           "voting_window_minutes", "retention_days",
                                                           "allow_model_choice", "manifest_prompt", "longest_song"}
    remove = next(o for o in tree["prefer"]["options"] if o["name"] == "remove")
    assert remove["options"][0]["autocomplete"] is True
    await bot.close()

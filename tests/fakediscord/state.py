"""The fake Discord's world: users, guilds, channels, threads, messages, interactions, commands, REST calls.

Why a separate module: the REST handlers, the gateway and the test API all read and change the same objects,
and the wire format (the dicts discord.py parses) is built in one place so every path emits the same shapes.
Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import itertools
import mimetypes
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Union
from urllib.parse import quote

DISCORD_EPOCH_MS = 1420070400000
MiB = 1024 * 1024


class Intents:
    """Gateway intent bits the fake cares about (https://discord.com/developers/docs/events/gateway#gateway-intents)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class Perms:
    """Permission bits used by the fake's checks."""

    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    SEND_MESSAGES_IN_THREADS = 1 << 38

    EVERYONE = (
        ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
        | USE_EXTERNAL_EMOJIS | USE_APPLICATION_COMMANDS | CREATE_PUBLIC_THREADS | SEND_MESSAGES_IN_THREADS
    )
    BOT = EVERYONE | MANAGE_MESSAGES | CREATE_PRIVATE_THREADS


class MessageFlags:
    HAS_THREAD = 1 << 5
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    IS_COMPONENTS_V2 = 1 << 15


class ChannelType:
    GUILD_TEXT = 0
    DM = 1
    ANNOUNCEMENT_THREAD = 10
    PUBLIC_THREAD = 11
    PRIVATE_THREAD = 12
    THREADS = (10, 11, 12)


class InteractionType:
    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class SnowflakeFactory:
    """Time-based, strictly increasing ids, so ``discord.utils.snowflake_time`` gives sane values."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last


@dataclass(eq=False)
class User:
    id: int
    username: str
    bot: bool = False
    global_name: Optional[str] = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
            "primary_guild": None,
            "collectibles": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass(eq=False)
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "description": None,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(eq=False)
class Member:
    user: User
    roles: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=now_iso)
    nick: Optional[str] = None

    def to_dict(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "joined_at": self.joined_at,
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.to_dict()
        return data


@dataclass(eq=False)
class Channel:
    """A guild text channel, a DM, or a thread (``type`` 10/11/12 with ``parent_id``)."""

    id: int
    type: int
    name: Optional[str] = None
    guild_id: Optional[int] = None
    parent_id: Optional[int] = None
    owner_id: Optional[int] = None
    recipients: list[User] = field(default_factory=list)
    position: int = 0
    topic: Optional[str] = None
    last_message_id: Optional[int] = None
    #: permission bits denied to the bot here (sent as a member overwrite, and enforced by the fake)
    bot_deny: int = 0
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    rate_limit_per_user: int = 0
    message_count: int = 0
    member_ids: set[int] = field(default_factory=set)
    created_at: str = field(default_factory=now_iso)

    @property
    def is_thread(self) -> bool:
        return self.type in ChannelType.THREADS

    @property
    def is_dm(self) -> bool:
        return self.type == ChannelType.DM

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    roles: list[Role] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    channel_ids: list[int] = field(default_factory=list)
    attachment_size_limit: int = 10 * MiB
    joined_at: str = field(default_factory=now_iso)


@dataclass(eq=False)
class Attachment:
    """Bytes stored by the fake and served back at ``url`` (so the bot can download them with aiohttp)."""

    id: int
    filename: str
    data: bytes
    channel_id: int
    content_type: Optional[str] = None
    description: Optional[str] = None
    title: Optional[str] = None
    duration_secs: Optional[float] = None
    waveform: Optional[str] = None
    ephemeral: bool = False
    url: str = ""

    @property
    def size(self) -> int:
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "content_scan_version": 0,
        }
        for key in ("description", "title", "duration_secs", "waveform"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.ephemeral:
            data["ephemeral"] = True
        return data


@dataclass(eq=False)
class Message:
    id: int
    channel_id: int
    author: User
    guild_id: Optional[int] = None
    content: str = ""
    type: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    nonce: Optional[Union[str, int]] = None
    tts: bool = False
    mentions: list[User] = field(default_factory=list)
    mention_everyone: bool = False
    message_reference: Optional[dict[str, Any]] = None
    referenced_message_id: Optional[int] = None
    webhook_id: Optional[int] = None
    application_id: Optional[int] = None
    interaction_id: Optional[int] = None
    interaction_metadata: Optional[dict[str, Any]] = None
    thread_id: Optional[int] = None
    position: Optional[int] = None
    pinned: bool = False
    reactions: dict[str, set[int]] = field(default_factory=dict)
    poll: Optional[dict[str, Any]] = None
    created_at: str = field(default_factory=now_iso)
    created_monotonic: float = field(default_factory=time.monotonic)
    edited_at: Optional[str] = None
    deleted: bool = False
    #: earlier versions of this message as (content, components) before each edit, oldest first
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlags.EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & MessageFlags.LOADING)

    def walk_components(self) -> list[dict[str, Any]]:
        """All components, depth first (action rows, their buttons/selects, v2 containers...)."""
        out: list[dict[str, Any]] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                out.append(item)
                walk(item.get("components") or [])
                if isinstance(item.get("accessory"), dict):
                    walk([item["accessory"]])

        walk(self.components)
        return out

    def component(self, custom_id: str) -> Optional[dict[str, Any]]:
        return next((c for c in self.walk_components() if c.get("custom_id") == custom_id), None)

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.walk_components() if c.get("custom_id")]

    def attachment(self, filename: str) -> Attachment:
        return next(a for a in self.attachments if a.filename == filename)


@dataclass
class FilePart:
    """One uploaded file part of a multipart request (``files[n]``)."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RestCall:
    """One REST request the bot made, and what the fake answered."""

    index: int
    method: str
    path: str
    route: Optional[str]
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    multipart: bool
    files: list[FilePart]
    time: float
    content_type: Optional[str] = None
    authorized: bool = False
    status: Optional[int] = None
    response: Any = None
    finished_at: Optional[float] = None
    injected: bool = False

    @property
    def body(self) -> Any:
        """The JSON body, or the parsed ``payload_json`` part of a multipart request."""
        return self.json

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def file(self, filename: str) -> FilePart:
        return next(f for f in self.files if f.filename == filename)

    def __repr__(self) -> str:
        return f"<RestCall #{self.index} {self.method} {self.path} -> {self.status}>"


@dataclass(eq=False)
class Interaction:
    """An interaction the fake dispatched; the REST handlers fill in how the bot answered it."""

    id: int
    token: str
    type: int
    application_id: int
    channel_id: int
    guild_id: Optional[int]
    user: User
    data: dict[str, Any]
    payload: dict[str, Any]
    created_at: float
    #: ``len(fake.calls)`` when it was dispatched: ``fake.calls[call_mark:]`` are the calls made since
    call_mark: int
    attachment_size_limit: int
    message_id: Optional[int] = None
    expired: bool = False
    callback: Optional[RestCall] = None
    callback_at: Optional[float] = None
    response_type: Optional[int] = None
    response_data: Optional[dict[str, Any]] = None
    original_message_id: Optional[int] = None
    followup_message_ids: list[int] = field(default_factory=list)
    #: whether the deferred "thinking" message was replaced by the first follow-up (as Discord does)
    loading_replaced: bool = False
    acknowledged: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def responded(self) -> bool:
        return self.response_type is not None

    @property
    def callback_latency(self) -> Optional[float]:
        """Seconds from dispatch to the callback reaching the fake."""
        return None if self.callback is None else self.callback.time - self.created_at

    @property
    def name(self) -> Optional[str]:
        return self.data.get("name")

    @property
    def custom_id(self) -> Optional[str]:
        return self.data.get("custom_id")

    def __repr__(self) -> str:
        what = self.name or self.custom_id
        return f"<Interaction id={self.id} type={self.type} {what!r} response_type={self.response_type}>"


@dataclass
class GatewayEvent:
    """One dispatch the fake sent (``t``/``d``), as sent to the first session."""

    name: str
    data: Any
    seq: Optional[int]
    time: float


def guess_content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


_MENTION_RE = re.compile(r"<@!?(\d+)>")


class FakeState:
    """All objects of the fake, plus the builders of their wire format."""

    def __init__(self, *, bot_name: str, token: str, guild_name: str, user_name: str) -> None:
        self.snowflake = SnowflakeFactory()
        self.token = token
        self.cdn_base = ""  # set when the server knows its port
        self.application_id = self.snowflake()
        self.bot_user = User(self.application_id, bot_name, bot=True)
        self.application_flags = (1 << 19) | (1 << 23)  # GATEWAY_MESSAGE_CONTENT_LIMITED, APPLICATION_COMMAND_BADGE
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.channel_messages: dict[int, list[Message]] = {}
        self.attachments: dict[int, Attachment] = {}
        self.interactions: dict[int, Interaction] = {}
        self.interactions_by_token: dict[str, Interaction] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self._command_version = itertools.count(1)
        self.default_user = self.add_user(user_name)
        self.default_guild = self.add_guild(guild_name, owner=self.default_user)
        self.default_channel = self.add_text_channel(self.default_guild, "general")
        self.default_dm = self.add_dm(self.default_user)

    # ---- building the world -------------------------------------------------------------------------------

    def add_user(self, username: str, *, bot: bool = False) -> User:
        user = User(self.snowflake(), username, bot=bot, global_name=username.title())
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, *, owner: Optional[User] = None) -> Guild:
        gid = self.snowflake()
        owner = owner or self.default_user
        everyone = Role(gid, "@everyone", Perms.EVERYONE)
        bot_role = Role(self.snowflake(), self.bot_user.username, Perms.BOT, position=1, managed=True,
                        bot_id=self.bot_user.id)
        guild = Guild(gid, name, owner.id, roles=[everyone, bot_role])
        self.guilds[gid] = guild
        guild.members[self.bot_user.id] = Member(self.bot_user, roles=[bot_role.id])
        self.ensure_member(guild, owner)
        return guild

    def ensure_member(self, guild: Guild, user: User) -> Member:
        if user.id not in guild.members:
            guild.members[user.id] = Member(user)
        return guild.members[user.id]

    def add_text_channel(self, guild: Guild, name: str) -> Channel:
        channel = Channel(self.snowflake(), ChannelType.GUILD_TEXT, name, guild_id=guild.id,
                          position=len(guild.channel_ids))
        self.channels[channel.id] = channel
        guild.channel_ids.append(channel.id)
        self.channel_messages[channel.id] = []
        return channel

    def add_dm(self, user: User) -> Channel:
        for channel in self.channels.values():
            if channel.is_dm and channel.recipients and channel.recipients[0].id == user.id:
                return channel
        channel = Channel(self.snowflake(), ChannelType.DM, None, recipients=[user])
        self.channels[channel.id] = channel
        self.channel_messages[channel.id] = []
        return channel

    def add_thread(self, parent: Channel, name: str, *, owner: User, thread_id: Optional[int] = None,
                   type: int = ChannelType.PUBLIC_THREAD, auto_archive_duration: int = 1440) -> Channel:
        thread = Channel(thread_id or self.snowflake(), type, name, guild_id=parent.guild_id, parent_id=parent.id,
                         owner_id=owner.id, auto_archive_duration=auto_archive_duration, member_ids={owner.id})
        self.channels[thread.id] = thread
        self.channel_messages[thread.id] = []
        return thread

    def add_attachment(self, channel_id: int, filename: str, data: bytes, *, content_type: Optional[str] = None,
                       **extra: Any) -> Attachment:
        att = Attachment(self.snowflake(), filename, data, channel_id,
                         content_type=content_type or guess_content_type(filename), **extra)
        att.url = f"{self.cdn_base}/attachments/{channel_id}/{att.id}/{quote(filename)}"
        self.attachments[att.id] = att
        return att

    def add_message(self, message: Message) -> Message:
        self.messages[message.id] = message
        self.channel_messages.setdefault(message.channel_id, []).append(message)
        channel = self.channels.get(message.channel_id)
        if channel is not None:
            channel.last_message_id = message.id
            if channel.is_thread:
                message.position = channel.message_count
                channel.message_count += 1
        return message

    def new_interaction_token(self) -> str:
        return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)

    # ---- lookups ------------------------------------------------------------------------------------------

    def guild_of(self, channel: Channel) -> Optional[Guild]:
        return self.guilds.get(channel.guild_id) if channel.guild_id is not None else None

    def parse_mentions(self, content: str) -> list[User]:
        seen: dict[int, User] = {}
        for raw in _MENTION_RE.findall(content or ""):
            user = self.users.get(int(raw))
            if user is not None:
                seen.setdefault(user.id, user)
        return list(seen.values())

    def bot_permissions(self, channel: Channel) -> int:
        """What the bot may do in a channel: its roles, minus the channel's (and a thread's parent's) denies."""
        if channel.is_dm:
            return Perms.BOT
        guild = self.guild_of(channel)
        perms = 0
        if guild is not None:
            member = guild.members[self.bot_user.id]
            for role in guild.roles:
                if role.id == guild.id or role.id in member.roles:
                    perms |= role.permissions
        deny = channel.bot_deny
        if channel.parent_id is not None and channel.parent_id in self.channels:
            deny |= self.channels[channel.parent_id].bot_deny
        return perms & ~deny

    def member_permissions(self, guild: Guild, user: User) -> int:
        member = self.ensure_member(guild, user)
        perms = 0
        for role in guild.roles:
            if role.id == guild.id or role.id in member.roles:
                perms |= role.permissions
        if guild.owner_id == user.id:
            perms |= (1 << 3)  # ADMINISTRATOR
        return perms

    # ---- wire format --------------------------------------------------------------------------------------

    def channel_dict(self, channel: Channel) -> dict[str, Any]:
        if channel.is_dm:
            return {
                "id": str(channel.id),
                "type": channel.type,
                "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
                "recipients": [u.to_dict() for u in channel.recipients],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
            "rate_limit_per_user": channel.rate_limit_per_user,
            "flags": 0,
        }
        if channel.is_thread:
            data.update(
                parent_id=str(channel.parent_id),
                owner_id=str(channel.owner_id),
                message_count=channel.message_count,
                total_message_sent=channel.message_count,
                member_count=len(channel.member_ids),
                thread_metadata={
                    "archived": channel.archived,
                    "archive_timestamp": channel.created_at,
                    "auto_archive_duration": channel.auto_archive_duration,
                    "locked": channel.locked,
                    "create_timestamp": channel.created_at,
                    **({"invitable": True} if channel.type == ChannelType.PRIVATE_THREAD else {}),
                },
            )
            if self.bot_user.id in channel.member_ids:
                data["member"] = {"id": str(channel.id), "user_id": str(self.bot_user.id),
                                  "join_timestamp": channel.created_at, "flags": 1}
        else:
            overwrites = []
            if channel.bot_deny:
                overwrites.append({"id": str(self.bot_user.id), "type": 1, "allow": "0",
                                   "deny": str(channel.bot_deny)})
            data.update(
                position=channel.position,
                permission_overwrites=overwrites,
                parent_id=None,
                topic=channel.topic,
                nsfw=False,
                default_auto_archive_duration=1440,
                default_thread_rate_limit_per_user=0,
            )
        return data

    def guild_create_dict(self, guild: Guild, *, all_members: bool) -> dict[str, Any]:
        """GUILD_CREATE: the full guild with channels, active threads and (with GUILD_MEMBERS) members."""
        members = [m for m in guild.members.values() if all_members or m.user.id == self.bot_user.id]
        channels = [self.channel_dict(self.channels[cid]) for cid in guild.channel_ids]
        for ch in channels:
            ch.pop("guild_id", None)  # Discord omits guild_id on channels inside GUILD_CREATE
        threads = [self.channel_dict(c) for c in self.channels.values()
                   if c.is_thread and c.guild_id == guild.id and not c.archived]
        data = self.guild_dict(guild)
        data.update(
            joined_at=guild.joined_at,
            large=False,
            unavailable=False,
            member_count=len(guild.members),
            members=[m.to_dict() for m in members],
            channels=channels,
            threads=threads,
            presences=[],
            voice_states=[],
            stage_instances=[],
            guild_scheduled_events=[],
            soundboard_sounds=[],
            lazy=True,
        )
        return data

    def guild_dict(self, guild: Guild) -> dict[str, Any]:
        first_channel = guild.channel_ids[0] if guild.channel_ids else None
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": [r.to_dict() for r in guild.roles],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": str(first_channel) if first_channel else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "incidents_data": None,
        }

    def message_dict(self, msg: Message, *, gateway: bool = False, intents: Optional[int] = None,
                     nested: bool = False) -> dict[str, Any]:
        """A message as Discord sends it; with ``intents`` it applies the MESSAGE_CONTENT rules."""
        data: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "type": msg.type,
            "content": msg.content,
            "author": msg.author.to_dict(),
            "attachments": [a.to_dict() for a in msg.attachments],
            "embeds": msg.embeds,
            "mentions": [u.to_dict() for u in msg.mentions],
            "mention_roles": [],
            "mention_everyone": msg.mention_everyone,
            "pinned": msg.pinned,
            "tts": msg.tts,
            "timestamp": msg.created_at,
            "edited_timestamp": msg.edited_at,
            "flags": msg.flags,
            "components": msg.components,
        }
        if msg.nonce is not None:
            data["nonce"] = msg.nonce
        if msg.webhook_id is not None:
            data["webhook_id"] = str(msg.webhook_id)
        if msg.application_id is not None:
            data["application_id"] = str(msg.application_id)
        if msg.interaction_metadata is not None:
            data["interaction_metadata"] = msg.interaction_metadata
        if msg.poll is not None:
            data["poll"] = msg.poll
        if msg.position is not None:
            data["position"] = msg.position
        if msg.reactions:
            data["reactions"] = [
                {"emoji": {"id": None, "name": emoji}, "count": len(users), "me": self.bot_user.id in users,
                 "count_details": {"burst": 0, "normal": len(users)}, "burst_colors": [], "me_burst": False,
                 "burst_me": False, "burst_count": 0}
                for emoji, users in msg.reactions.items() if users
            ]
        if msg.message_reference is not None:
            data["message_reference"] = msg.message_reference
            if not nested:
                ref = self.messages.get(msg.referenced_message_id or 0)
                data["referenced_message"] = (
                    None if ref is None or ref.deleted
                    else self.message_dict(ref, gateway=gateway, intents=intents, nested=True)
                )
        if msg.thread_id is not None and msg.thread_id in self.channels:
            data["thread"] = self.channel_dict(self.channels[msg.thread_id])
        if gateway and msg.guild_id is not None:
            guild = self.guilds.get(msg.guild_id)
            data["guild_id"] = str(msg.guild_id)
            if guild is not None and msg.webhook_id is None:
                data["member"] = self.ensure_member(guild, msg.author).to_dict(with_user=False)
            if guild is not None:
                for mention in data["mentions"]:
                    member = guild.members.get(int(mention["id"]))
                    if member is not None:
                        mention["member"] = member.to_dict(with_user=False)
        if intents is not None and not self.content_visible(msg, intents):
            data.update(content="", embeds=[], attachments=[], components=[])
            data.pop("poll", None)
        return data

    def content_visible(self, msg: Message, intents: int) -> bool:
        """Discord's MESSAGE_CONTENT rule: without the intent the bot sees content only of its own
        messages, DMs, and messages that mention it."""
        if intents & Intents.MESSAGE_CONTENT:
            return True
        if msg.author.id == self.bot_user.id or msg.guild_id is None:
            return True
        return any(u.id == self.bot_user.id for u in msg.mentions)

    def application_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "Bandmate test application",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": self.application_flags,
            "bot": self.bot_user.to_dict(),
            "owner": self.default_user.to_dict(),
            "team": None,
            "rpc_origins": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "tags": [],
            "install_params": {"scopes": ["bot", "applications.commands"], "permissions": str(Perms.BOT)},
            "integration_types_config": {"0": {}},
            "approximate_guild_count": len(self.guilds),
            "approximate_user_install_count": 0,
            "custom_install_url": None,
            "terms_of_service_url": None,
            "privacy_policy_url": None,
            "guild_id": None,
            "primary_sku_id": None,
            "slug": None,
            "cover_image": None,
        }

    def store_commands(self, commands: list[dict[str, Any]], guild_id: Optional[int]) -> list[dict[str, Any]]:
        """Bulk overwrite: keep ids of commands with the same (name, type), as Discord does."""
        existing = self.guild_commands.get(guild_id, []) if guild_id else self.global_commands
        by_key = {(c["name"], c.get("type", 1)): c for c in existing}
        stored = []
        for body in commands:
            key = (body["name"], body.get("type", 1))
            old = by_key.get(key)
            stored.append(self.command_dict(body, guild_id, command_id=int(old["id"]) if old else None))
        if guild_id:
            self.guild_commands[guild_id] = stored
        else:
            self.global_commands = stored
        return stored

    def command_dict(self, body: dict[str, Any], guild_id: Optional[int], *,
                     command_id: Optional[int] = None) -> dict[str, Any]:
        data = {
            "id": str(command_id or self.snowflake()),
            "application_id": str(self.application_id),
            "version": str(self.snowflake()),
            "type": body.get("type", 1),
            "name": body["name"],
            "name_localizations": body.get("name_localizations"),
            "description": body.get("description", ""),
            "description_localizations": body.get("description_localizations"),
            "options": body.get("options") or [],
            "default_member_permissions": body.get("default_member_permissions"),
            "dm_permission": body.get("dm_permission", True),
            "nsfw": body.get("nsfw", False),
            "contexts": body.get("contexts"),
            "integration_types": body.get("integration_types") or [0],
        }
        if guild_id:
            data["guild_id"] = str(guild_id)
        return data

    def find_command(self, name: str, guild_id: Optional[int], type: int = 1) -> Optional[dict[str, Any]]:
        for cmd in self.guild_commands.get(guild_id, []) if guild_id else []:
            if cmd["name"] == name and cmd.get("type", 1) == type:
                return cmd
        return next((c for c in self.global_commands if c["name"] == name and c.get("type", 1) == type), None)


def assign_component_ids(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Discord numbers every component of a message (depth first) when the sender did not."""
    counter = itertools.count(1)
    used: set[int] = set()

    def collect(items: list[dict[str, Any]]) -> None:
        for item in items:
            if isinstance(item.get("id"), int):
                used.add(item["id"])
            collect(item.get("components") or [])

    def assign(items: list[dict[str, Any]]) -> None:
        for item in items:
            if not isinstance(item.get("id"), int):
                n = next(counter)
                while n in used:
                    n = next(counter)
                item["id"] = n
            assign(item.get("components") or [])
            if isinstance(item.get("accessory"), dict):
                assign([item["accessory"]])

    collect(components)
    assign(components)
    return components

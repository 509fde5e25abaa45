"""The fake REST API: the subset of Discord's HTTP API a music bot uses, with Discord's errors and rate limits.

Why each behaviour exists:

* Every request is recorded (``RestCall``) before it is answered, so tests can assert order ("the callback was
  the first call after the interaction") and payloads; every body is checked against the OpenAPI spec.
* Responses carry ``Content-Type: application/json`` exactly: discord.py's ``json_or_text`` compares the header
  with ``==``, so ``application/json; charset=utf-8`` would hand the bot a ``str`` instead of a dict.
* A 429 must carry a ``Via`` header and a JSON body with ``retry_after``: without ``Via`` discord.py treats it as a
  Cloudflare ban and raises instead of retrying.
* Interaction semantics follow Discord: a callback is allowed once and only within ``callback_deadline`` seconds;
  the first follow-up after a "thinking" defer replaces the loading message; expired tokens answer
  401 "Invalid Webhook Token" (50027) or 404 "Unknown Webhook" (10015).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from aiohttp import web

from .state import (
    Attachment,
    Channel,
    ChannelType,
    FilePart,
    Interaction,
    InteractionType,
    Message,
    MessageFlags,
    Perms,
    RestCall,
    assign_component_ids,
    now_iso,
)

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
JSON_HEADERS = {"Content-Type": "application/json"}


class ApiError(Exception):
    """An error answer in Discord's shape: ``{"message", "code", "errors"?}``."""

    def __init__(self, status: int, message: str, code: int = 0, errors: Optional[dict[str, Any]] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(f"{status} {message} ({code})")
        self.status, self.message, self.code, self.errors, self.headers = status, message, code, errors, headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def form_error(field_path: str, code: str, message: str) -> ApiError:
    """400 Invalid Form Body (50035) with Discord's nested ``errors`` object."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_path.split(".")):
        errors = {part: errors}
    return ApiError(400, "Invalid Form Body", 50035, errors)


UNKNOWN_CHANNEL = (404, "Unknown Channel", 10003)
UNKNOWN_GUILD = (404, "Unknown Guild", 10004)
UNKNOWN_MEMBER = (404, "Unknown Member", 10007)
UNKNOWN_MESSAGE = (404, "Unknown Message", 10008)
UNKNOWN_USER = (404, "Unknown User", 10013)
UNKNOWN_WEBHOOK = (404, "Unknown Webhook", 10015)
UNKNOWN_INTERACTION = (404, "Unknown interaction", 10062)
UNKNOWN_COMMAND = (404, "Unknown application command", 10063)
INVALID_WEBHOOK_TOKEN = (401, "Invalid Webhook Token", 50027)
MISSING_ACCESS = (403, "Missing Access", 50001)
MISSING_PERMISSIONS = (403, "Missing Permissions", 50013)
ALREADY_ACKNOWLEDGED = (400, "Interaction has already been acknowledged.", 40060)
EMPTY_MESSAGE = (400, "Cannot send an empty message", 50006)
WRONG_CHANNEL_TYPE = (400, "Cannot execute action on this channel type", 50024)
THREAD_EXISTS = (400, "A thread has already been created for this message", 160004)
CANNOT_EDIT_OTHERS = (403, "Cannot edit a message authored by another user", 50005)
TOO_LARGE = (413, "Request entity too large", 40005)


def err(spec: tuple[int, str, int]) -> ApiError:
    return ApiError(*spec)


@dataclass
class FaultRule:
    """``fail_next``: answer the next ``count`` matching calls with ``status`` instead of handling them."""

    method: str
    route: str
    status: int
    retry_after: float
    count: int
    is_global: bool = False
    body: Optional[dict[str, Any]] = None
    delay: float = 0.0
    hits: list[RestCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self._regex = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(self.route)) + "$")

    def matches(self, call: RestCall) -> bool:
        return (self.count > 0 and self.method in (call.method, "*")
                and (self.route == call.route or bool(self._regex.match(call.path))))

    @property
    def exhausted(self) -> bool:
        return self.count <= 0


Handler = Callable[[RestCall], Awaitable[tuple[int, Any]]]


class RestApi:
    def __init__(self, fake: "FakeDiscord") -> None:
        self.fake = fake
        self.state = fake.state
        self.calls: list[RestCall] = []
        self.faults: list[FaultRule] = []
        self.cdn_requests: list[str] = []
        self._routes: list[tuple[str, str, re.Pattern[str], Handler, int]] = []
        r = self._add
        r("GET", "/users/@me", self.get_me)
        r("PATCH", "/users/@me", self.patch_me)
        r("GET", "/users/{user_id}", self.get_user)
        r("POST", "/users/@me/channels", self.create_dm)
        r("GET", "/oauth2/applications/@me", self.get_application)
        r("GET", "/users/@me/guilds", self.get_my_guilds)
        r("GET", "/applications/@me", self.get_application)
        r("GET", "/gateway", self.get_gateway)
        r("GET", "/gateway/bot", self.get_gateway_bot)
        for prefix in ("/applications/{application_id}", "/applications/{application_id}/guilds/{guild_id}"):
            r("GET", prefix + "/commands", self.get_commands)
            r("PUT", prefix + "/commands", self.put_commands)
            r("POST", prefix + "/commands", self.post_command)
            r("GET", prefix + "/commands/{command_id}", self.get_command)
            r("PATCH", prefix + "/commands/{command_id}", self.patch_command)
            r("DELETE", prefix + "/commands/{command_id}", self.delete_command)
        r("POST", "/interactions/{interaction_id}/{interaction_token}/callback", self.interaction_callback)
        r("POST", "/webhooks/{webhook_id}/{webhook_token}", self.execute_webhook)
        for suffix in ("/messages/@original", "/messages/{message_id}"):
            r("GET", "/webhooks/{webhook_id}/{webhook_token}" + suffix, self.get_webhook_message)
            r("PATCH", "/webhooks/{webhook_id}/{webhook_token}" + suffix, self.edit_webhook_message)
            r("DELETE", "/webhooks/{webhook_id}/{webhook_token}" + suffix, self.delete_webhook_message)
        r("GET", "/channels/{channel_id}", self.get_channel)
        r("PATCH", "/channels/{channel_id}", self.patch_channel)
        r("GET", "/channels/{channel_id}/messages", self.list_messages)
        r("POST", "/channels/{channel_id}/messages", self.create_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        r("POST", "/channels/{channel_id}/typing", self.typing)
        r("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji_name}/@me", self.add_reaction)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji_name}/@me", self.remove_reaction)
        r("POST", "/channels/{channel_id}/messages/{message_id}/threads", self.thread_from_message)
        r("POST", "/channels/{channel_id}/threads", self.thread_without_message)
        r("PUT", "/channels/{channel_id}/thread-members/@me", self.join_thread)
        r("DELETE", "/channels/{channel_id}/thread-members/@me", self.leave_thread)
        r("GET", "/guilds/{guild_id}", self.get_guild)
        r("GET", "/guilds/{guild_id}/channels", self.get_guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self.get_guild_roles)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)
        r("GET", "/guilds/{guild_id}/threads/active", self.get_active_threads)
        # most literal segments first: /messages/@original before /messages/{message_id}
        self._routes.sort(key=lambda route: -route[4])

    def _add(self, method: str, template: str, handler: Handler) -> None:
        pattern = re.compile("^" + re.sub(r"\\\{([^/]+?)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
        literals = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
        self._routes.append((method, template, pattern, handler, literals))

    def _match(self, method: str, path: str) -> tuple[Optional[str], dict[str, str], Optional[Handler], bool]:
        path_known = False
        for m, template, pattern, handler, _ in self._routes:
            found = pattern.match(path)
            if found:
                path_known = True
                if m == method:
                    return template, found.groupdict(), handler, True
        return None, {}, None, path_known

    # ---- the request pipeline -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        loop_time = asyncio.get_running_loop().time()
        path = request.path[len(API_PREFIX):] if request.path.startswith(API_PREFIX) else request.path
        method = request.method.upper()
        template, params, handler, path_known = self._match(method, path)
        body, files, multipart, parse_error, has_body = await self._parse_body(request)
        auth = request.headers.get("Authorization")
        call = RestCall(
            index=len(self.calls), method=method, path=path, route=template, params=params,
            query=dict(request.query), json=body, multipart=multipart, files=files, time=loop_time,
            content_type=request.headers.get("Content-Type"), authorized=auth == f"Bot {self.state.token}",
        )
        self.calls.append(call)
        self.fake._notify()
        if self.fake.validator is not None and request.path.startswith(API_PREFIX) and parse_error is None:
            for violation in self.fake.validator.validate(method, path, body, has_body=has_body):
                log.error("OpenAPI violation: %s", violation)
                self.fake.violations.append(violation)
        status, payload, headers = await self._answer(call, handler, path_known, parse_error, auth)
        call.status, call.response, call.finished_at = status, payload, asyncio.get_running_loop().time()
        if handler is not None and not call.injected and template is not None:
            headers = {**self._ratelimit_headers(template), **headers}
        self.fake._notify()
        if payload is None:
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=json.dumps(payload).encode(), headers={**JSON_HEADERS, **headers})

    async def _answer(self, call: RestCall, handler: Optional[Handler], path_known: bool,
                      parse_error: Optional[ApiError], auth: Optional[str]) -> tuple[int, Any, dict[str, str]]:
        if handler is None and not path_known:
            log.warning("fake Discord: unknown route %s %s", call.method, call.path)
            return 404, {"message": "404: Not Found", "code": 0}, {}
        needs_auth = not (call.path.startswith("/webhooks/") or call.path.startswith("/interactions/"))
        if needs_auth and not call.authorized:
            return 401, {"message": "401: Unauthorized", "code": 0}, {}
        for rule in self.faults:
            if rule.matches(call):
                rule.count -= 1
                rule.hits.append(call)
                call.injected = True
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                return self._fault_answer(rule)
        if handler is None:
            return 405, {"message": "405: Method Not Allowed", "code": 0}, {}
        if parse_error is not None:
            return parse_error.status, parse_error.body(), {}
        try:
            status, payload = await handler(call)
        except ApiError as exc:
            return exc.status, exc.body(), exc.headers or {}
        return status, payload, {}

    def _fault_answer(self, rule: FaultRule) -> tuple[int, Any, dict[str, str]]:
        if rule.status == 429:
            reset = time.time() + rule.retry_after
            headers = {
                "Retry-After": str(max(1, math.ceil(rule.retry_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{reset:.3f}",
                "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                "X-RateLimit-Bucket": hashlib.sha1(rule.route.encode()).hexdigest()[:32],
                "X-RateLimit-Scope": "global" if rule.is_global else "user",
                "Via": "1.1 google",  # discord.py retries a 429 only when Via is present
            }
            if rule.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = rule.body or {"message": "You are being rate limited.", "retry_after": rule.retry_after,
                                 "global": rule.is_global}
            return 429, body, headers
        if rule.body is not None:
            return rule.status, rule.body, {}
        if rule.status >= 500:
            return rule.status, {"message": f"{rule.status}: Internal Server Error", "code": 0}, {}
        return rule.status, {"message": f"{rule.status}: injected failure", "code": 0}, {}

    @staticmethod
    def _ratelimit_headers(template: str) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": "50",
            "X-RateLimit-Remaining": "49",
            "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": hashlib.sha1(template.encode()).hexdigest()[:32],
        }

    async def _parse_body(self, request: web.Request
                          ) -> tuple[Any, list[FilePart], bool, Optional[ApiError], bool]:
        """Returns (json body or payload_json, files, is_multipart, parse error, whether a body was sent)."""
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            payload: Any = None
            files: list[FilePart] = []
            reader = await request.multipart()
            async for part in reader:
                if part is None:
                    break
                data = await part.read(decode=False)  # type: ignore[union-attr]
                name = part.name or ""  # type: ignore[union-attr]
                if name == "payload_json":
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        return None, files, True, ApiError(400, "The request body contains invalid JSON.", 50109), True
                else:
                    files.append(FilePart(name, part.filename or name,  # type: ignore[union-attr]
                                          part.headers.get("Content-Type", "application/octet-stream"), bytes(data)))
            return payload, files, True, None, True
        raw = await request.read()
        if not raw:
            return None, [], False, None, False
        try:
            return json.loads(raw), [], False, None, True
        except ValueError:
            return None, [], False, ApiError(400, "The request body contains invalid JSON.", 50109), True

    # ---- helpers ------------------------------------------------------------------------------------------

    def _channel(self, call: RestCall, key: str = "channel_id") -> Channel:
        channel = self.state.channels.get(_int(call.params.get(key)))
        if channel is None:
            raise err(UNKNOWN_CHANNEL)
        if not channel.is_dm and not self.state.bot_permissions(channel) & Perms.VIEW_CHANNEL:
            raise err(MISSING_ACCESS)
        return channel

    def _message(self, channel: Channel, message_id: Any) -> Message:
        msg = self.state.messages.get(_int(message_id))
        if msg is None or msg.deleted or msg.channel_id != channel.id:
            raise err(UNKNOWN_MESSAGE)
        return msg

    def _require(self, channel: Channel, bits: int) -> None:
        if channel.is_dm:
            return
        if self.state.bot_permissions(channel) & bits != bits:
            raise err(MISSING_PERMISSIONS)

    def _attachments(self, body: dict[str, Any], files: list[FilePart], channel_id: int, limit: int,
                     keep: list[Attachment], *, ephemeral: bool = False) -> list[Attachment]:
        """Resolve ``attachments`` (new uploads by ``files[n]`` index, kept ones by id) plus unreferenced files."""
        for part in files:
            if len(part.data) > limit:
                raise err(TOO_LARGE)
        parts = {part.field: part for part in files}
        used: set[str] = set()
        result: list[Attachment] = []
        listed = body.get("attachments")
        if listed is None:
            result.extend(keep)
        else:
            for index, item in enumerate(listed):
                field_name = f"files[{item.get('id')}]"
                part = parts.get(field_name)
                if part is not None and field_name not in used:
                    used.add(field_name)
                    result.append(self.state.add_attachment(
                        channel_id, item.get("filename") or part.filename, part.data,
                        description=item.get("description"), title=item.get("title"),
                        duration_secs=item.get("duration_secs"), waveform=item.get("waveform"), ephemeral=ephemeral))
                    continue
                kept = next((a for a in keep if str(a.id) == str(item.get("id"))), None)
                if kept is None:
                    raise form_error(f"attachments.{index}.id", "ATTACHMENT_NOT_FOUND", "Unknown attachment")
                result.append(kept)
        for part in files:
            if part.field not in used:
                result.append(self.state.add_attachment(channel_id, part.filename, part.data, ephemeral=ephemeral))
        if len(result) > 10:
            raise form_error("attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        return result

    def _check_content(self, body: dict[str, Any], *, has_files: bool, require_something: bool = True) -> None:
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            raise form_error("content", "BASE_TYPE_STRING", "Must be a string.")
        if content is not None and len(content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        flags = body.get("flags") or 0
        if flags & MessageFlags.IS_COMPONENTS_V2 and (content or body.get("embeds")):
            raise form_error("content", "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                             "The 'content' field cannot be used when using MessageFlags.IS_COMPONENTS_V2")
        if require_something and not ((content or "").strip() or body.get("embeds") or body.get("components")
                                      or has_files or body.get("attachments") or body.get("sticker_ids")
                                      or body.get("poll")):
            raise err(EMPTY_MESSAGE)

    def _apply_edit(self, msg: Message, body: dict[str, Any], files: list[FilePart], limit: int) -> None:
        self._check_content({**body, "content": body.get("content", msg.content)},
                            has_files=bool(files or msg.attachments), require_something=False)
        msg.history.append({"content": msg.content, "components": msg.components, "flags": msg.flags})
        if "content" in body:
            msg.content = body["content"] or ""
            msg.mentions = self.state.parse_mentions(msg.content)
        if "embeds" in body:
            msg.embeds = _embeds(body["embeds"])
        if "components" in body:
            msg.components = assign_component_ids(json.loads(json.dumps(body["components"] or [])))
        if "flags" in body and body["flags"] is not None:
            # only SUPPRESS_EMBEDS (4) and IS_COMPONENTS_V2 may change on edit
            mutable = 4 | MessageFlags.IS_COMPONENTS_V2
            msg.flags = (msg.flags & ~mutable) | (body["flags"] & mutable)
        if "attachments" in body or files:
            msg.attachments = self._attachments(body, files, msg.channel_id, limit, msg.attachments,
                                                ephemeral=msg.ephemeral)
        if "poll" in body:
            msg.poll = body["poll"]
        msg.edited_at = now_iso()

    async def _emit_message(self, event: str, msg: Message) -> None:
        if msg.ephemeral:
            return  # the bot never receives gateway events for ephemeral messages
        if event == "MESSAGE_DELETE":
            data: Any = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id:
                data["guild_id"] = str(msg.guild_id)
        else:
            def data(intents: int, msg: Message = msg) -> dict[str, Any]:
                return self.state.message_dict(msg, gateway=True, intents=intents)
        await self.fake._emit(event, data, dm=msg.guild_id is None)

    def _new_message(self, channel: Channel, body: dict[str, Any], files: list[FilePart], *, limit: int,
                     type: int = 0, flags: int = 0, interaction: Optional[Interaction] = None) -> Message:
        author = self.state.bot_user
        msg = Message(
            id=self.state.snowflake(), channel_id=channel.id, author=author, guild_id=channel.guild_id,
            content=body.get("content") or "", type=type,
            components=assign_component_ids(json.loads(json.dumps(body.get("components") or []))),
            embeds=_embeds(body.get("embeds") or []), flags=flags, tts=bool(body.get("tts")),
            poll=body.get("poll"),
        )
        msg.mentions = self.state.parse_mentions(msg.content)
        msg.attachments = self._attachments(body, files, channel.id, limit, [], ephemeral=msg.ephemeral)
        if interaction is not None:
            msg.webhook_id = msg.application_id = self.state.application_id
            msg.interaction_id = interaction.id
            metadata: dict[str, Any] = {
                "id": str(interaction.id), "type": interaction.type, "user": interaction.user.to_dict(),
                "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
            }
            if interaction.type == InteractionType.APPLICATION_COMMAND:
                metadata["name"] = interaction.data.get("name")
                metadata["command_type"] = interaction.data.get("type", 1)
            elif interaction.message_id is not None:
                metadata["interacted_message_id"] = str(interaction.message_id)
            msg.interaction_metadata = metadata
        return self.state.add_message(msg)

    def _limit_for(self, channel: Channel) -> int:
        guild = self.state.guild_of(channel)
        return guild.attachment_size_limit if guild is not None else self.fake.attachment_size_limit

    # ---- users / application / gateway -------------------------------------------------------------------

    async def get_me(self, call: RestCall) -> tuple[int, Any]:
        return 200, {**self.state.bot_user.to_dict(), "verified": True, "mfa_enabled": False, "locale": "en-US",
                     "email": None}

    async def patch_me(self, call: RestCall) -> tuple[int, Any]:
        if (call.json or {}).get("username"):
            self.state.bot_user.username = call.json["username"]
        return await self.get_me(call)

    async def get_user(self, call: RestCall) -> tuple[int, Any]:
        user = self.state.users.get(_int(call.params["user_id"]))
        if user is None:
            raise err(UNKNOWN_USER)
        return 200, user.to_dict()

    async def create_dm(self, call: RestCall) -> tuple[int, Any]:
        user = self.state.users.get(_int((call.json or {}).get("recipient_id")))
        if user is None:
            raise err(UNKNOWN_USER)
        return 200, self.state.channel_dict(self.state.add_dm(user))

    async def get_application(self, call: RestCall) -> tuple[int, Any]:
        return 200, self.state.application_dict()

    async def get_my_guilds(self, call: RestCall) -> tuple[int, Any]:
        """The bot's servers with its permissions in each (guild-level: the base role grants)."""
        return 200, [{"id": str(g.id), "name": g.name, "icon": None, "owner": False,
                      "permissions": str(Perms.BOT), "features": []} for g in self.state.guilds.values()]

    async def get_gateway(self, call: RestCall) -> tuple[int, Any]:
        return 200, {"url": self.fake.gateway_url}

    async def get_gateway_bot(self, call: RestCall) -> tuple[int, Any]:
        return 200, {"url": self.fake.gateway_url, "shards": 1,
                     "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 86400000,
                                             "max_concurrency": 1}}

    # ---- application commands -----------------------------------------------------------------------------

    def _command_scope(self, call: RestCall) -> Optional[int]:
        if _int(call.params["application_id"]) != self.state.application_id:
            raise ApiError(403, "Missing Access", 50001)
        guild_id = call.params.get("guild_id")
        if guild_id is None:
            return None
        if _int(guild_id) not in self.state.guilds:
            raise err(MISSING_ACCESS)
        return _int(guild_id)

    def _commands(self, guild_id: Optional[int]) -> list[dict[str, Any]]:
        return self.state.guild_commands.setdefault(guild_id, []) if guild_id else self.state.global_commands

    async def get_commands(self, call: RestCall) -> tuple[int, Any]:
        return 200, self._commands(self._command_scope(call))

    async def put_commands(self, call: RestCall) -> tuple[int, Any]:
        guild_id = self._command_scope(call)
        return 200, self.state.store_commands(list(call.json or []), guild_id)

    async def post_command(self, call: RestCall) -> tuple[int, Any]:
        guild_id = self._command_scope(call)
        body = call.json or {}
        commands = self._commands(guild_id)
        for i, cmd in enumerate(commands):
            if cmd["name"] == body.get("name") and cmd.get("type", 1) == body.get("type", 1):
                commands[i] = self.state.command_dict(body, guild_id, command_id=int(cmd["id"]))
                return 200, commands[i]
        commands.append(self.state.command_dict(body, guild_id))
        return 201, commands[-1]

    def _find_command(self, call: RestCall) -> tuple[list[dict[str, Any]], int]:
        commands = self._commands(self._command_scope(call))
        for i, cmd in enumerate(commands):
            if cmd["id"] == call.params["command_id"]:
                return commands, i
        raise err(UNKNOWN_COMMAND)

    async def get_command(self, call: RestCall) -> tuple[int, Any]:
        commands, i = self._find_command(call)
        return 200, commands[i]

    async def patch_command(self, call: RestCall) -> tuple[int, Any]:
        commands, i = self._find_command(call)
        commands[i] = {**commands[i], **(call.json or {}), "version": str(self.state.snowflake())}
        return 200, commands[i]

    async def delete_command(self, call: RestCall) -> tuple[int, Any]:
        commands, i = self._find_command(call)
        del commands[i]
        return 204, None

    # ---- interactions -------------------------------------------------------------------------------------

    async def interaction_callback(self, call: RestCall) -> tuple[int, Any]:
        interaction = self.state.interactions.get(_int(call.params["interaction_id"]))
        if interaction is None or interaction.token != call.params["interaction_token"] or interaction.expired:
            raise err(UNKNOWN_INTERACTION)
        if interaction.responded:
            raise err(ALREADY_ACKNOWLEDGED)
        if call.time - interaction.created_at > self.fake.callback_deadline:
            log.warning("interaction %s answered after %.2fs (deadline %.1fs)", interaction.id,
                        call.time - interaction.created_at, self.fake.callback_deadline)
            raise err(UNKNOWN_INTERACTION)
        body = call.json or {}
        kind = body.get("type")
        data = body.get("data") or {}
        channel = self.state.channels[interaction.channel_id]
        component_like = interaction.type in (InteractionType.MESSAGE_COMPONENT, InteractionType.MODAL_SUBMIT)
        msg: Optional[Message] = None
        limit = interaction.attachment_size_limit
        if kind == 4:
            self._check_content(data, has_files=bool(call.files))
            msg = self._new_message(channel, data, call.files, limit=limit, interaction=interaction,
                                    type=_response_message_type(interaction),
                                    flags=(data.get("flags") or 0) & (MessageFlags.EPHEMERAL | 4 | 4096 | 32768))
        elif kind == 5:
            msg = self._new_message(channel, {}, [], limit=limit, interaction=interaction,
                                    type=_response_message_type(interaction),
                                    flags=MessageFlags.LOADING | ((data.get("flags") or 0) & MessageFlags.EPHEMERAL))
        elif kind in (6, 7) and component_like and interaction.message_id is not None:
            msg = self.state.messages.get(interaction.message_id)
            if kind == 7 and msg is not None:
                self._apply_edit(msg, data, call.files, limit)
        elif kind == 8 and interaction.type == InteractionType.AUTOCOMPLETE:
            pass
        elif kind == 9 and interaction.type in (InteractionType.APPLICATION_COMMAND, InteractionType.MESSAGE_COMPONENT):
            pass
        else:
            raise form_error("type", "INTERACTION_CALLBACK_TYPE_INVALID",
                             f"Callback type {kind!r} is not valid for interaction type {interaction.type}")
        interaction.callback, interaction.callback_at = call, call.time
        interaction.response_type, interaction.response_data = kind, data
        if msg is not None:
            interaction.original_message_id = msg.id
        interaction.acknowledged.set()
        if msg is not None and kind in (4, 5):
            await self._emit_message("MESSAGE_CREATE", msg)
        elif msg is not None and kind == 7:
            await self._emit_message("MESSAGE_UPDATE", msg)
        if call.query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        response: dict[str, Any] = {"interaction": {"id": str(interaction.id), "type": interaction.type}}
        if msg is not None:
            response["interaction"].update(response_message_id=str(msg.id), response_message_loading=msg.loading,
                                           response_message_ephemeral=msg.ephemeral)
        if kind in (4, 5, 7) and msg is not None:
            response["resource"] = {"type": kind, "message": self.state.message_dict(msg)}
        return 200, response

    def _webhook_interaction(self, call: RestCall) -> Interaction:
        interaction = self.state.interactions_by_token.get(call.params["webhook_token"])
        if interaction is None or _int(call.params["webhook_id"]) != self.state.application_id:
            raise err(UNKNOWN_WEBHOOK)
        if not interaction.expired and call.time - interaction.created_at > self.fake.token_ttl:
            interaction.expired = True  # Discord: interaction tokens are valid for 15 minutes
        if interaction.expired:
            raise err(self.fake._expiry_error.get(interaction.id, INVALID_WEBHOOK_TOKEN))
        if not interaction.responded:
            raise err(UNKNOWN_WEBHOOK)  # follow-ups and @original exist only after the initial response
        return interaction

    async def execute_webhook(self, call: RestCall) -> tuple[int, Any]:
        interaction = self._webhook_interaction(call)
        body = call.json or {}
        self._check_content(body, has_files=bool(call.files))
        channel = self.state.channels[interaction.channel_id]
        if call.query.get("thread_id"):
            channel = self.state.channels.get(_int(call.query["thread_id"])) or channel
        original = self.state.messages.get(interaction.original_message_id or 0)
        limit = interaction.attachment_size_limit
        if (interaction.response_type == 5 and original is not None and original.loading
                and not interaction.loading_replaced):
            # Discord: the first follow-up after a "thinking" defer becomes the deferred message itself; its
            # ephemeral flag is ignored (the defer decided it).
            interaction.loading_replaced = True
            self._apply_edit(original, body, call.files, limit)
            original.flags &= ~MessageFlags.LOADING
            original.edited_at = None
            msg = original
            await self._emit_message("MESSAGE_UPDATE", msg)
        else:
            msg = self._new_message(channel, body, call.files, limit=limit, interaction=interaction,
                                    type=_response_message_type(interaction),
                                    flags=(body.get("flags") or 0) & (MessageFlags.EPHEMERAL | 4 | 4096 | 32768))
            interaction.followup_message_ids.append(msg.id)
            await self._emit_message("MESSAGE_CREATE", msg)
        if call.query.get("wait") in ("1", "true", "True"):
            return 200, self.state.message_dict(msg)
        return 204, None

    def _webhook_message(self, call: RestCall) -> tuple[Interaction, Message]:
        interaction = self._webhook_interaction(call)
        raw = call.params.get("message_id", "@original")
        if raw == "@original" or call.path.endswith("/messages/@original"):
            message_id = interaction.original_message_id
        else:
            message_id = _int(raw)
            if message_id not in interaction.followup_message_ids and message_id != interaction.original_message_id:
                message_id = None
        msg = self.state.messages.get(message_id or 0)
        if msg is None or msg.deleted:
            raise err(UNKNOWN_MESSAGE)
        return interaction, msg

    async def get_webhook_message(self, call: RestCall) -> tuple[int, Any]:
        _, msg = self._webhook_message(call)
        return 200, self.state.message_dict(msg)

    async def edit_webhook_message(self, call: RestCall) -> tuple[int, Any]:
        interaction, msg = self._webhook_message(call)
        self._apply_edit(msg, call.json or {}, call.files, interaction.attachment_size_limit)
        if msg.loading:
            msg.flags &= ~MessageFlags.LOADING
            interaction.loading_replaced = True
        await self._emit_message("MESSAGE_UPDATE", msg)
        return 200, self.state.message_dict(msg)

    async def delete_webhook_message(self, call: RestCall) -> tuple[int, Any]:
        _, msg = self._webhook_message(call)
        msg.deleted = True
        await self._emit_message("MESSAGE_DELETE", msg)
        return 204, None

    # ---- channels and messages ----------------------------------------------------------------------------

    async def get_channel(self, call: RestCall) -> tuple[int, Any]:
        return 200, self.state.channel_dict(self._channel(call))

    async def patch_channel(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        body = call.json or {}
        if "name" in body:
            channel.name = body["name"]
        if channel.is_thread:
            for key in ("archived", "locked", "auto_archive_duration", "rate_limit_per_user"):
                if key in body and body[key] is not None:
                    setattr(channel, key, body[key])
        await self.fake._emit("THREAD_UPDATE" if channel.is_thread else "CHANNEL_UPDATE",
                              self.state.channel_dict(channel))
        return 200, self.state.channel_dict(channel)

    async def list_messages(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        self._require(channel, Perms.READ_MESSAGE_HISTORY)
        limit = max(1, min(100, int(call.query.get("limit", 50))))
        msgs = [m for m in self.state.channel_messages.get(channel.id, []) if not m.deleted and not m.ephemeral]
        if "before" in call.query:
            msgs = [m for m in msgs if m.id < int(call.query["before"])]
        if "after" in call.query:
            msgs = [m for m in msgs if m.id > int(call.query["after"])]
            msgs = msgs[:limit]
        msgs = sorted(msgs, key=lambda m: m.id, reverse=True)[:limit]
        intents = self.fake.gateway.intents
        return 200, [self.state.message_dict(m, intents=intents) for m in msgs]

    async def get_message(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        self._require(channel, Perms.READ_MESSAGE_HISTORY)
        msg = self._message(channel, call.params["message_id"])
        return 200, self.state.message_dict(msg, intents=self.fake.gateway.intents)

    async def create_message(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        body = call.json or {}
        self._require(channel, Perms.SEND_MESSAGES_IN_THREADS if channel.is_thread else Perms.SEND_MESSAGES)
        if call.files:
            self._require(channel, Perms.ATTACH_FILES)
        self._check_content(body, has_files=bool(call.files))
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            window_start = time.monotonic() - self.fake.nonce_window
            for existing in reversed(self.state.channel_messages.get(channel.id, [])):
                if existing.created_monotonic < window_start:
                    break
                if str(existing.nonce) == str(nonce) and existing.author.id == self.state.bot_user.id:
                    return 200, self.state.message_dict(existing)
        reference = body.get("message_reference")
        ref_msg: Optional[Message] = None
        if reference:
            ref_msg = self.state.messages.get(_int(reference.get("message_id")))
            ref_channel = _int(reference.get("channel_id")) or channel.id
            if ref_msg is None or ref_msg.deleted or ref_msg.channel_id != ref_channel:
                if reference.get("fail_if_not_exists", True):
                    raise form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
                ref_msg = None
        msg = self._new_message(channel, body, call.files, limit=self._limit_for(channel),
                                type=19 if ref_msg is not None else 0,
                                flags=(body.get("flags") or 0) & (4 | 4096 | 32768))
        msg.nonce = nonce
        if ref_msg is not None:
            msg.message_reference = _reference(ref_msg)
            msg.referenced_message_id = ref_msg.id
        if channel.is_thread and channel.archived and not channel.locked:
            channel.archived = False
        await self._emit_message("MESSAGE_CREATE", msg)
        return 200, self.state.message_dict(msg)

    async def edit_message(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        msg = self._message(channel, call.params["message_id"])
        if msg.author.id != self.state.bot_user.id:
            body = call.json or {}
            if set(body) - {"flags"}:
                raise err(CANNOT_EDIT_OTHERS)
        self._apply_edit(msg, call.json or {}, call.files, self._limit_for(channel))
        await self._emit_message("MESSAGE_UPDATE", msg)
        return 200, self.state.message_dict(msg)

    async def delete_message(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        msg = self._message(channel, call.params["message_id"])
        if msg.author.id != self.state.bot_user.id:
            self._require(channel, Perms.MANAGE_MESSAGES)
        msg.deleted = True
        await self._emit_message("MESSAGE_DELETE", msg)
        return 204, None

    async def typing(self, call: RestCall) -> tuple[int, Any]:
        self._channel(call)
        return 204, None

    async def add_reaction(self, call: RestCall) -> tuple[int, Any]:
        return await self._reaction(call, add=True)

    async def remove_reaction(self, call: RestCall) -> tuple[int, Any]:
        return await self._reaction(call, add=False)

    async def _reaction(self, call: RestCall, *, add: bool) -> tuple[int, Any]:
        channel = self._channel(call)
        msg = self._message(channel, call.params["message_id"])
        if add:
            self._require(channel, Perms.ADD_REACTIONS | Perms.READ_MESSAGE_HISTORY)
        emoji = call.params["emoji_name"]
        users = msg.reactions.setdefault(emoji, set())
        (users.add if add else users.discard)(self.state.bot_user.id)
        data: dict[str, Any] = {"user_id": str(self.state.bot_user.id), "channel_id": str(channel.id),
                                "message_id": str(msg.id), "emoji": {"id": None, "name": emoji},
                                "burst": False, "type": 0}
        if channel.guild_id:
            data["guild_id"] = str(channel.guild_id)
        await self.fake._emit("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data,
                              dm=channel.guild_id is None)
        return 204, None

    # ---- threads ------------------------------------------------------------------------------------------

    async def thread_from_message(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        if channel.type != ChannelType.GUILD_TEXT:
            raise err(WRONG_CHANNEL_TYPE)
        msg = self._message(channel, call.params["message_id"])
        if msg.ephemeral:
            raise err(UNKNOWN_MESSAGE)
        if msg.thread_id is not None:
            raise err(THREAD_EXISTS)
        self._require(channel, Perms.CREATE_PUBLIC_THREADS)
        body = call.json or {}
        name = body.get("name")
        if not name or len(name) > 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        thread = self.state.add_thread(channel, name, owner=self.state.bot_user, thread_id=msg.id,
                                       auto_archive_duration=body.get("auto_archive_duration") or 1440)
        msg.thread_id = thread.id
        msg.flags |= MessageFlags.HAS_THREAD
        await self.fake._emit("THREAD_CREATE", {**self.state.channel_dict(thread), "newly_created": True})
        await self._emit_message("MESSAGE_UPDATE", msg)
        return 201, self.state.channel_dict(thread)

    async def thread_without_message(self, call: RestCall) -> tuple[int, Any]:
        channel = self._channel(call)
        if channel.type != ChannelType.GUILD_TEXT:
            raise err(WRONG_CHANNEL_TYPE)
        body = call.json or {}
        kind = body.get("type") or ChannelType.PRIVATE_THREAD  # API v10 default
        self._require(channel, Perms.CREATE_PRIVATE_THREADS if kind == ChannelType.PRIVATE_THREAD
                      else Perms.CREATE_PUBLIC_THREADS)
        name = body.get("name")
        if not name or len(name) > 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        thread = self.state.add_thread(channel, name, owner=self.state.bot_user, type=kind,
                                       auto_archive_duration=body.get("auto_archive_duration") or 1440)
        await self.fake._emit("THREAD_CREATE", {**self.state.channel_dict(thread), "newly_created": True})
        return 201, self.state.channel_dict(thread)

    async def join_thread(self, call: RestCall) -> tuple[int, Any]:
        thread = self._channel(call)
        if not thread.is_thread:
            raise err(WRONG_CHANNEL_TYPE)
        thread.member_ids.add(self.state.bot_user.id)
        return 204, None

    async def leave_thread(self, call: RestCall) -> tuple[int, Any]:
        thread = self._channel(call)
        if not thread.is_thread:
            raise err(WRONG_CHANNEL_TYPE)
        thread.member_ids.discard(self.state.bot_user.id)
        return 204, None

    # ---- guilds -------------------------------------------------------------------------------------------

    def _guild(self, call: RestCall) -> Any:
        guild = self.state.guilds.get(_int(call.params["guild_id"]))
        if guild is None:
            raise err(UNKNOWN_GUILD)
        return guild

    async def get_guild(self, call: RestCall) -> tuple[int, Any]:
        guild = self._guild(call)
        return 200, {**self.state.guild_dict(guild), "approximate_member_count": len(guild.members)}

    async def get_guild_channels(self, call: RestCall) -> tuple[int, Any]:
        guild = self._guild(call)
        return 200, [self.state.channel_dict(self.state.channels[cid]) for cid in guild.channel_ids]

    async def get_guild_roles(self, call: RestCall) -> tuple[int, Any]:
        return 200, [r.to_dict() for r in self._guild(call).roles]

    async def get_member(self, call: RestCall) -> tuple[int, Any]:
        member = self._guild(call).members.get(_int(call.params["user_id"]))
        if member is None:
            raise err(UNKNOWN_MEMBER)
        return 200, member.to_dict()

    async def get_active_threads(self, call: RestCall) -> tuple[int, Any]:
        guild = self._guild(call)
        threads = [c for c in self.state.channels.values() if c.is_thread and c.guild_id == guild.id
                   and not c.archived]
        return 200, {"threads": [self.state.channel_dict(t) for t in threads], "members": []}

    # ---- CDN ----------------------------------------------------------------------------------------------

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        self.cdn_requests.append(request.path)
        att = self.state.attachments.get(_int(request.match_info.get("attachment_id")))
        if att is None or str(att.channel_id) != request.match_info.get("channel_id"):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type or "application/octet-stream"})


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _embeds(embeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "rich", **e} for e in embeds or []]


def _reference(msg: Message) -> dict[str, Any]:
    ref: dict[str, Any] = {"type": 0, "message_id": str(msg.id), "channel_id": str(msg.channel_id)}
    if msg.guild_id:
        ref["guild_id"] = str(msg.guild_id)
    return ref


def _response_message_type(interaction: Interaction) -> int:
    # 20 = CHAT_INPUT_COMMAND (slash), 23 = CONTEXT_MENU_COMMAND, 0 = DEFAULT (component responses)
    if interaction.type == InteractionType.APPLICATION_COMMAND:
        return 20 if interaction.data.get("type", 1) == 1 else 23
    return 0


__all__ = ["ApiError", "FaultRule", "RestApi", "API_PREFIX", "form_error"]

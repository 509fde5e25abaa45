"""``FakeDiscord``: the server (REST + gateway + CDN on 127.0.0.1) and the API tests drive it with.

Why: the bot's end-to-end tests run the real discord.py client against this fake, so what the bot does is tested
through the same code paths as in production (HTTP client, rate-limit handling, gateway parsing, view dispatch),
while the test plays the users (``slash``, ``click``, ``post``) and inspects what reached "Discord" (``calls``,
``messages_in``, ``violations``). All waiting is event-driven: every state change wakes the waiters.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional, TypeVar, Union

from aiohttp import web

from .gateway import INVALID_SESSION, RECONNECT, Gateway
from .rest import API_PREFIX, INVALID_WEBHOOK_TOKEN, UNKNOWN_WEBHOOK, FaultRule, RestApi
from .modals import modal_submission
from .state import (
    Channel,
    ChannelType,
    FakeState,
    GatewayEvent,
    Guild,
    Intents,
    Interaction,
    InteractionType,
    Message,
    MessageFlags,
    MiB,
    RestCall,
    User,
    guess_content_type,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ChannelRef = Union[Channel, int]
UserRef = Union[User, int]
MessageRef = Union[Message, int]
#: an attachment given to ``slash``/``post``: (filename, data) or (filename, data, content_type)
FileSpec = Union[tuple[str, bytes], tuple[str, bytes, str]]

_AUTO = "auto"

#: option type for Python values when the command was not registered with the fake
_INFERRED_TYPES: tuple[tuple[type, int], ...] = ((bool, 5), (int, 4), (float, 10), (str, 3), (User, 6), (Channel, 7))


def _load_default_validator() -> Any:
    try:
        from .. import openapi_validation  # type: ignore[import-not-found]  # tests/ is a package
    except ImportError:
        import openapi_validation  # type: ignore[import-not-found,no-redef]  # tests/ is on sys.path
    return openapi_validation.load_validator()


class FakeDiscord:
    """A fake Discord (REST API, gateway, CDN) for the real discord.py client, plus a test API.

    Point discord.py at it before the client logs in::

        discord.http.Route.BASE = fake.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

    Options: ``callback_deadline`` (Discord: 3 s to answer an interaction, else 404 10062), ``token_ttl``
    (15 min of follow-ups), ``nonce_window`` (how long ``enforce_nonce`` deduplicates), ``heartbeat_interval_ms``,
    ``enabled_privileged_intents`` (asking for others closes the gateway with 4014, like an app whose portal
    toggles are off), ``attachment_size_limit`` (bigger uploads get 413 40005), ``validator`` ("auto" loads
    ``openapi_validation``; None disables the spec check).
    """

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bot_name: str = "Bandmate",
        guild_name: str = "Bandmate Test Guild",
        user_name: str = "alice",
        callback_deadline: float = 3.0,
        token_ttl: float = 15 * 60.0,
        nonce_window: float = 300.0,
        heartbeat_interval_ms: int = 41250,
        enabled_privileged_intents: int = Intents.PRIVILEGED,
        attachment_size_limit: int = 10 * MiB,
        validator: Any = _AUTO,
    ) -> None:
        self.state = FakeState(bot_name=bot_name, token=token, guild_name=guild_name, user_name=user_name)
        self.callback_deadline = callback_deadline
        self.token_ttl = token_ttl
        self.nonce_window = nonce_window
        self.attachment_size_limit = attachment_size_limit
        self._validator_arg = validator
        self.validator: Any = None if validator == _AUTO else validator
        self.violations: list[Any] = []
        self.gateway = Gateway(self, heartbeat_interval_ms=heartbeat_interval_ms,
                               enabled_privileged_intents=enabled_privileged_intents)
        self.rest = RestApi(self)
        self._expiry_error: dict[int, tuple[int, str, int]] = {}
        self._changed = asyncio.Event()
        self._runner: Optional[web.AppRunner] = None
        self._port: Optional[int] = None

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> "FakeDiscord":
        """Listen on a free port on 127.0.0.1."""
        if self._validator_arg == _AUTO and self.validator is None:
            self.validator = _load_default_validator()
        app = web.Application(client_max_size=256 * MiB)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.rest.cdn)
        app.router.add_route("*", "/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self.state.cdn_base = self.base_url
        log.info("fake Discord listening on %s", self.base_url)
        return self

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeDiscord":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord.start() has not been awaited")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (wrap it in ``yarl.URL``: discord.py calls ``with_query``)."""
        return self.base_url.replace("http://", "ws://") + "/gateway"

    # ---- the world ----------------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def bot_user(self) -> User:
        return self.state.bot_user

    @property
    def user(self) -> User:
        """The default human user (member of the default guild)."""
        return self.state.default_user

    @property
    def guild(self) -> Guild:
        return self.state.default_guild

    @property
    def text_channel(self) -> Channel:
        return self.state.default_channel

    @property
    def dm_channel(self) -> Channel:
        """The default user's DM channel with the bot."""
        return self.state.default_dm

    @property
    def calls(self) -> list[RestCall]:
        return self.rest.calls

    @property
    def unknown_calls(self) -> list[RestCall]:
        """Calls to routes the fake does not implement (answered 404/405)."""
        return [c for c in self.calls if c.route is None]

    @property
    def events(self) -> list[GatewayEvent]:
        return self.gateway.events

    @property
    def intents(self) -> Optional[int]:
        """Intents the bot identified with (last IDENTIFY)."""
        return self.gateway.intents

    @property
    def identifies(self) -> list[dict[str, Any]]:
        return self.gateway.identifies

    @property
    def cdn_requests(self) -> list[str]:
        return self.rest.cdn_requests

    @property
    def connected(self) -> bool:
        return self.gateway.current is not None

    async def add_user(self, username: str, *, bot: bool = False, guild: Optional[Guild] = None) -> User:
        """A new user, member of ``guild`` (default guild unless ``guild`` is given)."""
        user = self.state.add_user(username, bot=bot)
        member = self.state.ensure_member(guild or self.guild, user)
        if self.connected and (guild or self.guild):
            await self._emit("GUILD_MEMBER_ADD", {**member.to_dict(), "guild_id": str((guild or self.guild).id)})
        return user

    async def add_text_channel(self, name: str, *, guild: Optional[Guild] = None) -> Channel:
        channel = self.state.add_text_channel(guild or self.guild, name)
        await self._emit("CHANNEL_CREATE", self.state.channel_dict(channel))
        return channel

    async def add_guild(self, name: str) -> Guild:
        guild = self.state.add_guild(name)
        self.state.add_text_channel(guild, "general")
        for session in [s for s in self.gateway.sessions.values() if s.connected]:
            data = self.state.guild_create_dict(guild, all_members=bool(session.intents & Intents.GUILD_MEMBERS))
            await self.gateway._dispatch_to(session, "GUILD_CREATE", data)
        return guild

    async def dm_channel_for(self, user: UserRef) -> Channel:
        return self.state.add_dm(self._user(user))

    async def deny_bot_permissions(self, channel: ChannelRef, bits: int) -> None:
        """Deny permission bits to the bot in a channel (a member overwrite; the fake enforces it)."""
        ch = self._channel(channel)
        ch.bot_deny = bits
        await self._emit("CHANNEL_UPDATE", self.state.channel_dict(ch))

    def message(self, message_id: int) -> Message:
        return self.state.messages[message_id]

    def messages_in(self, channel: ChannelRef, *, include_deleted: bool = False) -> list[Message]:
        """Messages of a channel or thread, oldest first (ephemeral ones included: they are flagged)."""
        msgs = self.state.channel_messages.get(self._channel(channel).id, [])
        return [m for m in msgs if include_deleted or not m.deleted]

    def calls_since(self, mark: int) -> list[RestCall]:
        return self.calls[mark:]

    def find_calls(self, method: Optional[str] = None, route: Optional[str] = None, *,
                   since: int = 0) -> list[RestCall]:
        return [c for c in self.calls[since:]
                if (method is None or c.method == method.upper()) and (route is None or c.route == route)]

    # ---- acting as users ----------------------------------------------------------------------------------

    async def slash(
        self,
        name: str,
        options: Optional[dict[str, Any]] = None,
        *,
        user: Optional[UserRef] = None,
        attachments: Optional[dict[str, FileSpec]] = None,
        channel: Optional[ChannelRef] = None,
        guild: Optional[Guild] = None,
        subcommand: Optional[str] = None,
        app_permissions: Optional[int] = None,
        attachment_size_limit: Optional[int] = None,
        locale: str = "en-US",
    ) -> Interaction:
        """A user runs ``/name [subcommand] options...``; dispatches INTERACTION_CREATE (type 2).

        ``attachments`` maps an option name to a file; the file is stored and served by the fake, and sent in
        ``data.resolved.attachments`` like Discord does. ``subcommand`` is ``"sub"`` or ``"group sub"``. When
        the bot registered the command with the fake, option types come from it (and unknown or missing
        required options raise ValueError); otherwise they are inferred from the Python values.
        """
        if channel is not None:
            ch = self._channel(channel)
        elif guild is not None:
            ch = self.state.channels[guild.channel_ids[0]]
        else:
            ch = self.text_channel
        guild = guild or self.state.guild_of(ch)
        who = self._user(user) if user is not None else self.user
        command = self.state.find_command(name, guild.id if guild else None)
        declared: Optional[list[dict[str, Any]]] = command.get("options", []) if command else None
        path = subcommand.split() if subcommand else []
        for part in path:
            if declared is not None:
                sub = next((o for o in declared if o["name"] == part and o["type"] in (1, 2)), None)
                if sub is None:
                    raise ValueError(f"/{name} has no subcommand {part!r}")
                declared = sub.get("options", [])
        resolved: dict[str, dict[str, Any]] = {}
        built: list[dict[str, Any]] = []
        given = dict(options or {})
        for key, spec in (attachments or {}).items():
            filename, data = spec[0], spec[1]
            content_type = spec[2] if len(spec) > 2 else guess_content_type(filename)  # type: ignore[misc]
            att = self.state.add_attachment(ch.id, filename, data, content_type=content_type, ephemeral=True)
            resolved.setdefault("attachments", {})[str(att.id)] = att.to_dict()
            built.append({"name": key, "type": 11, "value": str(att.id)})
        for key, value in given.items():
            opt_type = self._option_type(name, key, value, declared)
            built.append({"name": key, "type": opt_type, "value": self._option_value(opt_type, value, resolved, guild)})
        if declared is not None:
            names = {o["name"] for o in built}
            known = {o["name"] for o in declared}
            missing = [o["name"] for o in declared if o.get("required") and o["name"] not in names]
            if names - known or missing:
                raise ValueError(f"/{name}: unknown options {sorted(names - known)}, missing required {missing}")
        for part, kind in reversed(list(zip(path, [2] * (len(path) - 1) + [1]))):
            built = [{"name": part, "type": kind, "options": built}]
        data: dict[str, Any] = {"id": command["id"] if command else str(self.state.snowflake()), "name": name,
                                "type": 1, "options": built}
        if resolved:
            data["resolved"] = resolved
        if command and command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._interact(InteractionType.APPLICATION_COMMAND, data, ch, who, guild,
                                    app_permissions=app_permissions, attachment_size_limit=attachment_size_limit,
                                    locale=locale)

    async def click(self, message: MessageRef, custom_id: str, *, user: Optional[UserRef] = None,
                    values: Optional[list[str]] = None) -> Interaction:
        """A user clicks a button (or picks ``values`` in a select) of a message; INTERACTION_CREATE type 3.

        The payload carries the message with its real components: discord.py ignores a DynamicItem click whose
        custom_id is not among the message's components.
        """
        msg = self._message(message)
        component = msg.component(custom_id)
        if component is None:
            raise ValueError(f"message {msg.id} has no component {custom_id!r}; it has {msg.custom_ids}")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord would not send the click")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if isinstance(component.get("id"), int):
            data["id"] = component["id"]
        if values is not None or component["type"] in (3, 5, 6, 7, 8):
            data["values"] = list(values or [])
        ch = self.state.channels[msg.channel_id]
        who = self._user(user) if user is not None else self.user
        return await self._interact(InteractionType.MESSAGE_COMPONENT, data, ch, who, self.state.guild_of(ch),
                                    message=msg)

    async def submit_modal(self, shown: Interaction, values: dict[str, str], *,
                           user: Optional[UserRef] = None) -> Interaction:
        """A user fills in and submits the modal ``shown`` was answered with; INTERACTION_CREATE type 5."""
        data = modal_submission(shown, values)
        ch = self.state.channels[shown.channel_id]
        who = self._user(user) if user is not None else shown.user
        return await self._interact(InteractionType.MODAL_SUBMIT, data, ch, who, self.state.guild_of(ch))

    async def post(self, channel_or_thread: ChannelRef, text: str, *, user: Optional[UserRef] = None,
                   reference: Optional[MessageRef] = None, attachments: Optional[list[FileSpec]] = None) -> Message:
        """A user posts a message; dispatches MESSAGE_CREATE (content hidden unless the bot may see it)."""
        ch = self._channel(channel_or_thread)
        who = self._user(user) if user is not None else self.user
        guild = self.state.guild_of(ch)
        if guild is not None:
            self.state.ensure_member(guild, who)
        msg = Message(id=self.state.snowflake(), channel_id=ch.id, author=who, guild_id=ch.guild_id, content=text,
                      mentions=self.state.parse_mentions(text))
        for spec in attachments or []:
            ctype = spec[2] if len(spec) > 2 else None  # type: ignore[misc]
            msg.attachments.append(self.state.add_attachment(ch.id, spec[0], spec[1], content_type=ctype))
        if reference is not None:
            ref = self._message(reference)
            msg.type = 19
            msg.message_reference = {"type": 0, "message_id": str(ref.id), "channel_id": str(ref.channel_id),
                                     **({"guild_id": str(ref.guild_id)} if ref.guild_id else {})}
            msg.referenced_message_id = ref.id
        self.state.add_message(msg)
        await self.rest._emit_message("MESSAGE_CREATE", msg)
        self._notify()
        return msg

    async def create_thread(self, parent: Union[ChannelRef, Message], name: str, *,
                            user: Optional[UserRef] = None, private: bool = False) -> Channel:
        """A user starts a thread (from a message when ``parent`` is a Message); dispatches THREAD_CREATE."""
        who = self._user(user) if user is not None else self.user
        if isinstance(parent, Message):
            channel = self.state.channels[parent.channel_id]
            thread = self.state.add_thread(channel, name, owner=who, thread_id=parent.id)
            parent.thread_id = thread.id
            parent.flags |= MessageFlags.HAS_THREAD
        else:
            channel = self._channel(parent)
            thread = self.state.add_thread(channel, name, owner=who,
                                           type=ChannelType.PRIVATE_THREAD if private else ChannelType.PUBLIC_THREAD)
        await self._emit("THREAD_CREATE", {**self.state.channel_dict(thread), "newly_created": True})
        self._notify()
        return thread

    async def dispatch(self, event: str, data: Any) -> int:
        """Send an arbitrary gateway dispatch (no intent filtering); returns how many sessions got it."""
        sent = await self.gateway.dispatch(event, data, filtered=False)
        self._notify()
        return sent

    async def reconnect(self, *, resume: bool = True) -> None:
        """Ask the bot to reconnect (op 7, it resumes) or invalidate its session (op 9, it re-identifies)."""
        if resume:
            await self.gateway.send_op(RECONNECT, None)
        else:
            await self.gateway.send_op(INVALID_SESSION, False)

    # ---- interaction lifecycle and faults -----------------------------------------------------------------

    def expire_interaction(self, interaction: Interaction, *, unknown_webhook: bool = False) -> None:
        """The interaction's token is no longer valid (Discord: 15 minutes): its webhook endpoints answer
        401 "Invalid Webhook Token" (50027), or 404 "Unknown Webhook" (10015) with ``unknown_webhook``;
        its callback answers 404 "Unknown interaction" (10062)."""
        interaction.expired = True
        self._expiry_error[interaction.id] = UNKNOWN_WEBHOOK if unknown_webhook else INVALID_WEBHOOK_TOKEN

    def fail_next(self, method: str, route: str, status: int = 429, retry_after: float = 0.5, count: int = 1, *,
                  is_global: bool = False, body: Optional[dict[str, Any]] = None, delay: float = 0.0) -> FaultRule:
        """Answer the next ``count`` calls matching ``method`` + ``route`` (a template such as
        ``/webhooks/{webhook_id}/{webhook_token}`` or a concrete path) with ``status``.

        429 comes with Discord's body (``retry_after``, ``global``) and headers (``Retry-After``,
        ``X-RateLimit-*``, ``Via``) so discord.py sleeps and retries. 500/502/504/524 are retried by discord.py
        after 1 s, 3 s...; other statuses raise in the bot. ``body`` overrides the error body.
        """
        rule = FaultRule(method, route, status, retry_after, count, is_global=is_global, body=body, delay=delay)
        self.rest.faults.append(rule)
        return rule

    def take_violations(self) -> list[Any]:
        """Return and clear the recorded OpenAPI violations (for tests that provoke one on purpose)."""
        taken, self.violations = self.violations, []
        return taken

    def assert_no_violations(self) -> None:
        if self.violations:
            lines = "\n".join(f"  - {v}" for v in self.violations)
            raise AssertionError(f"Request bodies that do not match Discord's OpenAPI spec:\n{lines}")

    # ---- waiting ------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, check: Callable[[], Optional[T]], timeout: float = 5.0, *,
                         what: str = "condition") -> T:
        """Re-evaluate ``check`` after every change of the fake (REST call, message, gateway traffic) until it
        returns something truthy; raise TimeoutError with recent calls otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "\n".join(f"  {c!r}" for c in self.calls[-8:])
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last REST calls:\n{recent}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_for(self, predicate: Callable[[RestCall], bool], timeout: float = 5.0, *,
                       since: int = 0) -> RestCall:
        """The first answered REST call (from index ``since``) for which ``predicate`` is true."""
        def check() -> Optional[RestCall]:
            return next((c for c in self.calls[since:] if c.done and predicate(c)), None)
        return await self.wait_until(check, timeout, what="a matching REST call")

    async def wait_for_call(self, method: str, route: str, *, since: int = 0, timeout: float = 5.0,
                            ok: Optional[bool] = None) -> RestCall:
        return await self.wait_for(lambda c: c.method == method.upper() and c.route == route
                                   and (ok is None or c.ok == ok), timeout, since=since)

    async def wait_for_callback(self, interaction: Interaction, timeout: float = 5.0) -> RestCall:
        """The accepted callback (initial response) of an interaction."""
        await self.wait_until(lambda: interaction.callback, timeout, what=f"the callback of {interaction!r}")
        assert interaction.callback is not None
        return interaction.callback

    async def wait_for_message(self, channel: ChannelRef, predicate: Optional[Callable[[Message], bool]] = None,
                               timeout: float = 5.0) -> Message:
        """The first live message in a channel/thread satisfying ``predicate`` (loading messages excluded)."""
        def check() -> Optional[Message]:
            return next((m for m in self.messages_in(channel) if not m.loading
                         and (predicate is None or predicate(m))), None)
        return await self.wait_until(check, timeout, what=f"a message in channel {self._channel(channel).id}")

    async def wait_for_event(self, name: str, predicate: Optional[Callable[[Any], bool]] = None, *,
                             since: int = 0, timeout: float = 5.0) -> GatewayEvent:
        """A gateway dispatch the fake sent (e.g. GUILD_CREATE) from index ``since`` of ``events``."""
        return await self.wait_until(
            lambda: next((e for e in self.events[since:] if e.name == name
                          and (predicate is None or predicate(e.data))), None), timeout, what=f"{name} dispatch")

    # ---- internals ----------------------------------------------------------------------------------------

    async def _emit(self, event: str, data: Any, *, dm: bool = False) -> None:
        """Dispatch a consequence of REST/test activity to connected sessions (silently none if offline)."""
        if self.gateway.current is None:
            log.debug("no gateway session; %s not delivered", event)
            return
        await self.gateway.dispatch(event, data, dm=dm)
        self._notify()

    async def _interact(self, kind: int, data: dict[str, Any], channel: Channel, user: User, guild: Optional[Guild],
                        *, message: Optional[Message] = None, app_permissions: Optional[int] = None,
                        attachment_size_limit: Optional[int] = None, locale: str = "en-US") -> Interaction:
        state = self.state
        iid, token = state.snowflake(), state.new_interaction_token()
        limit = attachment_size_limit or (guild.attachment_size_limit if guild else self.attachment_size_limit)
        perms = app_permissions if app_permissions is not None else state.bot_permissions(channel)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(state.application_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "locale": locale,
            "app_permissions": str(perms),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id) if guild else "0"},
            "context": 0 if guild else 1,
            "attachment_size_limit": limit,
        }
        channel_data = state.channel_dict(channel)
        if guild is not None:
            member = state.ensure_member(guild, user)
            member_perms = state.member_permissions(guild, user)
            payload.update(guild_id=str(guild.id), guild_locale="en-US",
                           guild={"id": str(guild.id), "locale": "en-US", "features": []},
                           member={**member.to_dict(), "permissions": str(member_perms)})
            channel_data["permissions"] = str(member_perms)
        else:
            payload["user"] = user.to_dict()
        payload["channel"] = channel_data
        if message is not None:
            payload["message"] = state.message_dict(message)
        interaction = Interaction(
            id=iid, token=token, type=kind, application_id=state.application_id, channel_id=channel.id,
            guild_id=guild.id if guild else None, user=user, data=data, payload=payload,
            created_at=asyncio.get_running_loop().time(), call_mark=len(self.calls), attachment_size_limit=limit,
            message_id=message.id if message is not None else None,
        )
        state.interactions[iid] = interaction
        state.interactions_by_token[token] = interaction
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        self._notify()
        return interaction

    def _option_type(self, command: str, name: str, value: Any, declared: Optional[list[dict[str, Any]]]) -> int:
        if declared is not None:
            opt = next((o for o in declared if o["name"] == name), None)
            if opt is None:
                raise ValueError(f"/{command} has no option {name!r}; it has {[o['name'] for o in declared]}")
            return int(opt["type"])
        for py_type, opt_type in _INFERRED_TYPES:
            if isinstance(value, py_type):
                return opt_type
        raise ValueError(f"cannot infer the option type of {name}={value!r}; register the command first")

    def _option_value(self, opt_type: int, value: Any, resolved: dict[str, dict[str, Any]],
                      guild: Optional[Guild]) -> Any:
        if opt_type in (6, 9) and not isinstance(value, Channel):
            user = self._user(value)
            resolved.setdefault("users", {})[str(user.id)] = user.to_dict()
            if guild is not None:
                member = self.state.ensure_member(guild, user)
                resolved.setdefault("members", {})[str(user.id)] = {
                    **member.to_dict(with_user=False), "permissions": str(self.state.member_permissions(guild, user))}
            return str(user.id)
        if opt_type == 7:
            ch = self._channel(value)
            resolved.setdefault("channels", {})[str(ch.id)] = {
                **self.state.channel_dict(ch), "permissions": str(self.state.bot_permissions(ch))}
            return str(ch.id)
        if opt_type == 4:
            return int(value)
        if opt_type == 10:
            return float(value)
        if opt_type == 5:
            return bool(value)
        return value

    def _channel(self, ref: Any) -> Channel:
        if isinstance(ref, Channel):
            return ref
        channel = self.state.channels.get(int(getattr(ref, "id", ref)))
        if channel is None:
            raise KeyError(f"unknown channel {ref!r}")
        return channel

    def _user(self, ref: Any) -> User:
        if isinstance(ref, User):
            return ref
        user = self.state.users.get(int(getattr(ref, "id", ref)))
        if user is None:
            raise KeyError(f"unknown user {ref!r}")
        return user

    def _message(self, ref: Any) -> Message:
        if isinstance(ref, Message):
            return ref
        msg = self.state.messages.get(int(getattr(ref, "id", ref)))
        if msg is None:
            raise KeyError(f"unknown message {ref!r}")
        return msg


__all__ = ["FakeDiscord"]

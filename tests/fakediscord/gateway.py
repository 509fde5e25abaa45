"""The fake gateway: an aiohttp websocket that speaks Discord's gateway protocol (JSON encoding).

Why it matters for tests: discord.py only builds its caches (guilds, channels, threads) and only runs app
commands and views from gateway events, so INTERACTION_CREATE / MESSAGE_CREATE must arrive the way Discord sends
them: after HELLO, IDENTIFY, READY and GUILD_CREATE, with increasing sequence numbers, filtered by intents.

Transport compression: discord.py 2.7 always connects with ``?compress=zlib-stream`` (or ``zstd-stream`` when the
``zstandard`` module is importable). For ``zlib-stream`` the fake compresses every frame with one shared zlib
context and a Z_SYNC_FLUSH suffix, exactly as Discord does; for anything else it sends plain text frames, which
discord.py also accepts (it only decompresses binary frames).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import WSMsgType, web

from .state import GatewayEvent, Intents

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

# op codes
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 3, 4, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11

#: which intent an event needs (guild flavour, DM flavour); events not listed are always sent
EVENT_INTENTS: dict[str, tuple[int, int]] = {
    "MESSAGE_CREATE": (Intents.GUILD_MESSAGES, Intents.DIRECT_MESSAGES),
    "MESSAGE_UPDATE": (Intents.GUILD_MESSAGES, Intents.DIRECT_MESSAGES),
    "MESSAGE_DELETE": (Intents.GUILD_MESSAGES, Intents.DIRECT_MESSAGES),
    "MESSAGE_REACTION_ADD": (Intents.GUILD_MESSAGE_REACTIONS, Intents.DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (Intents.GUILD_MESSAGE_REACTIONS, Intents.DIRECT_MESSAGE_REACTIONS),
    "THREAD_CREATE": (Intents.GUILDS, Intents.GUILDS),
    "THREAD_UPDATE": (Intents.GUILDS, Intents.GUILDS),
    "THREAD_DELETE": (Intents.GUILDS, Intents.GUILDS),
    "CHANNEL_CREATE": (Intents.GUILDS, Intents.GUILDS),
    "CHANNEL_UPDATE": (Intents.GUILDS, Intents.GUILDS),
    "GUILD_MEMBER_ADD": (Intents.GUILD_MEMBERS, Intents.GUILD_MEMBERS),
}


@dataclass(eq=False)
class GatewaySession:
    """One identified session; it outlives a websocket so RESUME can replay what was missed."""

    session_id: str
    intents: int
    identify: dict[str, Any]
    seq: int = 0
    ws: Optional[web.WebSocketResponse] = None
    compressor: Any = None
    log: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def send(self, payload: dict[str, Any]) -> None:
        if payload.get("op") == DISPATCH:
            self.seq += 1
            payload["s"] = self.seq
            self.log.append((self.seq, payload))
        if self.ws is None or self.ws.closed:
            return  # kept in the log for a RESUME
        await _send(self.ws, self.compressor, self.lock, payload)


async def _send(ws: web.WebSocketResponse, compressor: Any, lock: asyncio.Lock, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, separators=(",", ":"))
    async with lock:
        if ws.closed:
            return
        if compressor is not None:
            await ws.send_bytes(compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))
        else:
            await ws.send_str(text)


class Gateway:
    def __init__(self, fake: "FakeDiscord", *, heartbeat_interval_ms: int, enabled_privileged_intents: int) -> None:
        self.fake = fake
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.enabled_privileged_intents = enabled_privileged_intents
        self.sessions: dict[str, GatewaySession] = {}
        self.identifies: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []  # every payload the client sent, token redacted
        self.events: list[GatewayEvent] = []
        self.connect_queries: list[dict[str, str]] = []
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def current(self) -> Optional[GatewaySession]:
        live = [s for s in self.sessions.values() if s.connected]
        return live[-1] if live else None

    @property
    def intents(self) -> Optional[int]:
        """Intents of the live session (or of the last IDENTIFY; None before the bot identified)."""
        current = self.current
        if current is not None:
            return current.intents
        return self.identifies[-1].get("intents") if self.identifies else None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        query = dict(request.query)
        self.connect_queries.append(query)
        compressor = zlib.compressobj() if query.get("compress") == "zlib-stream" else None
        lock = asyncio.Lock()
        session: Optional[GatewaySession] = None
        log.debug("gateway connection with %s", query)
        try:
            await _send(ws, compressor, lock, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms,
                                                                   "_trace": ["fake-gateway"]}, "s": None, "t": None})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    if msg.type is WSMsgType.BINARY:
                        await ws.close(code=4002, message=b"Error while decoding payload.")
                    continue
                payload = json.loads(msg.data)
                op, data = payload.get("op"), payload.get("d")
                redacted = dict(payload)
                if isinstance(data, dict) and "token" in data:
                    redacted["d"] = {**data, "token": "<redacted>"}
                self.received.append(redacted)
                if op == HEARTBEAT:
                    await _send(ws, compressor, lock, {"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                elif op == IDENTIFY:
                    session = await self._identify(ws, compressor, lock, data)
                elif op == RESUME:
                    session = await self._resume(ws, compressor, lock, data)
                elif op == REQUEST_MEMBERS and session is not None:
                    await self._request_members(session, data)
                elif op in (PRESENCE, VOICE_STATE):
                    pass  # recorded in self.received
                else:
                    log.warning("fake gateway: unexpected op %s", op)
                self.fake._notify()
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            self.fake._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, compressor: Any, lock: asyncio.Lock,
                        data: dict[str, Any]) -> Optional[GatewaySession]:
        state = self.fake.state
        if data.get("token") != state.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        if intents & Intents.PRIVILEGED & ~self.enabled_privileged_intents:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        self.identifies.append({k: v for k, v in data.items() if k != "token"})
        session = GatewaySession(secrets.token_hex(16), intents, data, ws=ws, compressor=compressor, lock=lock)
        self.sessions[session.session_id] = session
        ready = {
            "v": 10,
            "user": {**state.bot_user.to_dict(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in state.guilds.values()],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.fake.gateway_url,
            "application": {"id": str(state.application_id), "flags": state.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["fake"],
            "user_settings": {},
            "auth": {},
            "current_location": ["CLIENT"],
            "_trace": ["fake-gateway"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._dispatch_to(session, "READY", ready)
        all_members = bool(intents & Intents.GUILD_MEMBERS)
        for guild in state.guilds.values():
            await self._dispatch_to(session, "GUILD_CREATE", state.guild_create_dict(guild, all_members=all_members))
        return session

    async def _resume(self, ws: web.WebSocketResponse, compressor: Any, lock: asyncio.Lock,
                      data: dict[str, Any]) -> Optional[GatewaySession]:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or data.get("token") != self.fake.state.token:
            await _send(ws, compressor, lock, {"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        session.ws, session.compressor, session.lock = ws, compressor, lock
        last = int(data.get("seq") or 0)
        for seq, payload in session.log:
            if seq > last:
                await _send(ws, compressor, lock, payload)
        await self._dispatch_to(session, "RESUMED", {"_trace": ["fake-gateway"]})
        return session

    async def _request_members(self, session: GatewaySession, data: dict[str, Any]) -> None:
        state = self.fake.state
        guild = state.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in (data["user_ids"] if isinstance(data["user_ids"], list) else [data["user_ids"]])}
            members = [m for m in members if m.user.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.user.username.startswith(data["query"])]
        chunk: dict[str, Any] = {"guild_id": str(guild.id), "members": [m.to_dict() for m in members],
                                 "chunk_index": 0, "chunk_count": 1, "not_found": []}
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _dispatch_to(self, session: GatewaySession, event: str, data: Any) -> None:
        await session.send({"op": DISPATCH, "t": event, "d": data})
        self.events.append(GatewayEvent(event, data, session.seq, asyncio.get_running_loop().time()))

    def wants(self, session: GatewaySession, event: str, *, dm: bool) -> bool:
        needed = EVENT_INTENTS.get(event)
        if needed is None:
            return True
        return bool(session.intents & needed[1 if dm else 0])

    async def dispatch(self, event: str, data: Any, *, dm: bool = False, filtered: bool = True) -> int:
        """Send one event to every live session whose intents allow it; returns how many got it."""
        sessions = [s for s in self.sessions.values() if s.connected]
        if not sessions:
            raise RuntimeError(f"cannot dispatch {event}: no bot is connected to the fake gateway")
        sent = 0
        for session in sessions:
            if filtered and not self.wants(session, event, dm=dm):
                continue
            payload = data(session.intents) if callable(data) else data
            await self._dispatch_to(session, event, payload)
            sent += 1
        return sent

    async def send_op(self, op: int, data: Any = None) -> None:
        for session in [s for s in self.sessions.values() if s.connected]:
            assert session.ws is not None
            await _send(session.ws, session.compressor, session.lock, {"op": op, "d": data, "s": None, "t": None})

    async def close_all(self, code: int = 1001) -> None:
        for ws in list(self._sockets):
            await ws.close(code=code)

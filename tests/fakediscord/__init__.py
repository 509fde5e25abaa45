"""A fake Discord (REST subset + gateway + CDN) that the real discord.py client runs against on 127.0.0.1.

Use::

    async with FakeDiscord() as fake:
        discord.http.Route.BASE = fake.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
        ...start the bot with fake.token, then drive it with fake.slash / fake.click / fake.post...

See ``server.FakeDiscord`` for the test API and ``rest``/``gateway`` for the Discord behaviour reproduced.
"""

from .rest import ApiError, FaultRule
from .server import FakeDiscord
from .state import (
    Attachment,
    Channel,
    ChannelType,
    FilePart,
    GatewayEvent,
    Guild,
    Intents,
    Interaction,
    InteractionType,
    Member,
    Message,
    MessageFlags,
    Perms,
    RestCall,
    User,
)

__all__ = [
    "ApiError",
    "Attachment",
    "Channel",
    "ChannelType",
    "FakeDiscord",
    "FaultRule",
    "FilePart",
    "GatewayEvent",
    "Guild",
    "Intents",
    "Interaction",
    "InteractionType",
    "Member",
    "Message",
    "MessageFlags",
    "Perms",
    "RestCall",
    "User",
]

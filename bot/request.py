"""What crosses from a transport into the core: who asked, how to deliver, and the refusal that comes back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from generation.jobs import DeliveryAddress


class Refusal(Exception):
    """A request that cannot be done; `user_message` (markup, see bot/text.py) says why. Nothing changed."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


@dataclass(frozen=True)
class Requester:
    user_id: str
    name: str = ""
    guild_id: str | None = None
    channel_id: str | None = None
    is_admin: bool = False
    parent_channel_id: str | None = None  # a thread's channel: the server's channel rules apply to its parent


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class UploadInfo:
    """What a transport knows of an attachment before downloading it: enough to refuse it at once."""

    filename: str
    size: int


@dataclass(frozen=True)
class Request:
    """One request as the core sees it: who asked, the idempotency key that makes a retry find its first job, and
    where the result goes (the transport's own delivery data, which carries its expiry; often known only after the
    transport acknowledged, so `delivered_to` fills it in)."""

    who: Requester
    idempotency_key: str | None = None
    delivery: DeliveryAddress = dataclasses.field(default_factory=DeliveryAddress)

    def delivered_to(self, delivery: DeliveryAddress) -> "Request":
        return dataclasses.replace(self, delivery=delivery)

"""Redis key names, connections, groups and the failures both sides report (see the package docstring)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


log = logging.getLogger(__name__)

WORKERS_GROUP = "workers"
BOT_GROUP = "bot"
BOT_CONSUMER = "bot"  # one bot process per prefix
FILE_KINDS = ("mp3", "png", "flac")
DEAD_MAXLEN = 1000
CANCEL_TTL_S = 3600
PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 0.25
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError)

GENERIC_FAILURE = "Something went wrong while making this piece; it was not finished. Please try again."
OOM_FAILURE = "Not enough GPU memory for this request. Try fewer variations or a shorter duration."
MODEL_FAILURE = "The model this piece needs could not be loaded on the music workers. Please tell the bot's operator."


class RemoteJobFailed(RuntimeError):
    """A worker reported the job failed, or it was dead-lettered.

    `user_message` can be shown as is. `final`: retrying will not help (dead-lettered, out of memory alone, bad
    input), so the scheduler should mark the job failed with `user_message` instead of queuing it again.
    """

    def __init__(self, user_message: str, *, final: bool) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.final = final


class RedisSettings(Protocol):
    """The part of bot.Settings this module reads (generation never imports the bot). A worker also reads, where
    present, `decoder` ("slots", the default, or "generate": BANDMATE_DECODER) and `cuda_graphs`."""

    redis_url: str | None
    redis_claim_idle_ms: int
    redis_heartbeat_s: float
    redis_max_deliveries: int
    max_batch: int
    model: str
    device: str
    dtype: str
    compile: bool


@dataclass(frozen=True)
class StreamKeys:
    prefix: str = "bandmate"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def entries(self) -> str:
        return f"{self.prefix}:entries"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"


def connect(url: str) -> aioredis.Redis:
    """Bytes in and out (results carry audio). The socket timeout only guards against a silent network; every
    blocking read asks for far less."""
    return aioredis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=5, socket_timeout=30,
                                   health_check_interval=15)


async def ensure_groups(client: aioredis.Redis, keys: StreamKeys) -> None:
    """Create both groups at id 0 (so entries added before the group, e.g. right after Redis restarted empty, are
    still read). Idempotent."""
    for stream, group in ((keys.jobs, WORKERS_GROUP), (keys.results, BOT_GROUP)):
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


async def drop_idle_connections(client: aioredis.Redis) -> None:
    """Close the pool's idle connections: after Redis restarted they are dead, and the next command on one fails."""
    try:
        await client.connection_pool.disconnect(inuse_connections=False)
    except Exception as error:  # noqa: BLE001 - closing a dead socket may fail; it is gone either way
        log.debug("closing idle Redis connections: %s", error)


async def once_more_on_reconnect(client: aioredis.Redis, command):
    """Run `command()` (a coroutine function); on a connection error drop the idle connections and run it once
    more. A second error is real (Redis is unreachable) and propagates."""
    try:
        return await command()
    except _CONNECTION_ERRORS as error:
        log.debug("Redis connection error (%s); reconnecting and retrying once", error)
        await drop_idle_connections(client)
        return await command()


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_nogroup(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and "NOGROUP" in str(error)


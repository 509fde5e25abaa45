"""A per-user rate limit that allows bursts and never loses a request: over the limit, a request is given a later
start time instead of a refusal.

It is a token bucket (`burst` tokens, refilled at `per_min` a minute) kept as one number per user, the time the
bucket is next empty of debt (the "theoretical arrival time" of GCRA). A request reserves the earliest start that
keeps the user within the bucket; a request reserved but then refused elsewhere (the pending cap, a full queue)
gives its slot back. Pure: the clock is passed in, so tests drive it by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

PRUNE_ABOVE = 1024  # users remembered before those with a full bucket are forgotten


@dataclass(frozen=True)
class RateLimit:
    """`burst` requests at once, then `per_min` a minute. per_min <= 0: no limit (the operator's own tools)."""

    burst: int = 3
    per_min: float = 6.0

    @property
    def enabled(self) -> bool:
        return self.per_min > 0

    @property
    def interval_s(self) -> float:
        """Seconds one token takes to come back."""
        return 60.0 / self.per_min if self.enabled else 0.0

    @classmethod
    def off(cls) -> "RateLimit":
        return cls(burst=1, per_min=0.0)

    @classmethod
    def from_cooldown(cls, cooldown_s: float) -> "RateLimit":
        """The old flat cooldown as a bucket: one request, then one every `cooldown_s` (0: no limit)."""
        return cls.off() if cooldown_s <= 0 else cls(burst=1, per_min=60.0 / cooldown_s)


@dataclass(frozen=True)
class Reservation:
    """A start time given to one request: `start_at` on the bucket's clock, `delay_s` from when it was asked."""

    user_id: str
    start_at: float
    delay_s: float
    _before: float | None = None  # the user's bucket before this reservation (to give it back)
    _after: float | None = None


class RateLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.clock = clock
        self._empty_at: dict[str, float] = {}  # user -> when their bucket has no debt (full again after burst)

    def wait_s(self, user_id: str) -> float:
        """Seconds until a request of this user may start (0: now); changes nothing."""
        if not self.limit.enabled:
            return 0.0
        now = self.clock()
        empty_at = max(self._empty_at.get(user_id, now), now)
        return max(0.0, empty_at - self._tolerance() - now)

    def reserve(self, user_id: str) -> Reservation:
        """Take the user's next slot: now while tokens are left, else when the next token comes back."""
        now = self.clock()
        if not self.limit.enabled:
            return Reservation(user_id, now, 0.0)
        before = self._empty_at.get(user_id)
        empty_at = max(before if before is not None else now, now)
        start = max(now, empty_at - self._tolerance())
        after = empty_at + self.limit.interval_s
        self._empty_at[user_id] = after
        self._prune(now)
        return Reservation(user_id, start, start - now, before, after)

    def release(self, reservation: Reservation) -> None:
        """The reserved request was not queued after all: its slot goes back to the user."""
        if reservation._after is None:
            return
        current = self._empty_at.get(reservation.user_id)
        if current is None:
            return
        if current == reservation._after:  # nothing reserved since: back to exactly how it was
            if reservation._before is None:
                del self._empty_at[reservation.user_id]
            else:
                self._empty_at[reservation.user_id] = reservation._before
        else:
            self._empty_at[reservation.user_id] = current - self.limit.interval_s

    def _tolerance(self) -> float:
        return (max(1, self.limit.burst) - 1) * self.limit.interval_s

    def _prune(self, now: float) -> None:
        if len(self._empty_at) > PRUNE_ABOVE:
            for user_id in [u for u, t in self._empty_at.items() if t <= now]:
                del self._empty_at[user_id]

"""What a transport tells the operator's view, through the core: whether it is connected, and the rate limits
(HTTP 429) its platform answered with. The wiring (app/metrics.py) sets the callables; transports never import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class TransportSignals:
    connected: dict[str, bool] = field(default_factory=dict)  # transport name -> connected now
    on_rate_limited: Callable[[str, str], None] = lambda transport, scope: None

    def set_connected(self, transport: str, up: bool) -> None:
        self.connected[transport] = up

    def rate_limited(self, transport: str, scope: str) -> None:
        """A 429 was seen; `scope` is the platform's word for which limit (e.g. user, global, shared)."""
        self.on_rate_limited(transport, scope or "unknown")

"""Each person's musical fingerprint, kept current by what they do: votes, ❤, extends, rerolls, /style.

A thin service over the taste store (handed in) and the pure taste logic in `bot.taste` and `bot.vocabulary`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from bot.taste import Blend, TasteProfile, blend, describe, events_for, profile
from bot.taste_chart import taste_chart_png
from bot.vocabulary import canonical, display, suggest
from generation.jobs import TrackRecord

log = logging.getLogger(__name__)


class Fingerprints:
    def __init__(self, store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def record(self, user_id: str, operation: str, track: TrackRecord) -> None:
        """What an action on a track says about the person's taste (a vote on a jazz piano track: jazz, piano)."""
        signals = events_for(operation, track.prompt)
        if signals:
            await self.store.record_many(user_id, signals, track_id=track.id)

    async def profile(self, user_id: str) -> TasteProfile:
        return profile(await self.store.events(user_id), self.clock())

    async def blend(self, user_id: str, prompt: str) -> Blend:
        return blend(prompt, await self.profile(user_id))

    async def style(self, user_id: str, action: str, tag: str | None = None) -> str:
        """/style add|remove|list: explicit tags that weigh more than anything implicit and never fade."""
        if action == "list":
            explicit = await self.store.explicit(user_id)
            added = [display(t) for t, on in explicit.items() if on]
            removed = [display(t) for t, on in explicit.items() if not on]
            if not added and not removed:
                return "You haven't set any styles. Try `/style add jazz`."
            lines = []
            if added:
                lines.append("Your styles: " + ", ".join(added))
            if removed:
                lines.append("Never blended: " + ", ".join(removed))
            return "\n".join(lines)
        name = canonical(tag or "")
        if name is None:
            return f"I don't know the style “{tag}”. Start typing and pick one from the list."
        await self.store.set_explicit(user_id, name, action == "add")
        if action == "add":
            return f"Added {display(name)} to your styles: “more like this” will lean that way."
        return f"Removed {display(name)}: it won't be blended into your music until you add it again."

    async def describe(self, user_id: str) -> str:
        return describe(await self.profile(user_id))

    async def chart(self, user_id: str, path: Path) -> Path:
        return taste_chart_png(await self.profile(user_id), path)

    async def suggest(self, user_id: str, prefix: str) -> list[str]:
        return suggest(prefix, await self.store.history_tags(user_id))

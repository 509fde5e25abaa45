"""Result buttons as DynamicItems: the track id lives in the custom_id, so they work after any restart."""

from __future__ import annotations

import re

import discord

from bot.messages import ButtonKind


class TrackButton(discord.ui.DynamicItem[discord.ui.Button], template=r"bandmate:(?P<kind>vote|var|ext|like):(?P<track>[A-Za-z0-9]{1,64})"):
    def __init__(self, kind: ButtonKind, track_id: str, *, label: str | None = None, emoji: str | None = None,
                 row: int | None = None) -> None:
        from bot.discord.render import STYLES, custom_id

        super().__init__(discord.ui.Button(style=STYLES[kind], label=label, emoji=emoji, row=row,
                                           custom_id=custom_id(kind, track_id)))
        self.kind = kind
        self.track_id = track_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> "TrackButton":
        return cls(ButtonKind(match["kind"]), match["track"], label=item.label,
                   emoji=str(item.emoji) if item.emoji else None, row=item.row)

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.buttons.on_click(interaction, self.kind, self.track_id)

"""Result buttons as DynamicItems that own their style and custom_id: the track id lives in the custom_id, so they
work after any restart (discord.py's dynamic items)."""

from __future__ import annotations

import re

import discord

from bot.messages import ButtonKind

STYLES = {
    ButtonKind.VOTE: discord.ButtonStyle.primary,
    ButtonKind.VARIATIONS: discord.ButtonStyle.secondary,
    ButtonKind.EXTEND: discord.ButtonStyle.secondary,
    ButtonKind.MORE_LIKE: discord.ButtonStyle.success,
    ButtonKind.STEMS: discord.ButtonStyle.secondary,
}


class TrackButton(discord.ui.DynamicItem[discord.ui.Button],
                  template=r"bandmate:(?P<kind>vote|var|ext|like|stems):(?P<track>[A-Za-z0-9]{1,64})"):
    def __init__(self, kind: ButtonKind, track_id: str, *, label: str | None = None, emoji: str | None = None,
                 row: int | None = None) -> None:
        super().__init__(discord.ui.Button(style=STYLES[kind], label=label, emoji=emoji, row=row,
                                           custom_id=self.custom_id_for(kind, track_id)))
        self.kind = kind
        self.track_id = track_id

    @staticmethod
    def custom_id_for(kind: ButtonKind, track_id: str) -> str:
        return f"bandmate:{kind.value}:{track_id}"

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> "TrackButton":
        return cls(ButtonKind(match["kind"]), match["track"], label=item.label,
                   emoji=str(item.emoji) if item.emoji else None, row=item.row)

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.buttons.on_click(interaction, self.kind, self.track_id)

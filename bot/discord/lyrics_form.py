"""A form for long lyrics: a slash option is one line, so `/song ... lyrics_form: True` opens a modal with a
paragraph box where words keep their line breaks and section tags sit on their own lines, as people write them.

The modal's submission is a new interaction; the song is planned and queued from it, exactly as from the command
(every check runs then: the words are only known at that point)."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import discord

log = logging.getLogger(__name__)

MAX_LYRICS_CHARS = 4000  # Discord's limit for a text input, and the core's lyrics limit
FORM_TIMEOUT_S = 15 * 60  # as long as the command's own interaction lives
PLACEHOLDER = "[verse]\nwalking down the street tonight\n[chorus]\noh we sing"

Submitted = Callable[[discord.Interaction, str], Awaitable[object]]


class LyricsForm(discord.ui.Modal):
    """One paragraph input; `on_words(interaction, text)` gets the submission."""

    def __init__(self, on_words: Submitted, *, title: str = "Lyrics for your song") -> None:
        super().__init__(title=title[:45], timeout=FORM_TIMEOUT_S)
        self.on_words = on_words
        self.words: discord.ui.TextInput = discord.ui.TextInput(
            label="Lyrics", style=discord.TextStyle.paragraph, placeholder=PLACEHOLDER,
            max_length=MAX_LYRICS_CHARS, required=True, custom_id="bandmate:lyrics")
        self.add_item(self.words)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.on_words(interaction, self.words.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        log.exception("the lyrics form failed", exc_info=error)
        if not interaction.response.is_done():
            await interaction.response.send_message("Something went wrong with those lyrics; please try again.",
                                                    ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

"""Slash commands: /privacy, /export, /forget: what Bandmate keeps about you, a copy, and deleting it.

Why: Discord's Developer Policy asks bots to tell users what they collect and to honour a user's request to delete
their data. These commands do that without an admin in the loop. Every reply is ephemeral (only the asker sees
their data) and sent with `AllowedMentions.none()`.

/forget asks first: an ephemeral message with Confirm/Cancel buttons. The view is an ordinary timed one (not a
persistent button) because the question only makes sense for a minute; only the person who asked can answer it.
"""

from __future__ import annotations

import gzip
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.privacy import PrivacyService
from bot.discord.render import NO_PINGS

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 60.0
EXPORT_NAME = "bandmate-export.json"
TRACK_CHOICES = [app_commands.Choice(name="delete", value="delete"),
                 app_commands.Choice(name="keep anonymously", value="keep")]


class ConfirmForget(discord.ui.View):
    """Confirm/Cancel for one /forget; answers only the user who asked, once."""

    def __init__(self, service: PrivacyService, owner_id: int, delete_tracks: bool,
                 origin: discord.Interaction) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT_S)
        self.service = service
        self.owner_id = owner_id
        self.delete_tracks = delete_tracks
        self.origin = origin
        self.answered = False

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.owner_id:
            return True
        await interaction.response.send_message("Only the person who asked can confirm this.", ephemeral=True,
                                                allowed_mentions=NO_PINGS)
        return False

    @discord.ui.button(label="Confirm: forget me", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.answered:
            return
        self.answered = True
        self.stop()
        await interaction.response.edit_message(content="Forgetting you…", view=None, allowed_mentions=NO_PINGS)
        try:
            text = await self.service.forget(str(self.owner_id), self.delete_tracks)
        except Exception:
            log.exception("forget failed")
            text = ("Something went wrong and your data may not be fully deleted. Please try `/forget` again, or "
                    "ask the bot's operator.")
        await interaction.edit_original_response(content=text, view=None, allowed_mentions=NO_PINGS)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.answered:
            return
        self.answered = True
        self.stop()
        await interaction.response.edit_message(content="Cancelled: nothing was deleted.", view=None,
                                                allowed_mentions=NO_PINGS)

    async def on_timeout(self) -> None:
        if self.answered:
            return
        self.answered = True
        try:
            await self.origin.edit_original_response(content="No answer, so nothing was deleted. Run `/forget` "
                                                     "again when you're ready.", view=None, allowed_mentions=NO_PINGS)
        except discord.HTTPException as error:
            log.debug("could not close an unanswered /forget: %s", error)


class PrivacyCog(commands.Cog):
    def __init__(self, bot: commands.Bot, service: PrivacyService) -> None:
        self.bot = bot
        self.service = service

    @app_commands.command(name="privacy")
    async def privacy(self, interaction: discord.Interaction) -> None:
        """What Bandmate keeps about you, and how to get a copy or delete it."""
        text = await self.service.privacy_text(str(interaction.user.id))
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="export")
    async def export(self, interaction: discord.Interaction) -> None:
        """Get a copy of everything Bandmate stores about you (JSON)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await self.service.export_json(str(interaction.user.id))
        name = EXPORT_NAME
        limit = interaction.filesize_limit
        if len(data) > limit:
            data, name = gzip.compress(data), EXPORT_NAME + ".gz"
        if len(data) > limit:
            await interaction.followup.send("Your export is larger than Discord lets me send. Please ask the bot's "
                                            "operator for it.", ephemeral=True, allowed_mentions=NO_PINGS)
            return
        await interaction.followup.send("Everything Bandmate stores about you:", file=discord.File(io.BytesIO(data),
                                        filename=name), ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="forget")
    @app_commands.describe(tracks="Your tracks: delete them too, or keep them without your name")
    @app_commands.choices(tracks=TRACK_CHOICES)
    async def forget(self, interaction: discord.Interaction, tracks: app_commands.Choice[str]) -> None:
        """Delete what Bandmate stores about you (asks to confirm first)."""
        delete_tracks = tracks.value == "delete"
        what = ("Your tracks and their files will be deleted too." if delete_tracks else
                "Your tracks stay, anonymously: nothing will link them to you.")
        text = ("This deletes your taste fingerprint, votes, presets and the link between you and everything you "
                f"made. {what} This cannot be undone.")
        view = ConfirmForget(self.service, interaction.user.id, delete_tracks, interaction)
        await interaction.response.send_message(text, view=view, ephemeral=True, allowed_mentions=NO_PINGS)

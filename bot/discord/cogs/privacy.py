"""Slash commands: /privacy, /export, /forget: what Bandmate keeps about you, a copy, and deleting it.

Why: Discord's Developer Policy asks bots to tell users what they collect and to honour a user's request to delete
their data. These commands do that without an admin in the loop. Every reply is ephemeral (only the asker sees
their data) and sent with `AllowedMentions.none()`.

/forget asks first: an ephemeral message with Confirm/Cancel buttons, DynamicItems like every other button (the
user and the choice in the custom_id), so they answer from the first moment; only the person who asked can.
"""

from __future__ import annotations

import gzip
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.privacy import PrivacyService
from bot.discord.render import NO_PINGS, render

log = logging.getLogger(__name__)

EXPORT_NAME = "bandmate-export.json"
TRACK_CHOICES = [app_commands.Choice(name="delete", value="delete"),
                 app_commands.Choice(name="keep anonymously", value="keep")]


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"bandmate:forget:(?P<answer>yes|no):(?P<user>[0-9]{1,20}):(?P<mode>delete|keep)"):
    """Confirm or Cancel a /forget. The user and the choice live in the custom_id, so the buttons answer from the
    first moment (and after a restart); only that user may press them."""

    def __init__(self, answer: str, user_id: int, mode: str) -> None:
        yes = answer == "yes"
        super().__init__(discord.ui.Button(
            label="Confirm: forget me" if yes else "Cancel",
            style=discord.ButtonStyle.danger if yes else discord.ButtonStyle.secondary,
            custom_id=f"bandmate:forget:{answer}:{user_id}:{mode}"))
        self.answer, self.user_id, self.mode = answer, user_id, mode

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match) -> "ForgetButton":
        return cls(match["answer"], int(match["user"]), match["mode"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.user_id:
            return True
        await interaction.response.send_message("Only the person who asked can confirm this.", ephemeral=True,
                                                allowed_mentions=NO_PINGS)
        return False

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.answer == "no":
            await interaction.response.edit_message(content="Cancelled: nothing was deleted.", view=None,
                                                    allowed_mentions=NO_PINGS)
            return
        await interaction.response.edit_message(content="Forgetting you…", view=None, allowed_mentions=NO_PINGS)
        service: PrivacyService = interaction.client.get_cog("PrivacyCog").service
        try:
            text = await service.forget(str(self.user_id), self.mode == "delete")
        except Exception:
            log.exception("forget failed")
            text = ("Something went wrong and your data may not be fully deleted. Please try `/forget` again, or "
                    "ask the bot's operator.")
        await interaction.edit_original_response(content=render(text), view=None, allowed_mentions=NO_PINGS)


def confirm_view(user_id: int, mode: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton("yes", user_id, mode))
    view.add_item(ForgetButton("no", user_id, mode))
    return view


class PrivacyCog(commands.Cog):
    def __init__(self, bot: commands.Bot, service: PrivacyService) -> None:
        self.bot = bot
        self.service = service

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ForgetButton)

    @app_commands.command(name="privacy")
    async def privacy(self, interaction: discord.Interaction) -> None:
        """What Bandmate keeps about you, and how to get a copy or delete it."""
        text = await self.service.privacy_text(str(interaction.user.id))
        await interaction.response.send_message(render(text), ephemeral=True, allowed_mentions=NO_PINGS)

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
        view = confirm_view(interaction.user.id, tracks.value)
        await interaction.response.send_message(text, view=view, ephemeral=True, allowed_mentions=NO_PINGS)

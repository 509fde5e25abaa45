"""What a slash command or a button press does: plan (every check, so a refusal is private), acknowledge, queue.

Discord allows 3 s to acknowledge; the deferred message becomes the job's status message, so the delivery is only
known after the defer and the plan is completed with it then.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import discord

from bot.core import Bandmate, Refusal, Request, Requester, Upload
from bot.discord.delivery import DiscordDelivery
from bot.discord.status import StatusUpdater
from bot.discord.render import NO_PINGS, build_view, render
from bot.messages import ButtonKind
from bot.planner import Plan
from generation.jobs import Job, Operation

log = logging.getLogger(__name__)

INTERACTION_TTL_S = 15 * 60
NEEDED = ("send_messages", "attach_files", "read_message_history")

Planned = Callable[[Request], Awaitable[Plan]]
Download = Callable[[], Awaitable[Upload]]


def requester(interaction: discord.Interaction) -> Requester:
    perms = interaction.permissions
    parent = getattr(interaction.channel, "parent_id", None)
    return Requester(
        user_id=str(interaction.user.id), name=interaction.user.display_name,
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        channel_id=str(interaction.channel_id) if interaction.channel_id else None,
        is_admin=bool(perms and (perms.manage_guild or perms.administrator)),
        parent_channel_id=str(parent) if parent else None,
    )


def missing_permissions(interaction: discord.Interaction) -> list[str]:
    if interaction.guild_id is None:
        return []
    perms = interaction.app_permissions
    return [name.replace("_", " ") for name in NEEDED if not getattr(perms, name, False)]


async def answer(interaction: discord.Interaction, text: str, **kwargs) -> None:
    """A private answer (core markup), as the response or, once responded, as a follow-up."""
    if interaction.response.is_done():
        await interaction.followup.send(render(text), ephemeral=True, allowed_mentions=NO_PINGS, **kwargs)
    else:
        await interaction.response.send_message(render(text), ephemeral=True, allowed_mentions=NO_PINGS, **kwargs)


class InteractionJobs:
    def __init__(self, core: Bandmate, status: StatusUpdater) -> None:
        self.core = core
        self.status = status

    async def start(self, interaction: discord.Interaction, plan: Planned,
                    download: Download | None = None) -> Job | None:
        """Plan (refusals are ephemeral), defer, download an attachment if any, queue, write the first status."""
        request = Request(requester(interaction), f"discord:interaction:{interaction.id}")
        try:
            missing = missing_permissions(interaction)
            if missing:
                raise Refusal("I need these permissions in this channel to post music: " + ", ".join(missing)
                              + ". Ask a server admin to grant them.")
            planned = await plan(request)
        except Refusal as refusal:
            await answer(interaction, refusal.user_message)
            return None
        response = await interaction.response.defer(thinking=True)
        status_id = getattr(response, "message_id", None) or (await interaction.original_response()).id
        delivery = DiscordDelivery(
            channel_id=str(interaction.channel_id), guild_id=request.who.guild_id, status_message_id=str(status_id),
            attachment_size_limit=interaction.filesize_limit, application_id=str(interaction.application_id),
            interaction_token=interaction.token, expires_at=interaction.created_at.timestamp() + INTERACTION_TTL_S)
        try:
            upload = await download() if download is not None else None
            job = await self.core.submit(planned.delivered_to(delivery.address()), upload)
        except Refusal as refusal:
            # After a public defer the first follow-up would be public too: settle the deferred message, remove
            # it, and then the refusal can be ephemeral.
            await interaction.edit_original_response(content="…")
            await interaction.delete_original_response()
            await answer(interaction, refusal.user_message)
            return None
        self.status.watch(job, self.core.first_status(job))  # the first edit of the status message's stream
        return job


async def download_attachment(attachment: discord.Attachment) -> Upload:
    try:
        return Upload(attachment.filename, await attachment.read())
    except discord.HTTPException:
        raise Refusal("I couldn't download that attachment; please try again.") from None


class ButtonActions:
    """Vote, variations, extend and more-like-this on a result, by track id."""

    _OPERATIONS = {ButtonKind.VARIATIONS: Operation.VARIATION, ButtonKind.EXTEND: Operation.EXTEND,
                   ButtonKind.MORE_LIKE: Operation.MORE_LIKE}

    def __init__(self, core: Bandmate, jobs: InteractionJobs) -> None:
        self.core = core
        self.jobs = jobs

    async def on_click(self, interaction: discord.Interaction, kind: ButtonKind, track_id: str) -> None:
        if kind is ButtonKind.VOTE:
            try:
                voted = await self.core.vote(requester(interaction), track_id)
            except Refusal as refusal:
                await answer(interaction, refusal.user_message)
                return
            await interaction.response.edit_message(view=build_view(voted.message.buttons))
            return
        operation = self._OPERATIONS[kind]
        seconds = 10.0 if operation is Operation.EXTEND else None

        async def plan(request: Request) -> Plan:
            return await self.core.plan_from_track(request, track_id, operation, seconds=seconds)

        await self.jobs.start(interaction, plan)

"""What a slash command or a button press does: check instantly, acknowledge, then queue the job.

Everything checkable without a network call is checked before acknowledging, so refusals are ephemeral. Then
the interaction is deferred at once (Discord allows 3 s); the deferred message becomes the job's status message.
"""

from __future__ import annotations

import inspect
import logging
from typing import Awaitable, Callable

import discord

from bot.core import Bandmate, Refusal, Requester
from bot.discord.delivery import StatusUpdater
from bot.discord.render import NO_PINGS, build_view, escape
from bot.messages import ButtonKind
from generation.jobs import Job, Operation
from generation.scheduler import EventKind, JobEvent

log = logging.getLogger(__name__)

INTERACTION_TTL_S = 15 * 60
NEEDED = ("send_messages", "attach_files", "read_message_history")

MakeJob = Callable[[dict, str, float], Awaitable[Job]]
Precheck = Callable[[], "None | Awaitable[None]"]


def requester(interaction: discord.Interaction) -> Requester:
    perms = interaction.permissions
    return Requester(
        user_id=str(interaction.user.id), name=interaction.user.display_name,
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        channel_id=str(interaction.channel_id) if interaction.channel_id else None,
        is_admin=bool(perms and (perms.manage_guild or perms.administrator)),
    )


def missing_permissions(interaction: discord.Interaction) -> list[str]:
    if interaction.guild_id is None:
        return []
    perms = interaction.app_permissions
    return [name.replace("_", " ") for name in NEEDED if not getattr(perms, name, False)]


class InteractionJobs:
    def __init__(self, core: Bandmate, status: StatusUpdater) -> None:
        self.core = core
        self.status = status

    async def refuse(self, interaction: discord.Interaction, message: str) -> None:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_PINGS)

    async def start(self, interaction: discord.Interaction, make_job: MakeJob,
                    precheck: Precheck | None = None) -> Job | None:
        who = requester(interaction)
        try:
            missing = missing_permissions(interaction)
            if missing:
                raise Refusal("I need these permissions in this channel to post music: " + ", ".join(missing)
                              + ". Ask a server admin to grant them.")
            if precheck is not None:
                checked = precheck()
                if inspect.isawaitable(checked):
                    await checked
            await self.core.check_quota(who)
        except Refusal as refusal:
            await self.refuse(interaction, refusal.user_message)
            return None
        response = await interaction.response.defer(thinking=True)
        status_id = getattr(response, "message_id", None) or (await interaction.original_response()).id
        delivery = {
            "sink": "discord", "channel_id": str(interaction.channel_id), "guild_id": who.guild_id,
            "application_id": str(interaction.application_id), "interaction_token": interaction.token,
            "status_message_id": str(status_id), "attachment_size_limit": interaction.filesize_limit,
        }
        expires = interaction.created_at.timestamp() + INTERACTION_TTL_S
        try:
            job = await make_job(delivery, f"discord:interaction:{interaction.id}", expires)
        except Refusal as refusal:
            # After a public defer the first follow-up would be public too: settle the deferred message, remove
            # it, and then the refusal can be ephemeral.
            await interaction.edit_original_response(content="…")
            await interaction.delete_original_response()
            await interaction.followup.send(refusal.user_message, ephemeral=True, allowed_mentions=NO_PINGS)
            return None
        self.status.watch(job)
        position = self.core.scheduler.position(job.id)
        event = JobEvent(EventKind.QUEUED, job.id, job.user_id, position=position, eta_s=self.core.scheduler.eta(job.id))
        try:
            await self.status.messenger.edit(job, status_id, self.core.status_text(job, event, escape))
        except discord.HTTPException as error:
            log.info("could not write the first status of job %s: %s", job.id, error)
        return job


class ButtonActions:
    """Vote, variations, extend and more-like-this on a result, by track id."""

    def __init__(self, core: Bandmate, jobs: InteractionJobs) -> None:
        self.core = core
        self.jobs = jobs

    async def on_click(self, interaction: discord.Interaction, kind: ButtonKind, track_id: str) -> None:
        who = requester(interaction)
        if kind is ButtonKind.VOTE:
            try:
                tally = await self.core.vote(who, track_id)
                track = await self.core.track(track_id)
            except Refusal as refusal:
                await self.jobs.refuse(interaction, refusal.user_message)
                return
            job = await self.core.store.get_job(track.job_id)
            tracks = await self.core.store.tracks_for_job(track.job_id)
            message = self.core.result_message(job, tracks, escape, tally)
            await interaction.response.edit_message(view=build_view(message.buttons))
            return
        operation = {ButtonKind.VARIATIONS: Operation.VARIATION, ButtonKind.EXTEND: Operation.EXTEND,
                     ButtonKind.MORE_LIKE: Operation.MORE_LIKE}[kind]

        async def make(delivery: dict, key: str, expires: float) -> Job:
            return await self.core.from_track(who, track_id, operation, delivery=delivery, idempotency_key=key,
                                              seconds=10.0 if operation is Operation.EXTEND else None,
                                              interaction_expires_at=expires)

        precheck = (lambda: self.core.check_extend(track_id)) if operation is Operation.EXTEND else None
        await self.jobs.start(interaction, make, precheck)

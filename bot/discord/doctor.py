"""`python bot.py doctor`, the Discord part: is the token good, are the intents on, what may the bot do where.

Uses REST only (no gateway session), so it runs beside a live bot. Never prints the token.
"""

from __future__ import annotations

import logging

import discord

from bot.discord.client import PERMISSIONS, invite_url, point_at

log = logging.getLogger(__name__)

MESSAGE_CONTENT_FLAGS = (1 << 18) | (1 << 19)  # GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED


async def check_discord(settings) -> list[tuple[str, str, bool]]:
    """(name, finding, good) lines for the doctor's report."""
    point_at(settings.discord_api_base, settings.discord_gateway_url)
    lines: list[tuple[str, str, bool]] = []
    client = discord.Client(intents=discord.Intents.none())
    try:
        try:
            await client.login(settings.discord_token)
        except discord.LoginFailure:
            return [("token", "Discord rejected DISCORD_TOKEN: reset it in the Developer Portal (Bot > Reset Token)",
                     False)]
        except (discord.HTTPException, OSError) as error:
            return [("token", f"could not reach Discord to check the token ({type(error).__name__})", False)]
        user = client.user
        lines.append(("token", f"valid: logged in as {user} ({user.id})" if user else "valid", True))
        app = await client.application_info()
        content = bool(app.flags.value & MESSAGE_CONTENT_FLAGS)
        lines.append(("intents", "Message Content intent enabled" if content else
                      "Message Content intent is off: thread replies must mention the bot (enable it in the "
                      "Developer Portal > Bot > Privileged Gateway Intents)", True))
        lines.append(("invite", invite_url(app.id), True))
        # The raw list carries each server's permissions for the bot, which discord.py's Guild objects drop.
        guilds = await client.http.get_guilds(200)
        if not guilds:
            lines.append(("servers", "the bot is in no server yet: open the invite link above", False))
        for guild in guilds:
            have = discord.Permissions(int(guild.get("permissions") or 0))
            missing = [name.replace("_", " ") for name, value in PERMISSIONS if value and not getattr(have, name)]
            if have.administrator or not missing:
                lines.append((f"server {guild['id']}", f"{guild.get('name')}: all needed permissions", True))
            else:
                lines.append((f"server {guild['id']}", f"{guild.get('name')}: missing {', '.join(missing)}", False))
        return lines
    finally:
        await client.close()

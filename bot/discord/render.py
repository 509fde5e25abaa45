"""The core's markup as Discord messages: Markdown with people's words escaped, within Discord's limits."""

from __future__ import annotations

import discord

from bot import text as markup
from bot.discord.buttons import TrackButton
from bot.messages import Button

NO_PINGS = discord.AllowedMentions.none()
MESSAGE_LIMIT = 2000  # characters in one Discord message


def escape(text: str) -> str:
    """User text shown back: no markdown tricks, and no mention can resolve even if AllowedMentions were lost."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def _node(node: markup.Node) -> str:
    if node.kind is markup.Kind.USER:
        return escape(node.text)
    if node.kind is markup.Kind.STRONG:
        return "**" + "".join(_node(c) for c in node.children) + "**"
    if node.kind is markup.Kind.CODE:
        return "`" + node.text.replace("`", "ˋ") + "`"
    if node.kind is markup.Kind.MENTION:
        return f"<@{node.text}>" if node.text.isdigit() else f"@{escape(node.text)}"
    return node.text


def fit(lines: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """Whole lines up to the limit, then a note of how many were left out."""
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        note = f"…and {len(lines) - i} more."
        if used + len(line) + 1 + len(note) > limit:
            out.append(note)
            break
        out.append(line)
        used += len(line) + 1
    text = "\n".join(out)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Core markup -> Discord Markdown within one message."""
    return fit(markup.render(text, _node).split("\n"), limit)


def build_view(buttons: list[Button]) -> discord.ui.View | None:
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for button in buttons:
        view.add_item(TrackButton(button.kind, button.target, label=button.label, emoji=button.emoji, row=button.row))
    return view

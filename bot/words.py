"""Small pieces of wording every part of the core shares: prompts cleaned, lengths shortened, times in words."""

from __future__ import annotations

import re
import unicodedata

from bot.request import Refusal


def clean_prompt(text: str, limit: int) -> str:
    """Printable text on one line; control and format characters (zero-width tricks, RTL overrides) removed."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(" " if ch in "\r\n\t" else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise Refusal("Tell me what to make, for example: `lo-fi piano, rainy night`.")
    if len(text) > limit:
        raise Refusal(f"That prompt is {len(text)} characters long; please keep it under {limit}.")
    return text


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def progress_bar(step: int, total: int, width: int = 20) -> str:
    filled = int(width * step / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def human_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

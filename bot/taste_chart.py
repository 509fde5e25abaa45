"""A picture of a user's musical fingerprint for `/taste`: their top tags as horizontal bars.

Pillow only (matplotlib is heavy and slow to import), drawn at twice the size and scaled down so rounded bars
and text edges are smooth. Colours sit on Discord's dark embed background; each bar is coloured by its tag's
group, with a legend of the groups shown. The same profile gives the same PNG bytes.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bot import vocabulary
from bot.taste import TasteProfile

log = logging.getLogger(__name__)

WIDTH = 800
MAX_BARS = 10
SCALE = 2  # supersampling factor

# Layout in output pixels.
PAD = 24
HEADER_H = 78
ROW_H = 38
BAR_H = 22
LEGEND_H = 44
LABEL_W = 150
VALUE_W = 64

BACKGROUND = (43, 45, 49)  # Discord's dark embed background
TRACK = (54, 57, 63)
TITLE_COLOUR = (242, 243, 245)
TEXT_COLOUR = (219, 222, 225)
MUTED_COLOUR = (148, 155, 164)
PIN_COLOUR = (242, 243, 245)
GROUP_COLOURS: dict[str, tuple[int, int, int]] = {
    "genre": (88, 101, 242),  # blurple
    "mood": (235, 69, 158),  # fuchsia
    "instrument": (87, 242, 135),  # green
    "tempo": (254, 231, 92),  # yellow
    "era": (240, 138, 75),  # orange
    "sound": (69, 196, 230),  # cyan
}
OTHER_COLOUR = (148, 155, 164)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Per picture, not cached: charts may be drawn in worker threads and a FreeType face is not thread-safe.
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    """`text` shortened with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "\u2026" if text else ""


def chart_size(bars: int) -> tuple[int, int]:
    """Output size in pixels for `bars` bars (clamped to 1..MAX_BARS: an empty chart still has one row)."""
    rows = max(1, min(MAX_BARS, bars))
    return WIDTH, PAD + HEADER_H + rows * ROW_H + LEGEND_H + PAD // 2


def _colour(group: str | None) -> tuple[int, int, int]:
    return GROUP_COLOURS.get(group or "", OTHER_COLOUR)


def _pin(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """A small diamond: the mark of a tag added with /style add (emoji are not in the bundled font)."""
    draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=PIN_COLOUR)


def render_taste_chart(
    taste: TasteProfile, *, title: str = "Your musical fingerprint", subtitle: str | None = None
) -> Image.Image:
    """The chart as an RGB image of `chart_size(len(top tags))`."""
    top = taste.top(MAX_BARS)
    width, height = chart_size(len(top))
    s = SCALE
    img = Image.new("RGB", (width * s, height * s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    title_font, text_font, small_font = _font(24 * s), _font(16 * s), _font(13 * s)

    # Header.
    title = _fit(draw, title, title_font, (width - 2 * PAD) * s)
    # A hairline stroke in the text's own colour: a bolder title without shipping a bold font.
    draw.text((PAD * s, PAD * s), title, font=title_font, fill=TITLE_COLOUR, stroke_width=1, stroke_fill=TITLE_COLOUR)
    if subtitle is None:
        subtitle = (
            f"Top {len(top)} tag{'s' if len(top) != 1 else ''} \u00b7 votes, likes and remixes fade over "
            f"{taste.half_life_days:g} days; /style add does not"
            if top
            else "No taste yet: vote for tracks, like them, or use /style add"
        )
    subtitle = _fit(draw, subtitle, small_font, (width - 2 * PAD) * s)
    draw.text((PAD * s, (PAD + 36) * s), subtitle, font=small_font, fill=MUTED_COLOUR)

    # Bars.
    y0 = PAD + HEADER_H
    bar_x0 = PAD + LABEL_W + 12
    bar_x1 = width - PAD - VALUE_W
    span = bar_x1 - bar_x0
    best = max((e.score for e in top), default=1.0)
    for i, entry in enumerate(top):
        cy = y0 + i * ROW_H + ROW_H / 2
        label = _fit(draw, vocabulary.display(entry.tag), text_font, LABEL_W * s)
        draw.text(((PAD + LABEL_W) * s, cy * s), label, font=text_font, fill=TEXT_COLOUR, anchor="rm")
        top_y, bottom_y = (cy - BAR_H / 2) * s, (cy + BAR_H / 2) * s
        radius = BAR_H / 2 * s
        draw.rounded_rectangle((bar_x0 * s, top_y, bar_x1 * s, bottom_y), radius=radius, fill=TRACK)
        length = max(BAR_H, span * entry.score / best)  # never shorter than its own rounded ends
        draw.rounded_rectangle(
            (bar_x0 * s, top_y, (bar_x0 + length) * s, bottom_y), radius=radius, fill=_colour(entry.group)
        )
        value = f"{entry.score:.1f}"
        draw.text(((bar_x1 + 10) * s, cy * s), value, font=small_font, fill=MUTED_COLOUR, anchor="lm")
        if entry.explicit:
            vx = bar_x1 + 10 + draw.textlength(value, font=small_font) / s + 10
            _pin(draw, vx * s, cy * s, 5 * s)
    if not top:
        cy = y0 + ROW_H / 2
        draw.rounded_rectangle(
            (bar_x0 * s, (cy - BAR_H / 2) * s, bar_x1 * s, (cy + BAR_H / 2) * s), radius=BAR_H / 2 * s, fill=TRACK
        )

    # Legend: the groups on the chart, in vocabulary order, then the pin if any tag has one.
    groups = [g for g in vocabulary.GROUPS if any(e.group == g for e in top)]
    if any(e.group not in GROUP_COLOURS for e in top):
        groups.append("other")
    ly = (height - PAD // 2 - LEGEND_H / 2) * s
    x = float(PAD * s)
    for group in groups:
        label = vocabulary.GROUP_LABELS.get(group, group)
        r = 6 * s
        draw.ellipse((x, ly - r, x + 2 * r, ly + r), fill=_colour(group if group != "other" else None))
        x += 2 * r + 8 * s
        draw.text((x, ly), label, font=small_font, fill=MUTED_COLOUR, anchor="lm")
        x += draw.textlength(label, font=small_font) + 22 * s
    if any(e.explicit for e in top):
        _pin(draw, x + 5 * s, ly, 5 * s)
        draw.text((x + 18 * s, ly), "added with /style add", font=small_font, fill=MUTED_COLOUR, anchor="lm")

    return img.resize((width, height), Image.Resampling.LANCZOS)


def taste_chart_bytes(taste: TasteProfile, *, title: str = "Your musical fingerprint") -> bytes:
    """The chart as PNG bytes, for sending as an attachment without touching the disk."""
    buf = io.BytesIO()
    render_taste_chart(taste, title=title).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def taste_chart_png(
    taste: TasteProfile, path: str | os.PathLike[str], *, title: str = "Your musical fingerprint"
) -> Path:
    """Write the chart to `path` (atomically: a reader never sees half a file) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = taste_chart_bytes(taste, title=title)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("taste chart written to %s (%d bytes)", target, len(data))
    return target

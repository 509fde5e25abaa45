"""Waveform pictures for Discord embeds: the shape of a track at a glance, before anyone presses play.

Pure numpy + Pillow (no matplotlib: it is heavy and slow to import). Each pixel column shows the min/max envelope of
its samples with the RMS body drawn brighter inside it, on a dark background that sits well in Discord's dark theme.
Edges are anti-aliased by pixel coverage, and the output is deterministic: the same audio gives the same PNG bytes.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from generation.atomic import write_atomic

log = logging.getLogger(__name__)

BACKGROUND = (27, 28, 32)
CENTRE_LINE = (58, 60, 68)
PEAK_INNER = (88, 101, 242)  # Discord blurple, near the centre line
PEAK_OUTER = (150, 110, 245)  # drifting to violet towards the peaks
RMS_COLOUR = (190, 198, 255)
TITLE_COLOUR = (242, 243, 245)
LABEL_COLOUR = (148, 155, 164)
SECTION_COLOUR = (240, 178, 50)

_TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Loaded per picture (~0.1 ms), not cached: pictures are drawn in worker threads, and a FreeType face is not
    # safe to share between threads.
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _clock(seconds: float, decimals: bool = False) -> str:
    if decimals and abs(seconds - round(seconds)) >= 0.05:
        minutes, rest = divmod(round(seconds, 1), 60)
        return f"{int(minutes)}:{rest:04.1f}"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> str:
    """`text` shortened with an ellipsis until it fits `max_width` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text.rstrip() + "…" if text else ""


def _envelope(samples: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: min and max over all channels, and RMS. Zeros for empty audio."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    frames = x.shape[1]
    if frames == 0:
        zeros = np.zeros(columns)
        return zeros, zeros, zeros
    # Column c covers frames [edges[c], edges[c+1]). With fewer frames than columns some columns are empty, and
    # reduceat then yields the single frame at their start, so neighbours share it.
    edges = (np.arange(columns + 1) * frames) // columns
    starts = edges[:-1]
    lows = np.minimum.reduceat(x.min(axis=0), starts)
    highs = np.maximum.reduceat(x.max(axis=0), starts)
    energy = np.add.reduceat(np.mean(x * x, axis=0), starts)
    rms = np.sqrt(energy / np.maximum(np.diff(edges), 1))
    return lows, highs, rms


def _coverage(rows: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Fraction of each pixel (row r spans [r, r+1)) inside [top, bottom] per column: anti-aliased vertical edges."""
    return np.clip(np.minimum(rows + 1, bottom[None, :]) - np.maximum(rows, top[None, :]), 0.0, 1.0)


def draw_waveform(
    samples: np.ndarray,
    sample_rate: int,
    *,
    title: str | None = None,
    width: int = 1200,
    height: int = 300,
    sections: list[tuple[float, str]] | None = None,
) -> Image.Image:
    """The waveform as an RGB image (see `render_waveform`)."""
    if width < 64 or height < 48:
        raise ValueError(f"waveform image too small: {width}x{height}")
    frames = np.shape(samples)[-1]
    duration_s = frames / sample_rate
    # Discord shows embed images ~400-550 px wide, so text is sized for a 2-3x shrink.
    scale = min(height / 300, width / 1200)
    pad = max(6, round(18 * scale))
    title_size = max(11, round(34 * scale))
    label_height = max(10, round(20 * scale))
    title_font = _font(title_size)
    label_font = _font(label_height)

    header = pad + (round(title_size * 1.3) if title else 0)
    footer = pad + label_height + round(6 * scale)
    x0, x1 = pad, width - pad
    y0, y1 = header, height - footer
    columns = x1 - x0
    centre = (y0 + y1) / 2
    half = (y1 - y0) / 2

    lows, highs, rms = _envelope(samples, columns)
    peak = max(float(np.max(np.abs(highs), initial=0.0)), float(np.max(np.abs(lows), initial=0.0)))
    # Fill the height with the loudest moment, but don't blow faint noise up to full scale.
    gain = 0.96 * half / max(peak, 0.05)
    top = np.minimum(centre - highs * gain, centre - 0.5)
    bottom = np.maximum(centre - lows * gain, centre + 0.5)
    rms_top = np.clip(centre - rms * gain, top, centre)
    rms_bottom = np.clip(centre + rms * gain, centre, bottom)

    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = BACKGROUND
    rows = np.arange(y0, y1, dtype=np.float32)[:, None]
    area = canvas[y0:y1, x0:x1]
    area[np.abs(rows[:, 0] + 0.5 - centre) < 0.5] = CENTRE_LINE
    # Peak envelope in a vertical gradient (blurple at the centre, violet at the extremes), RMS body on top.
    distance = np.clip(np.abs(rows + 0.5 - centre) / max(half, 1.0), 0.0, 1.0)
    gradient = np.asarray(PEAK_INNER) + distance[..., None] * (np.asarray(PEAK_OUTER) - np.asarray(PEAK_INNER))
    peak_cover = _coverage(rows, top, bottom)[..., None]
    area[:] = area * (1 - peak_cover) + gradient * peak_cover
    rms_cover = _coverage(rows, rms_top, rms_bottom)[..., None]
    area[:] = area * (1 - rms_cover) + np.asarray(RMS_COLOUR) * rms_cover
    image = Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    if title:
        draw.text((x0, pad), _fit_text(draw, title, title_font, columns), font=title_font, fill=TITLE_COLOUR)
    _draw_time_axis(draw, duration_s, x0, x1, y1, label_font, scale)
    if sections:
        image = _draw_sections(image, sections, duration_s, x0, x1, y0, y1, label_font, scale)
    return image


def _draw_time_axis(
    draw: ImageDraw.ImageDraw, duration_s: float, x0: int, x1: int, y1: int, font, scale: float
) -> None:
    """Tick labels at a round interval, and the total duration at the right end."""
    label_y = y1 + round(6 * scale)
    total = _clock(duration_s, decimals=True)
    total_width = draw.textlength(total, font=font)
    draw.text((x1 - total_width, label_y), total, font=font, fill=TITLE_COLOUR)
    if duration_s <= 0:
        return
    columns = x1 - x0
    min_spacing_px = draw.textlength("00:00", font=font) * 3
    step = next((s for s in _TICK_STEPS_S if s * columns / duration_s >= min_spacing_px), None)
    if step is None:
        return
    for i in range(int(duration_s // step) + 1):
        t = i * step
        x = x0 + t * columns / duration_s
        label = _clock(t)
        if x + draw.textlength(label, font=font) > x1 - total_width - 8 * scale:
            break
        draw.line([(x, y1), (x, y1 + max(2, round(4 * scale)))], fill=LABEL_COLOUR, width=1)
        draw.text((x + (2 if i else 0), label_y), label, font=font, fill=LABEL_COLOUR)


def _draw_sections(
    image: Image.Image,
    sections: list[tuple[float, str]],
    duration_s: float,
    x0: int,
    x1: int,
    y0: int,
    y1: int,
    font,
    scale: float,
) -> Image.Image:
    """Section starts as translucent vertical lines, each labelled at its top on a dark backing."""
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    inset = max(2, round(3 * scale))
    for start_s, label in sorted(sections):
        if duration_s <= 0 or not 0 <= start_s < duration_s:
            log.debug("section %r at %.2f s is outside the audio (%.2f s); not drawn", label, start_s, duration_s)
            continue
        x = round(x0 + start_s * (x1 - x0) / duration_s)
        draw.line([(x, y0), (x, y1)], fill=(*SECTION_COLOUR, 200), width=max(1, round(2 * scale)))
        if label:
            text = _fit_text(draw, label, font, max(0, x1 - x - 2 * inset))
            if not text:
                continue
            left, top, right, bottom = draw.textbbox((x + 2 * inset, y0 + inset), text, font=font)
            draw.rectangle([left - inset, top - inset, right + inset, bottom + inset], fill=(*BACKGROUND, 210))
            draw.text((x + 2 * inset, y0 + inset), text, font=font, fill=(*SECTION_COLOUR, 255))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def render_waveform(
    samples: np.ndarray,
    sample_rate: int,
    path: Path,
    *,
    title: str | None = None,
    width: int = 1200,
    height: int = 300,
    sections: list[tuple[float, str]] | None = None,
) -> Path:
    """Write a waveform PNG of `samples` ((channels, frames) or mono 1-D) to `path`, atomically.

    `title` goes top left (cut with an ellipsis to fit), the duration bottom right with time ticks along the bottom;
    `sections` are (start_s, label) markers drawn as labelled vertical lines.
    """
    # Imported here: postprocess imports this module, and owns the one atomic-write helper.

    image = draw_waveform(samples, sample_rate, title=title, width=width, height=height, sections=sections)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)  # optimize=True costs ~4x the time for a few % of bytes
    return write_atomic(path, buffer.getvalue())

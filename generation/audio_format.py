"""Which audio container a file is, from its first bytes: decided before any file reaches c2pa or a decoder.

Why sniff instead of trusting the name: `/verify` takes files from anyone. Looking at a few header bytes rejects
text, images and zero-filled files at once, so only real audio containers get parsed at all.
"""

from __future__ import annotations

from pathlib import Path

HEAD_BYTES = 16
SYNC_SEARCH_BYTES = 4096

MP3 = "audio/mpeg"
FLAC = "audio/flac"
WAV = "audio/wav"
M4A = "audio/mp4"

# MPEG audio frame header: 11 sync bits, then version (not 01), layer (not 00), bitrate index (not 1111), sample
# rate index (not 11).
_MPEG_BAD_VERSION = 0b01


def _is_id3(head: bytes) -> bool:
    """ID3v2 header: "ID3", version 2-4, flags, four syncsafe size bytes (high bit clear)."""
    return (
        len(head) >= 10
        and head[:3] == b"ID3"
        and head[3] in (2, 3, 4)
        and head[4] != 0xFF
        and all(b < 0x80 for b in head[6:10])
    )


def _is_mpeg_frame(head: bytes) -> bool:
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate_index = head[2] >> 4
    rate_index = (head[2] >> 2) & 0b11
    return version != _MPEG_BAD_VERSION and layer != 0 and bitrate_index != 0b1111 and rate_index != 0b11


def sniff_audio_format(head: bytes) -> str | None:
    """The MIME type of an audio container from its first HEAD_BYTES bytes, or None if it is none we handle.

    An ID3v2 tag counts as MP3 except when FLAC follows it (c2pa stores FLAC credentials in a leading ID3 tag too);
    that case is settled by `audio_format` once the tag's length is known.
    """
    if _is_id3(head) or _is_mpeg_frame(head):
        return MP3
    if head[:4] == b"fLaC":
        return FLAC
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:11] in (b"M4A", b"mp4", b"iso", b"M4B", b"dash"):
        return M4A
    return None


def _id3_size(head: bytes) -> int:
    size = 0
    for b in head[6:10]:
        size = (size << 7) | b
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def _find_mpeg_frame(data: bytes) -> bool:
    start = 0
    while (i := data.find(b"\xff", start)) != -1:
        if _is_mpeg_frame(data[i : i + 4]):
            return True
        start = i + 1
    return False


def audio_format(path: Path | str) -> str | None:
    """The MIME type of the audio file at `path` (reads at most a few KB), or None.

    After an ID3 tag, FLAC or an MPEG frame must start within SYNC_SEARCH_BYTES: a tag in front of zeros or of
    anything else is not audio.
    """
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        kind = sniff_audio_format(head)
        if kind != MP3 or not _is_id3(head):
            return kind
        handle.seek(_id3_size(head))
        after = handle.read(SYNC_SEARCH_BYTES)
        if after[:4] == b"fLaC":
            return FLAC
        return MP3 if _find_mpeg_frame(after) else None

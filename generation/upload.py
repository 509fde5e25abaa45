"""Guarded decoding of audio that users upload (to continue or remix).

Uploaded files are untrusted, and ffmpeg is a very capable program: left to itself it follows playlists
(HLS/m3u), concat scripts and URLs, and trusts headers about lengths. So every upload goes through the
same narrow path:

1. Size cap, checked before anything is read (``len`` for bytes, ``stat`` for a path).
2. The bytes are written to a private temporary directory; ffprobe and ffmpeg may open only that file
   (``-protocol_whitelist file``) and only through a demuxer on our list (``-format_whitelist``), so
   hls, concat, image and every other demuxer is refused before it reads a byte of its header.
3. ffprobe (with a timeout) decides what the file *is* from its content, never its name: the
   container must be mp3, wav, flac, ogg, mp4/m4a/mov or ADTS aac, carrying a codec we expect there.
4. The claimed duration is checked against the cap; decoding runs with ``-t cap`` and a timeout, and
   the decoded length is checked again, so a header that lies cannot make us allocate or wait much.
5. ffmpeg resamples; the channel count is fixed up in numpy (mean for downmix, copy for upmix).

Every failure raises :class:`AudioDecodeError`, whose message is short and polite enough to show to the
user as is. These functions block (they run subprocesses): call them from a worker thread in async code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generation.types import Audio

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_EXTENSIONS",
    "AudioDecodeError",
    "ProbeResult",
    "UploadLimits",
    "decode_audio_bytes",
    "decode_audio_file",
    "probe_audio_bytes",
]

ALLOWED_EXTENSIONS: frozenset[str] = frozenset({".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a", ".aac"})

# Demuxer (ffmpeg's short name, the first entry of ffprobe's format_name) -> codecs accepted inside it.
# "wav" accepts any pcm_* codec; see _codec_allowed.
_ALLOWED_CODECS: dict[str, frozenset[str]] = {
    "mp3": frozenset({"mp3"}),
    "wav": frozenset(),
    "flac": frozenset({"flac"}),
    "ogg": frozenset({"vorbis", "opus", "flac"}),
    "mov": frozenset({"aac", "alac"}),  # mp4 / m4a / mov all use the "mov" demuxer
    "aac": frozenset({"aac"}),  # raw ADTS .aac
}
_FORMAT_WHITELIST = ",".join(_ALLOWED_CODECS)

# No single allocation inside ffmpeg/ffprobe needs more than this for a file under the size cap.
_MAX_ALLOC_BYTES = 256 * 1024 * 1024
# Decode a little past the duration cap, so "exactly at the cap" and "over it" can be told apart.
_DECODE_MARGIN_S = 1.0
# Decoded audio may run this much past the cap (decoder padding) before it counts as too long.
_OVER_CAP_TOLERANCE_S = 0.5
_MAX_SOURCE_CHANNELS = 64
_MAX_SOURCE_RATE = 768_000

_MSG_UNSUPPORTED = "That doesn't look like an audio file I can read (mp3, wav, flac, ogg/opus or m4a)."
_MSG_EMPTY = "That file is empty."
_MSG_NO_AUDIO = "I couldn't find any audio in that file."
_MSG_DAMAGED = "That file seems to be cut off or damaged; please try uploading it again."
_MSG_SLOW = "That file took too long to read; please try a shorter or simpler file."
_MSG_UNREADABLE = "I couldn't read that file."
_MSG_UNAVAILABLE = "I can't read audio files right now; please try again later."


class AudioDecodeError(Exception):
    """An upload could not be used. ``user_message`` (also ``str(e)``) is safe to show to the user."""

    user_message: str

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message

    def __str__(self) -> str:
        return self.user_message


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 25 * 1024 * 1024
    max_duration_s: float = 600.0
    probe_timeout_s: float = 10.0
    decode_timeout_s: float = 60.0


@dataclass(frozen=True)
class ProbeResult:
    """What ffprobe found. ``format`` is ffmpeg's demuxer name: mp3, wav, flac, ogg, mov (mp4/m4a) or aac."""

    format: str
    codec: str
    duration_s: float | None  # None when the container does not say
    sample_rate: int
    channels: int


# ---------------------------------------------------------------------------------------------------------
# Public API


def probe_audio_bytes(data: bytes, *, limits: UploadLimits = UploadLimits()) -> ProbeResult:
    """Check an upload without decoding it: size, container/codec allow-list and claimed duration.

    Raises AudioDecodeError when any of those rules it out.
    """
    _check_size(len(data), limits)
    with _UploadDir() as workdir:
        path = workdir.write(data)
        return _probe(path, limits)


def decode_audio_bytes(
    data: bytes,
    *,
    target_rate: int,
    channels: int = 1,
    limits: UploadLimits = UploadLimits(),
    filename: str | None = None,
) -> Audio:
    """Decode an uploaded file to float32 samples shaped (channels, frames) at ``target_rate``.

    ``filename`` is used only in log lines: the format is decided from the content. A valid file with the
    wrong extension (a wav named .mp3) is therefore accepted.
    """
    _check_request(target_rate, channels)
    _check_size(len(data), limits, filename)
    with _UploadDir() as workdir:
        path = workdir.write(data)
        probe = _probe(path, limits, filename=filename)
        return _decode(path, probe, target_rate=target_rate, channels=channels, limits=limits, filename=filename)


def decode_audio_file(
    path: str | os.PathLike[str],
    *,
    target_rate: int,
    channels: int = 1,
    limits: UploadLimits = UploadLimits(),
) -> Audio:
    """Like :func:`decode_audio_bytes`, for a file on disk (e.g. a saved attachment).

    The file is stat'ed before it is opened (size cap, regular files only), then read with a bound, so a
    file that grows in the meantime, a FIFO or a device cannot make us read without end.
    """
    _check_request(target_rate, channels)
    name = os.path.basename(os.fspath(path))
    try:
        st = os.stat(path)
    except OSError as exc:
        logger.warning("upload %r: cannot stat: %s", name, exc.strerror)
        raise AudioDecodeError(_MSG_UNREADABLE) from None
    if not stat.S_ISREG(st.st_mode):
        logger.warning("upload %r: not a regular file", name)
        raise AudioDecodeError(_MSG_UNREADABLE)
    _check_size(st.st_size, limits, name)
    try:
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise AudioDecodeError(_MSG_UNREADABLE)
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        logger.warning("upload %r: cannot read: %s", name, exc.strerror)
        raise AudioDecodeError(_MSG_UNREADABLE) from None
    return decode_audio_bytes(data, target_rate=target_rate, channels=channels, limits=limits, filename=name)


# ---------------------------------------------------------------------------------------------------------
# Checks and messages


def _check_request(target_rate: int, channels: int) -> None:
    """Caller mistakes (not the user's): plain ValueError."""
    if not isinstance(target_rate, int) or not 1000 <= target_rate <= 384_000:
        raise ValueError(f"target_rate must be an int in [1000, 384000], got {target_rate!r}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels!r}")


def _check_size(size: int, limits: UploadLimits, filename: str | None = None) -> None:
    if size <= 0:
        raise _reject(_MSG_EMPTY, "empty", filename)
    if size > limits.max_bytes:
        got, cap = _fmt_size(size), _fmt_size(limits.max_bytes)
        detail = f"{size} bytes"
        if got == cap:
            raise _reject(f"That file is just over the {cap} limit.", detail, filename)
        raise _reject(f"That file is too large ({got}); the limit is {cap}.", detail, filename)


def _check_duration(duration_s: float, limits: UploadLimits, filename: str | None = None) -> None:
    if duration_s > limits.max_duration_s:
        got = _fmt_duration(math.ceil(duration_s))
        cap = _fmt_duration(math.floor(limits.max_duration_s))
        detail = f"{duration_s:.1f} s claimed"
        raise _reject(f"That audio is too long ({got}); the limit is {cap}.", detail, filename)


def _reject(message: str, detail: str, filename: str | None = None) -> AudioDecodeError:
    logger.info("upload %r rejected: %s (%s)", filename, message, detail)
    return AudioDecodeError(message)


def _fmt_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3)):
        value = n / scale
        if value < 1024 or unit == "GB":
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    raise AssertionError("unreachable")


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h {(s % 3600) // 60} min"
    if s >= 60:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s} s"


# ---------------------------------------------------------------------------------------------------------
# ffprobe / ffmpeg


class _UploadDir:
    """A private temporary directory holding the one file ffmpeg may read; removed on exit, whatever happens."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> _UploadDir:
        self._tmp = tempfile.TemporaryDirectory(prefix="bandmate-upload-", ignore_cleanup_errors=True)
        return self

    def write(self, data: bytes) -> Path:
        assert self._tmp is not None
        path = Path(self._tmp.name) / "upload"  # no user-controlled name, no extension for ffmpeg to guess from
        try:
            path.write_bytes(data)
        except OSError as exc:
            logger.error("cannot write upload to temporary storage: %s", exc.strerror)
            raise AudioDecodeError(_MSG_UNAVAILABLE) from None
        return path

    def __exit__(self, *exc_info: object) -> None:
        assert self._tmp is not None
        self._tmp.cleanup()


def _run(argv: list[str], timeout_s: float, what: str, filename: str | None) -> subprocess.CompletedProcess[bytes]:
    tool = shutil.which(argv[0])
    if tool is None:
        logger.error("%s is not installed; cannot read uploads", argv[0])
        raise AudioDecodeError(_MSG_UNAVAILABLE)
    try:
        return subprocess.run(
            [tool, *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() has already killed and reaped the child
        raise _reject(_MSG_SLOW, f"{what} timed out after {timeout_s:g} s", filename) from None
    except OSError as exc:
        logger.error("cannot run %s: %s", argv[0], exc.strerror)
        raise AudioDecodeError(_MSG_UNAVAILABLE) from None


def _stderr_tail(proc: subprocess.CompletedProcess[bytes], path: Path) -> str:
    text = proc.stderr.decode("utf-8", "replace").replace(str(path), "<upload>").strip()
    return text[-500:] or f"exit status {proc.returncode}"


def _input_args(path: Path, demuxer: str) -> list[str]:
    """Options that confine ffmpeg/ffprobe to one local file and to the given demuxer(s)."""
    return [
        "-max_alloc", str(_MAX_ALLOC_BYTES),
        "-protocol_whitelist", "file",
        "-format_whitelist", demuxer,
        "-i", f"file:{path}",
    ]  # fmt: skip


def _codec_allowed(demuxer: str, codec: str) -> bool:
    if demuxer == "wav":
        return codec.startswith("pcm_")
    return codec in _ALLOWED_CODECS.get(demuxer, frozenset())


def _parse_float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _probe(path: Path, limits: UploadLimits, *, filename: str | None = None) -> ProbeResult:
    argv = [
        "ffprobe", "-hide_banner", "-loglevel", "error",
        *_input_args(path, _FORMAT_WHITELIST),
        "-show_entries", "format=format_name,duration:stream=codec_type,codec_name,sample_rate,channels,duration",
        "-of", "json",
    ]  # fmt: skip
    proc = _run(argv, limits.probe_timeout_s, "probe", filename)
    if proc.returncode != 0:
        raise _reject(_MSG_UNSUPPORTED, f"ffprobe: {_stderr_tail(proc, path)}", filename)
    try:
        info = json.loads(proc.stdout)
        fmt = info.get("format") or {}
        streams = info.get("streams") or []
        demuxer = str(fmt.get("format_name", "")).split(",")[0]
    except (ValueError, AttributeError):
        raise _reject(_MSG_UNSUPPORTED, "unparseable ffprobe output", filename) from None
    if demuxer not in _ALLOWED_CODECS:  # the whitelist should make this impossible; belt and braces
        raise _reject(_MSG_UNSUPPORTED, f"demuxer {demuxer!r}", filename)
    audio = [s for s in streams if isinstance(s, dict) and s.get("codec_type") == "audio"]
    if not audio:
        raise _reject(_MSG_NO_AUDIO, f"{demuxer} with no audio stream", filename)
    stream = audio[0]  # decoding maps 0:a:0, the same stream
    codec = str(stream.get("codec_name", ""))
    if not _codec_allowed(demuxer, codec):
        raise _reject(_MSG_UNSUPPORTED, f"codec {codec!r} in {demuxer}", filename)
    sample_rate = int(_parse_float(stream.get("sample_rate")) or 0)
    channels = int(_parse_float(stream.get("channels")) or 0)
    if not (0 < sample_rate <= _MAX_SOURCE_RATE and 0 < channels <= _MAX_SOURCE_CHANNELS):
        raise _reject(_MSG_DAMAGED, f"{sample_rate} Hz, {channels} channels", filename)
    duration = _parse_float(stream.get("duration"))
    if duration is None:
        duration = _parse_float(fmt.get("duration"))
    if demuxer == "wav":
        _check_wav_length(path, filename)
    result = ProbeResult(demuxer, codec, duration, sample_rate, channels)
    logger.debug("upload %r probed: %s", filename, result)
    if duration is not None:
        _check_duration(duration, limits, filename)
    return result


def _check_wav_length(path: Path, filename: str | None) -> None:
    """Reject a RIFF/WAVE file whose data chunk claims more bytes than the file holds.

    ffmpeg quietly clamps such a length to the file size, so the probe cannot see it. The "unknown length"
    markers that streaming writers use (0 and 0xFFFFFFFF) are allowed: those files decode to what is there.
    RF64/BW64 keep their real sizes elsewhere and are not checked.
    """
    file_size = path.stat().st_size
    with path.open("rb") as fh:
        header = fh.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        byte_rate = 0
        offset = 12
        for _ in range(256):  # a handful of chunks precede "data" in any real file
            fh.seek(offset)
            chunk = fh.read(20)  # chunk header (id, size), then for "fmt ": format, channels, rate, byte rate
            if len(chunk) < 8:
                return
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if chunk_id == b"fmt " and size >= 16 and len(chunk) >= 20:
                byte_rate = int.from_bytes(chunk[16:20], "little")
            elif chunk_id == b"data":
                if size in (0, 0xFFFFFFFF) or byte_rate <= 0:
                    return
                claimed_s = size / byte_rate
                present_s = max(0, file_size - offset - 8) / byte_rate
                if claimed_s - present_s > max(1.0, 0.05 * claimed_s):
                    detail = f"wav data chunk claims {size} bytes, file holds {file_size - offset - 8}"
                    raise _reject(_MSG_DAMAGED, detail, filename)
                return
            offset += 8 + size + (size & 1)
            if offset >= file_size:
                return


def _decode(
    path: Path,
    probe: ProbeResult,
    *,
    target_rate: int,
    channels: int,
    limits: UploadLimits,
    filename: str | None,
) -> Audio:
    # ffmpeg produces at most stereo (its own downmix for surround); mono/stereo mixing is done below.
    out_channels = min(probe.channels, 2)
    decode_s = limits.max_duration_s + _DECODE_MARGIN_S
    max_out_bytes = math.ceil(decode_s * target_rate) * out_channels * 4 + 65536
    argv = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", probe.format,
        *_input_args(path, probe.format),
        "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-t", f"{decode_s:.3f}",
        "-ac", str(out_channels), "-ar", str(target_rate),
        "-f", "f32le", "-fs", str(max_out_bytes),
        "pipe:1",
    ]  # fmt: skip
    proc = _run(argv, limits.decode_timeout_s, "decode", filename)
    if proc.returncode != 0:
        raise _reject(_MSG_DAMAGED, f"ffmpeg: {_stderr_tail(proc, path)}", filename)

    raw = proc.stdout
    frame_bytes = 4 * out_channels
    frames = min(len(raw), max_out_bytes) // frame_bytes
    if frames == 0:
        raise _reject(_MSG_NO_AUDIO, "decoded nothing", filename)
    decoded_s = frames / target_rate
    if decoded_s > limits.max_duration_s + _OVER_CAP_TOLERANCE_S:
        cap = _fmt_duration(math.floor(limits.max_duration_s))
        raise _reject(f"That audio is too long (over {cap}); the limit is {cap}.", "decoded past the cap", filename)
    if probe.duration_s is not None:
        shortfall = probe.duration_s - decoded_s
        if shortfall > max(1.0, 0.05 * probe.duration_s):
            raise _reject(_MSG_DAMAGED, f"decoded {decoded_s:.2f} s of {probe.duration_s:.2f} s claimed", filename)

    frames = min(frames, math.floor(limits.max_duration_s * target_rate))
    samples = np.frombuffer(raw, dtype="<f4", count=frames * out_channels).reshape(frames, out_channels).T
    if channels == 1 and out_channels == 2:
        samples = samples.mean(axis=0, keepdims=True)
    elif channels == 2 and out_channels == 1:
        samples = np.repeat(samples, 2, axis=0)
    # A float WAV may carry NaN/inf, and lossy decoders overshoot slightly: keep the [-1, 1] promise.
    samples = np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    logger.info(
        "upload %r decoded: %s/%s, %.2f s, %d Hz x%d -> %d Hz x%d",
        filename, probe.format, probe.codec, decoded_s, probe.sample_rate, probe.channels, target_rate, channels,
    )  # fmt: skip
    return Audio(samples=samples, sample_rate=target_rate)

"""`/verify`, a reply `verify`, the console's `verify FILE`: what a file's Content Credentials say, as markup.

Why in the core: every transport asks the same question of a file and gets the same answer. The answer says who
signed it (this server's Bandmate, another signer, nobody), the model, the operation and the date, the lineage as
track ids this server knows, whether the audio changed after signing, and the watermark when it is on. Nothing in
it names a person: manifests Bandmate writes hold no user, and a foreign file's own words (its signer's name, its
model) are shown as user text, never as markup.

Hostile input is answered, never crashes: the size is checked before anything is downloaded (`check_size`), and
the check itself is bounded (generation/verification.py reads no file over its limit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from pathlib import Path

from bot.request import Refusal, Upload
from bot.text import user
from bot.words import short
from generation.jobs import Job, TrackRecord
from generation.verification import MAX_VERIFY_BYTES, CredentialStatus, VerificationReport

log = logging.getLogger(__name__)

_SUFFIXES = {".mp3", ".flac", ".wav", ".m4a", ".ogg", ".opus", ".aac", ".bin"}

_VERDICT = {
    CredentialStatus.TRUSTED: "✅ **Made by this server's Bandmate.** The audio is unchanged since it was signed.",
    CredentialStatus.UNTRUSTED: "☑️ **Signed by another signer**, not this server's Bandmate. The signature is valid.",
    CredentialStatus.ALTERED: "⚠️ **Altered after signing**: the audio no longer matches its Content Credentials.",
    CredentialStatus.INVALID: "⚠️ **Damaged Content Credentials**: the manifest in this file does not validate.",
    CredentialStatus.NO_CREDENTIALS: "❔ **No Content Credentials** in this file.",
    CredentialStatus.NOT_AUDIO: "❔ That isn't an audio file I can check (MP3, FLAC, WAV or M4A).",
    CredentialStatus.TOO_LARGE: "❔ That file is too large to check.",
    CredentialStatus.UNREADABLE: "❔ I couldn't read that file.",
}


_MENTION = re.compile(r"<@!?\d+>")


def is_verify_request(text: str) -> bool:
    """A message that asks to verify: `verify` alone (a mention of the bot around it is fine)."""
    return _MENTION.sub("", text or "").strip().strip("!.?").lower() == "verify"


class CredentialService:
    """Verifies files against this server's chain, and re-signs refit copies of tracks (upload fitting).

    `credentials` is generation.credentials.ContentCredentials, `signer` generation.track_signing.TrackSigner,
    `store` the job store (to tell which lineage ids this server knows), `watermark` the optional detector.
    """

    def __init__(self, credentials, signer, store, *, watermark=None, max_bytes: int = MAX_VERIFY_BYTES) -> None:
        self.credentials = credentials
        self.signer = signer
        self.store = store
        self.watermark = watermark
        self.max_bytes = min(max_bytes, MAX_VERIFY_BYTES)

    # -- verifying ----------------------------------------------------------------------------------------

    def check_size(self, size: int) -> None:
        """Before downloading an attachment: refuse one over the limit, by its announced size."""
        if size > self.max_bytes:
            raise Refusal(f"That file is {size / 2**20:.1f} MB; I check files up to {self.max_bytes / 2**20:.0f} MB.")
        if size <= 0:
            raise Refusal("That file is empty.")

    async def report(self, path: Path | str) -> VerificationReport:
        return await asyncio.to_thread(self.credentials.verify, Path(path), watermark=self.watermark)

    async def verify_path(self, path: Path | str) -> str:
        """A file on this machine (the console's `verify FILE`)."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise Refusal(f"I can't read {user(path.name)}: {error.strerror or 'no such file'}.") from None
        self.check_size(size)
        return await self.answer(await self.report(path))

    async def verify_upload(self, upload: Upload) -> str:
        """An attachment's bytes: written to a private temporary file (c2pa reads files), checked, removed."""
        self.check_size(len(upload.data))
        suffix = Path(upload.filename).suffix.lower()
        suffix = suffix if suffix in _SUFFIXES else ".bin"  # the format is sniffed from the bytes anyway
        fd, name = tempfile.mkstemp(prefix="bandmate-verify-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                await asyncio.to_thread(out.write, upload.data)
            return await self.answer(await self.report(name))
        finally:
            os.unlink(name)

    async def own_track_id(self, upload: Upload) -> str | None:
        """The track id of an upload this server's Bandmate signed (unaltered) and still knows, else None."""
        if not 0 < len(upload.data) <= self.max_bytes:
            return None
        fd, name = tempfile.mkstemp(prefix="bandmate-verify-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as out:
                await asyncio.to_thread(out.write, upload.data)
            report = await asyncio.to_thread(self.credentials.verify, Path(name))
        finally:
            os.unlink(name)
        if not report.trusted or not report.track_id:
            return None
        return report.track_id if await self.store.get_track(report.track_id) is not None else None

    async def known_tracks(self, ids: list[str]) -> list[str]:
        known = []
        for track_id in ids[:50]:
            if track_id and track_id not in known and await self.store.get_track(track_id) is not None:
                known.append(track_id)
        return known

    async def answer(self, report: VerificationReport) -> str:
        lines = [_VERDICT.get(report.status, report.message)]
        if report.signed or report.altered:
            if report.signer and report.status is CredentialStatus.UNTRUSTED:  # a certificate's name, not a person
                lines.append(f"• Signer: {user(short(report.signer, 80))}")
            if report.model:
                licence = f" ({user(short(report.model_license, 40))})" if report.model_license else ""
                lines.append(f"• Model: {user(short(report.model, 100))}{licence}")
            if report.operation:
                lines.append(f"• Operation: {user(short(report.operation, 30))}")
            if report.created:
                lines.append(f"• Made: {user(short(report.created, 40))}")
            known = await self.known_tracks([report.track_id or ""])
            if known:
                lines.append(f"• Track: `{known[0]}`")
            if report.lineage:
                ancestors = await self.known_tracks(report.lineage)
                if ancestors:
                    lines.append("• Lineage: " + " ← ".join(f"`{t}`" for t in ancestors))
                unknown = len(set(report.lineage)) - len(ancestors)
                if unknown > 0:
                    lines.append(f"• {unknown} earlier track{'s' if unknown != 1 else ''} this server doesn't know")
            lines.append("• Altered after signing: " + ("yes" if report.altered else "no"))
        mark = report.watermark
        if mark is not None:
            if not mark.checked:
                lines.append("• Watermark: not checked")
            elif mark.detected:
                lines.append("• Watermark: found, " + ("this server's" if mark.matches_server else "another server's"))
            else:
                lines.append("• Watermark: none found")
        return "\n".join(lines)

    # -- re-signing refit copies (bot/upload_fit.py) -------------------------------------------------------

    def headroom(self, track: TrackRecord) -> int:
        return self.signer.headroom(track)

    def resign(self, track: TrackRecord, job: Job | None, path: Path) -> None:
        self.signer.sign_copy(track, job, path)

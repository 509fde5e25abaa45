"""Content Credentials (C2PA) on every file Bandmate hands out, and the check anyone can run on a file.

Why: ID3 tags saying "AI-generated" are a claim anyone can write or strip. A C2PA manifest is signed: it says which
model made the track, by which operation, from which parent tracks (their signed manifests travel along as
ingredients, so the lineage itself verifies), and any change to the audio afterwards shows as "altered".

What a manifest holds: a `c2pa.created` action with digitalSourceType trainedAlgorithmicMedia, the model id and
licence, the software and version, the operation, the track id, the creation time, the prompt only when the caller
allows it, and the parents as ingredients. It never holds a user id or name: `Credential` has no field for one.

Order matters: signing must be the very last change to a file. The manifest covers every byte outside itself, so
tagging, re-encoding or a bitrate refit after signing leaves a file that verifies as altered (or, when the tool drops
the ID3 tag, as having no credentials). A re-encoded file must be signed again.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import c2pa
from mutagen.id3 import ID3

from generation import __version__
from generation.audio_format import WAV, audio_format
from generation.signing_keys import SigningChain, load_trust_anchors, signing_chain
from generation.verification import (
    MAX_VERIFY_BYTES,
    TRACK_ASSERTION,
    VerificationReport,
    WatermarkDetector,
    detect_watermark,
    reader_settings,
    verify_file,
    with_watermark,
)

log = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
OPERATIONS = frozenset({"compose", "variation", "continue", "extend", "remix", "song", "cover", "replace", "more_like",
                        "stems", "add_part"})
# How a parent went into its child: its audio is inside the child, or it was the model's input.
_CONTAINS_PARENT = frozenset({"continue", "extend", "replace", "song", "add_part"})
# Bytes a manifest adds to a file besides its parents' manifests (measured ~3.5 KB; a margin for long prompts).
BASE_MANIFEST_HEADROOM_BYTES = 8 * 1024
INGREDIENT_HEADROOM_BYTES = 4 * 1024  # the ingredient assertion that points at a parent's manifest
PROMPT_MAX_CHARS = 2000
KEY_DIR_NAME = "c2pa"  # the signing chain's folder under the data directory (backups carry it; exports never)


class CredentialError(RuntimeError):
    """Signing failed; the message is for the operator and holds no key material."""


@dataclass(frozen=True)
class Credential:
    """What goes into one file's manifest. Deliberately has no user, guild or channel field."""

    track_id: str
    model_id: str
    model_license: str
    operation: str  # one of OPERATIONS (a str Enum member works too)
    created_at: datetime.datetime
    software: str = f"bandmate {__version__}"
    prompt: str | None = None  # written only when `sign(..., include_prompt=True)`
    parent_files: tuple[Path, ...] = field(default_factory=tuple)  # the parents' signed files, in order

    def __post_init__(self) -> None:
        operation = str(getattr(self.operation, "value", self.operation))
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}")
        object.__setattr__(self, "operation", operation)
        if not self.track_id or not self.model_id:
            raise ValueError("a credential needs a track id and a model id")
        created = self.created_at
        if created.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        object.__setattr__(self, "created_at", created.astimezone(datetime.timezone.utc))
        object.__setattr__(self, "parent_files", tuple(Path(p) for p in self.parent_files))


@dataclass(frozen=True)
class SignedFile:
    path: Path
    bytes_added: int  # how much the file grew


def _track_assertion(credential: Credential, include_prompt: bool) -> dict:
    data = {
        "track_id": credential.track_id,
        "operation": credential.operation,
        "model_id": credential.model_id,
        "model_license": credential.model_license,
        "software": credential.software,
        "created": credential.created_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if include_prompt and credential.prompt:
        data["prompt"] = credential.prompt[:PROMPT_MAX_CHARS]
    return data


def build_manifest(credential: Credential, title: str, *, include_prompt: bool) -> dict:
    """The manifest definition c2pa's Builder takes (ingredients are added separately, from the parent files)."""
    name, _, version = credential.software.partition(" ")
    return {
        "claim_generator_info": [{"name": name or "bandmate", "version": version or __version__}],
        "title": title,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": {"name": name or "bandmate", "version": version or __version__},
                            "when": _track_assertion(credential, False)["created"],
                            "parameters": {
                                "org.bandmate.operation": credential.operation,
                                "org.bandmate.model": credential.model_id,
                                "org.bandmate.model_license": credential.model_license,
                            },
                        }
                    ]
                },
            },
            {"label": TRACK_ASSERTION, "data": _track_assertion(credential, include_prompt)},
        ],
    }


def embedded_manifest_bytes(path: Path | str) -> int:
    """Size of the C2PA manifest store in `path`'s ID3 tag (MP3 and FLAC keep it there); 0 without one."""
    try:
        tags = ID3(path)
    except Exception:  # mutagen raises several kinds (ID3NoHeaderError, MutagenError, OSError) on non-ID3 files
        return 0
    return sum(len(frame.data) for frame in tags.getall("GEOB") if frame.mime == "application/c2pa")


def headroom_bytes(credential: Credential) -> int:
    """How many bytes signing may add to a file for `credential`: keep this free when fitting an upload limit.

    Parents' manifests are embedded in the child (that is what makes the lineage verifiable), so a long chain of
    continuations grows by each ancestor's manifest.
    """
    parents = sum(embedded_manifest_bytes(p) + INGREDIENT_HEADROOM_BYTES for p in credential.parent_files)
    return BASE_MANIFEST_HEADROOM_BYTES + parents


class ContentCredentials:
    """Signs files with this server's chain (or the operator's) and verifies any file against it.

    `key_dir` holds the chain Bandmate makes for itself (under the data directory); `cert_path`/`key_path` are the
    operator's BANDMATE_C2PA_CERT/BANDMATE_C2PA_KEY, passed in by the caller. `extra_trust_anchors_pem` adds CAs
    whose files also count as this server's (for example the previous chain after a switch to an operator cert).
    Thread-safe: one lock around the native calls.
    """

    def __init__(
        self,
        key_dir: Path | str,
        *,
        cert_path: Path | str | None = None,
        key_path: Path | str | None = None,
        extra_trust_anchors_pem: bytes = b"",
        max_verify_bytes: int = MAX_VERIFY_BYTES,
    ) -> None:
        self.chain: SigningChain = signing_chain(key_dir, cert_path, key_path)
        self.trust_anchors_pem = self.chain.trust_anchor_pem + extra_trust_anchors_pem
        self.max_verify_bytes = max_verify_bytes
        self._lock = threading.RLock()
        self._context = c2pa.Context.from_dict(self._settings())
        log.info("Content Credentials signer: %s (%s), valid until %s", self.chain.signer_name,
                 self.chain.algorithm, self.chain.not_after.date())  # fmt: skip

    def _settings(self) -> dict:
        settings = reader_settings(self.trust_anchors_pem)
        settings["builder"] = {"thumbnail": {"enabled": False}}
        return settings

    def _signer(self) -> c2pa.Signer:
        info = c2pa.C2paSignerInfo(self.chain.algorithm, self.chain.chain_pem, self.chain.private_key_pem(), None)
        try:
            return c2pa.Signer.from_info(info)
        except c2pa.C2paError as exc:
            raise CredentialError(f"c2pa refused the signing certificate {self.chain.signer_name!r}: {exc}") from None
        finally:
            del info

    def check(self) -> None:
        """Sign a tiny WAV in memory: call at start-up so a bad certificate fails there, with a clear message."""
        import io

        import numpy as np
        import soundfile

        wav = io.BytesIO()
        soundfile.write(wav, np.zeros(800, dtype=np.float32), 8000, format="WAV", subtype="PCM_16")
        probe = Credential("startup-check", "none", "none", "compose", datetime.datetime.now(datetime.timezone.utc))
        with self._lock:
            builder = c2pa.Builder.from_json(build_manifest(probe, "check.wav", include_prompt=False), self._context)
            with builder, self._signer() as signer:
                try:
                    builder.sign(signer, WAV, io.BytesIO(wav.getvalue()), io.BytesIO())
                except c2pa.C2paError as exc:
                    raise CredentialError(f"cannot sign with {self.chain.signer_name!r}: {exc}") from None

    def sign(self, path: Path | str, credential: Credential, *, include_prompt: bool) -> SignedFile:
        """Embed a signed manifest for `credential` in the MP3/FLAC/WAV at `path`, atomically (temp file + rename).

        Call it after every other change to the file (tags, chapters, bitrate refit). An existing manifest in the
        file is replaced. `include_prompt` is the server's "share prompts" setting.
        """
        path = Path(path)
        fmt = audio_format(path)
        if fmt is None:
            raise ValueError(f"{path.name} is not an audio file c2pa can sign (MP3, FLAC, WAV or M4A)")
        before = path.stat()
        manifest = build_manifest(credential, path.name, include_prompt=include_prompt)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w+b") as out:
                with self._lock:
                    self._sign_into(manifest, credential.parent_files, fmt, path, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp_name, stat.S_IMODE(before.st_mode))
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        added = path.stat().st_size - before.st_size
        log.debug("signed %s (%s, +%d bytes)", path.name, credential.operation, added)
        return SignedFile(path=path, bytes_added=added)

    def _sign_into(self, manifest: dict, parents: tuple[Path, ...], fmt: str, source: Path, out) -> None:
        operation = manifest["assertions"][1]["data"]["operation"]
        relationship = "componentOf" if operation in _CONTAINS_PARENT else "inputTo"
        builder = c2pa.Builder.from_json(manifest, self._context)
        with builder:
            for parent in parents:
                parent_fmt = audio_format(parent) if parent.is_file() else None
                if parent_fmt is None:
                    raise ValueError(f"parent file {parent} is missing or not audio")
                title = self.verify(parent).track_id or parent.name
                with open(parent, "rb") as handle:
                    builder.add_ingredient({"title": title, "relationship": relationship}, parent_fmt, handle)
            with self._signer() as signer, open(source, "rb") as src:
                try:
                    builder.sign(signer, fmt, src, out)
                except c2pa.C2paError as exc:
                    raise CredentialError(f"signing {source.name} failed: {exc}") from None

    def verify(self, path: Path | str, *, watermark: WatermarkDetector | None = None) -> VerificationReport:
        """What `path`'s credentials say, with this server's chain as the trusted one. Never raises for bad input.

        One c2pa check at a time (memory); the watermark, which may take seconds, is detected outside the lock.
        """
        with self._lock:
            report = verify_file(path, self.trust_anchors_pem, max_bytes=self.max_verify_bytes, context=self._context)
        if watermark is None or report.format is None:  # nothing to decode: not audio, too large, unreadable
            return report
        return with_watermark(report, detect_watermark(watermark, Path(path)))

    def close(self) -> None:
        self._context.close()


def verify_with_key_dir(
    path: Path | str,
    key_dir: Path | str,
    *,
    cert_path: Path | str | None = None,
    watermark: WatermarkDetector | None = None,
    max_bytes: int = MAX_VERIFY_BYTES,
) -> VerificationReport:
    """For `bot.py verify`: check a file against the chain under `key_dir` without making one if there is none."""
    return verify_file(path, load_trust_anchors(key_dir, cert_path), max_bytes=max_bytes, watermark=watermark)

"""What a file's Content Credentials say: made by this server, by another signer, altered, or nothing at all.

Why a report and never an exception: `/verify` and `bot.py verify` take files from anyone. Every input, hostile or
not, gets a `VerificationReport` with a one-line message for people and the same fields as JSON for machines (the
JSON keys are a contract). Size and container are checked before c2pa sees a byte (c2pa holds a file in memory while
it checks it, so MAX_VERIFY_BYTES bounds the memory), and c2pa fetches nothing from the network (no remote manifests,
no OCSP). `ContentCredentials.verify` runs one check at a time, so concurrent checks cannot add up.
"""

from __future__ import annotations

import json
import logging
import stat
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import c2pa

from generation.audio_format import audio_format

if TYPE_CHECKING:
    from generation.watermark import WatermarkReport

log = logging.getLogger(__name__)

# Past this size a file is refused unread. c2pa holds the whole file in memory while it checks it (measured: +110 MB
# for a 100 MB file, 0.55 s), so this limit is what bounds a check's memory (and its time, to about 0.7 s). 128 MiB is
# ten minutes of 48 kHz 24-bit stereo FLAC, and more than any Discord attachment of a normal server.
MAX_VERIFY_BYTES = 128 * 1024 * 1024
TRACK_ASSERTION = "org.bandmate.track"
# Lineage is walked breadth-first through the manifests embedded as ingredients, at most this many.
MAX_LINEAGE = 256


class CredentialStatus(str, Enum):
    TRUSTED = "trusted"  # signed by this server's chain, audio unchanged
    UNTRUSTED = "untrusted"  # a valid signature from another signer
    ALTERED = "altered"  # signed, but the audio (or the manifest) changed after signing
    INVALID = "invalid"  # a manifest is there but is damaged or fails validation for another reason
    NO_CREDENTIALS = "no_credentials"
    NOT_AUDIO = "not_audio"
    TOO_LARGE = "too_large"
    UNREADABLE = "unreadable"


class WatermarkDetector(Protocol):
    def detect_file(self, path: Path) -> "WatermarkReport": ...


@dataclass(frozen=True)
class VerificationReport:
    """One file's verdict. Never names a person: manifests Bandmate writes hold none, and nothing else is read."""

    status: CredentialStatus
    message: str
    signed: bool = False  # a manifest whose signature validates
    trusted: bool = False  # ... by this server's own chain, over unchanged audio
    altered: bool = False  # the manifest's hashes no longer match the file
    signer: str | None = None  # the signing certificate's common name
    issuer: str | None = None  # the organisation that issued it
    model: str | None = None
    model_license: str | None = None
    operation: str | None = None
    created: str | None = None  # ISO 8601
    track_id: str | None = None
    parents: list[str] = field(default_factory=list)  # track ids (or titles) of the direct ingredients
    lineage: list[str] = field(default_factory=list)  # every ancestor in the embedded manifests, nearest first
    software: str | None = None
    prompt: str | None = None
    format: str | None = None
    problems: list[str] = field(default_factory=list)  # c2pa validation failure codes
    watermark: "WatermarkReport | None" = None  # None: not checked

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["watermark"] = self.watermark.to_dict() if self.watermark is not None else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @property
    def exit_code(self) -> int:
        """`bot.py verify`'s contract: 0 for a trusted file, 1 for anything else."""
        return 0 if self.trusted else 1

    def lines(self) -> list[str]:
        """The answer for people (`/verify`, `bot.py verify` without --json): the verdict, then what is known."""
        out = [self.message]
        if self.signed or self.altered:
            model = f"{self.model} ({self.model_license})" if self.model and self.model_license else self.model
            signer = f"{self.signer}, issued by {self.issuer}" if self.signer and self.issuer else self.signer
            facts = [("Track", self.track_id), ("Model", model), ("Operation", self.operation),
                     ("Created", self.created), ("Software", self.software), ("Signer", signer)]  # fmt: skip
            out += [f"{name}: {value}" for name, value in facts if value]
            if self.lineage:
                out.append("Lineage: " + " <- ".join([self.track_id or "this file", *self.lineage]))
        if self.watermark is not None:
            mark = self.watermark
            if not mark.checked:
                out.append(f"Watermark: not checked ({mark.error})")
            elif mark.detected:
                whose = "this server's" if mark.matches_server else f"another server's (message {mark.message})"
                out.append(f"Watermark: found, {whose}")
            else:
                out.append("Watermark: none found")
        return out


def reader_settings(trust_anchors_pem: bytes) -> dict[str, Any]:
    """c2pa settings: only these anchors count, and nothing is fetched over the network."""
    settings: dict[str, Any] = {
        "verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    if trust_anchors_pem.strip():
        settings["trust"] = {"trust_anchors": trust_anchors_pem.decode("ascii")}
    return settings


# --- reading a manifest store -------------------------------------------------------------------------------------


def _assertion(manifest: dict, label: str) -> dict | None:
    for assertion in manifest.get("assertions") or []:
        if isinstance(assertion, dict) and assertion.get("label") == label and isinstance(assertion.get("data"), dict):
            return assertion["data"]
    return None


def _first_action(manifest: dict) -> dict:
    for label in ("c2pa.actions.v2", "c2pa.actions"):
        actions = (_assertion(manifest, label) or {}).get("actions") or []
        if actions and isinstance(actions[0], dict):
            return actions[0]
    return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _ingredient_ids(manifests: dict, manifest: dict) -> list[tuple[str, str | None]]:
    """(name, manifest label) per ingredient: the name is its Bandmate track id when its manifest has one."""
    out = []
    for ingredient in manifest.get("ingredients") or []:
        if not isinstance(ingredient, dict):
            continue
        label = _str(ingredient.get("active_manifest"))
        parent = manifests.get(label) if label else None
        track = _assertion(parent, TRACK_ASSERTION) if isinstance(parent, dict) else None
        name = _str((track or {}).get("track_id")) or _str(ingredient.get("title")) or "unknown"
        out.append((name, label))
    return out


def _lineage(manifests: dict, active: dict) -> list[str]:
    seen_labels: set[str] = set()
    names: list[str] = []
    queue = deque(_ingredient_ids(manifests, active))
    while queue and len(names) < MAX_LINEAGE:
        name, label = queue.popleft()
        if label is not None:
            if label in seen_labels:
                continue
            seen_labels.add(label)
        if name not in names:
            names.append(name)
        parent = manifests.get(label) if label else None
        if isinstance(parent, dict):
            queue.extend(_ingredient_ids(manifests, parent))
    return names


def _codes(results: dict | None, kind: str) -> list[str]:
    entries = ((results or {}).get("activeManifest") or {}).get(kind) or []
    return [str(e.get("code")) for e in entries if isinstance(e, dict) and e.get("code")]


def _is_altered_code(code: str) -> bool:
    return code.endswith(".mismatch") or code in ("assertion.dataHash.mismatch", "claimSignature.mismatch")


def _issuer_subjects(trust_anchors_pem: bytes) -> list[dict[str, str]]:
    """CN/O of each anchor, to check the leaf's issuer against: trust means *our* anchors, whatever c2pa ships."""
    if not trust_anchors_pem.strip():
        return []
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subjects = []
    for cert in x509.load_pem_x509_certificates(trust_anchors_pem):
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        subjects.append({"CN": str(cn[0].value) if cn else "", "O": str(org[0].value) if org else ""})
    return subjects


def _leaf_issuer(reader: c2pa.Reader) -> dict[str, str]:
    try:
        cr = json.loads(reader.crjson())
    except (c2pa.C2paError, ValueError):
        return {}
    manifests = cr.get("manifests") or []
    active = manifests[0] if manifests and isinstance(manifests[0], dict) else {}
    issuer = ((active.get("signature") or {}).get("certificateInfo") or {}).get("issuer") or {}
    return {k: str(v) for k, v in issuer.items()} if isinstance(issuer, dict) else {}


# --- the verdict --------------------------------------------------------------------------------------------------


def _summary(status: CredentialStatus, signer: str | None, model: str | None, operation: str | None,
             created: str | None) -> str:  # fmt: skip
    what = ", ".join(x for x in (operation, (created or "")[:10]) if x)
    made = f" with {model}" + (f" ({what})" if what else "") if model else ""
    return {
        CredentialStatus.TRUSTED: f"Made by this server's Bandmate{made}.",
        CredentialStatus.UNTRUSTED: f"Validly signed by {signer or 'an unknown signer'}, which is not this server"
        + (f"; it says: made{made}." if made else "."),
        CredentialStatus.ALTERED: f"Signed by {signer or 'an unknown signer'}, but the file was changed after "
        "signing: its credentials no longer match.",
        CredentialStatus.INVALID: "The file's Content Credentials are damaged and cannot be checked.",
    }[status]


def _plain(status: CredentialStatus, message: str, fmt: str | None = None, **extra: Any) -> VerificationReport:
    return VerificationReport(status=status, message=message, format=fmt, **extra)


def verify_file(
    path: Path | str,
    trust_anchors_pem: bytes,
    *,
    max_bytes: int = MAX_VERIFY_BYTES,
    watermark: WatermarkDetector | None = None,
    context: c2pa.Context | None = None,
) -> VerificationReport:
    """Check `path`'s Content Credentials against `trust_anchors_pem` (this server's CA). Never raises for bad input.

    `watermark`, when given, is also asked about the audio (a stripped file can still carry the watermark).
    `context` reuses a c2pa Context built from `reader_settings(trust_anchors_pem)`.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        return _plain(CredentialStatus.UNREADABLE, f"The file cannot be read ({exc.strerror}).")
    if not stat.S_ISREG(info.st_mode):
        return _plain(CredentialStatus.UNREADABLE, "That is not a regular file.")
    if info.st_size > max_bytes:
        return _plain(
            CredentialStatus.TOO_LARGE,
            f"The file is too large to check ({info.st_size / 2**20:.0f} MiB; "
            f"the limit is {max_bytes / 2**20:.0f} MiB).",
        )
    try:
        fmt = audio_format(path)
    except OSError as exc:
        return _plain(CredentialStatus.UNREADABLE, f"The file cannot be read ({exc.strerror}).")
    if fmt is None:
        return _plain(CredentialStatus.NOT_AUDIO, "This is not an audio file Bandmate can check (MP3, FLAC, WAV, M4A).")

    own = context is None
    ctx = context if context is not None else c2pa.Context.from_dict(reader_settings(trust_anchors_pem))
    try:
        report = _verify_stream(path, fmt, ctx, trust_anchors_pem)
    finally:
        if own:
            ctx.close()
    if watermark is None or report.format is None:
        return report
    return with_watermark(report, detect_watermark(watermark, path))


def with_watermark(report: VerificationReport, mark: "WatermarkReport | None") -> VerificationReport:
    """`report` with the watermark verdict added (and said in the message when there are no credentials)."""
    if mark is None or report.format is None:  # not audio, too large or unreadable: nothing was decoded
        return report
    message = report.message
    if report.status is CredentialStatus.NO_CREDENTIALS and mark.detected:
        whose = "this server's" if mark.matches_server else "an AudioSeal"
        message = f"This file has no Content Credentials, but it carries {whose} watermark."
    return replace(report, watermark=mark, message=message)


def detect_watermark(detector: WatermarkDetector | None, path: Path) -> "WatermarkReport | None":
    """The detector's verdict on `path` (None without a detector); a decoding failure becomes an unchecked report.

    Call it only for files that passed the size and format checks (`report.format` is set).
    """
    if detector is None:
        return None
    try:
        return detector.detect_file(path)
    except Exception as exc:  # a decoder failing on a hostile file must not stop the credentials answer
        from generation.watermark import WatermarkReport

        log.info("watermark detection failed on %s: %s", path.name, exc)
        return WatermarkReport(checked=False, detected=False, error=f"could not decode the audio: {exc}")


def _verify_stream(path: Path, fmt: str, ctx: c2pa.Context, trust_anchors_pem: bytes) -> VerificationReport:
    try:
        with open(path, "rb") as handle, c2pa.Reader(fmt, handle, context=ctx) as reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
            results = reader.get_validation_results()
            issuer = _leaf_issuer(reader)
    except c2pa.C2paError.ManifestNotFound:
        return _plain(CredentialStatus.NO_CREDENTIALS, "This file has no Content Credentials.", fmt)
    except c2pa.C2paError as exc:
        kind = type(exc).__name__.lstrip("_").removeprefix("C2pa") or "Error"
        log.info("unreadable credentials in %s: %s", path.name, kind)
        return _plain(CredentialStatus.INVALID, _summary(CredentialStatus.INVALID, None, None, None, None), fmt,
                      problems=[kind])  # fmt: skip
    except (OSError, ValueError) as exc:
        return _plain(CredentialStatus.UNREADABLE, f"The file cannot be read ({exc}).", fmt)

    manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
    active = manifests.get(store.get("active_manifest")) or {}
    failures = _codes(results, "failure")
    successes = _codes(results, "success")
    altered = any(_is_altered_code(c) for c in failures)
    signed = "claimSignature.validated" in successes and "claimSignature.mismatch" not in failures
    ours = issuer and any(issuer.get("CN") == s["CN"] and issuer.get("O") == s["O"]
                          for s in _issuer_subjects(trust_anchors_pem))  # fmt: skip
    trusted = state == "Trusted" and signed and not altered and bool(ours)
    if trusted:
        status = CredentialStatus.TRUSTED
    elif altered:
        status = CredentialStatus.ALTERED
    elif signed and (state in ("Valid", "Trusted") or set(failures) <= {"signingCredential.untrusted"}):
        status = CredentialStatus.UNTRUSTED
    else:
        status = CredentialStatus.INVALID

    signature = active.get("signature_info") or {}
    track = _assertion(active, TRACK_ASSERTION) or {}
    action = _first_action(active)
    agent = action.get("softwareAgent")
    generator = (active.get("claim_generator_info") or [{}])[0]
    signer = _str(signature.get("common_name"))
    model = _str(track.get("model_id"))
    operation = _str(track.get("operation")) or _str(action.get("action"))
    created = _str(track.get("created")) or _str(action.get("when"))
    return VerificationReport(
        status=status,
        message=_summary(status, signer, model, operation, created),
        signed=signed,
        trusted=trusted,
        altered=altered,
        signer=signer,
        issuer=_str(signature.get("issuer")),
        model=model,
        model_license=_str(track.get("model_license")),
        operation=operation,
        created=created,
        track_id=_str(track.get("track_id")),
        parents=[name for name, _ in _ingredient_ids(manifests, active)],
        lineage=_lineage(manifests, active),
        software=_str(track.get("software"))
        or (_str(agent.get("name")) if isinstance(agent, dict) else _str(agent))
        or (_str(generator.get("name")) if isinstance(generator, dict) else None),
        prompt=_str(track.get("prompt")),
        format=fmt,
        problems=failures,
    )

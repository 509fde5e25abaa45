"""Content Credentials against the real tools: c2pa-python, cryptography, ffmpeg, mutagen, the project's encoders."""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mutagen.id3 import GEOB, ID3

from generation.audio_format import FLAC, MP3, audio_format
from generation.credentials import (
    OPERATIONS,
    ContentCredentials,
    Credential,
    build_manifest,
    headroom_bytes,
    verify_with_key_dir,
)
from generation.postprocess import (
    Provenance,
    add_chapters,
    encode_mp3,
    read_provenance,
    render_track,
    tag_mp3,
    write_atomic,
)
from generation.signing_keys import CA_KEY_FILE, SIGNER_KEY_FILE, KEY_FILE_MODE, SigningKeyError, load_or_create_chain
from generation.types import Audio
from generation.verification import MAX_VERIFY_BYTES, CredentialStatus

ROOT = Path(__file__).resolve().parent.parent
SR = 32000
MODEL = "facebook/musicgen-small"
LICENSE = "CC-BY-NC-4.0"
USER_ID = "123456789012345678"  # a Discord snowflake that must never reach a file
USER_NAME = "dj_secret_name"
PROMPT = "dusty lofi beat with vinyl crackle"
NOW = datetime.datetime(2026, 12, 1, 9, 30, tzinfo=datetime.timezone.utc)
CONTRACT_KEYS = {"signed", "trusted", "altered", "signer", "model", "operation", "created", "parents", "watermark"}


def sine(seconds: float, freq: float = 440.0, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.tile(0.2 * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32)


def credential(track_id: str, operation: str = "compose", parents: tuple[Path, ...] = (), prompt: str | None = PROMPT):
    return Credential(track_id=track_id, model_id=MODEL, model_license=LICENSE, operation=operation,
                      created_at=NOW, prompt=prompt, parent_files=parents)  # fmt: skip


def plain_mp3(path: Path, seconds: float = 1.0, freq: float = 440.0) -> Path:
    return write_atomic(path, encode_mp3(sine(seconds, freq), SR))


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys") / "c2pa"


@pytest.fixture(scope="module")
def creds(keys_dir) -> ContentCredentials:
    return ContentCredentials(keys_dir)


@pytest.fixture
def rendered(tmp_path):
    """A real render (FLAC master + tagged MP3) of 2 s of stereo sine, through generation/postprocess.py."""
    provenance = Provenance(track_id="trk_parent", prompt=PROMPT, seed=7, model_id=MODEL, model_license=LICENSE,
                            params={"duration_s": 2.0})  # fmt: skip
    return render_track(Audio(sine(2.0), SR), provenance, tmp_path, "trk_parent")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


# --- signing and verifying ----------------------------------------------------------------------------------------


def test_rendered_mp3_and_flac_verify_as_trusted(creds, rendered) -> None:
    before = soundfile.read(rendered.flac, dtype="float32")[0]
    tags = read_provenance(rendered.mp3)
    for path in (rendered.mp3, rendered.flac):
        signed = creds.sign(path, credential("trk_parent"), include_prompt=True)
        assert 1000 < signed.bytes_added < 8192
    for path, fmt in ((rendered.mp3, MP3), (rendered.flac, FLAC)):
        report = creds.verify(path)
        assert report.status is CredentialStatus.TRUSTED, report
        assert (report.signed, report.trusted, report.altered) == (True, True, False)
        assert report.format == fmt
        assert report.model == MODEL and report.model_license == LICENSE
        assert report.operation == "compose" and report.track_id == "trk_parent"
        assert report.created == "2026-12-01T09:30:00Z"
        assert report.software.startswith("bandmate ")
        assert report.signer == creds.chain.signer_name
        assert report.parents == [] and report.problems == []
    # Signing keeps the audio and the tags: the master decodes to the same samples, the MP3 keeps its TXXX frames.
    assert np.array_equal(soundfile.read(rendered.flac, dtype="float32")[0], before)
    assert read_provenance(rendered.mp3) == tags
    assert stat.S_IMODE(rendered.mp3.stat().st_mode) == 0o644
    assert leftovers(rendered.mp3.parent) == []


def test_manifest_says_ai_generated_with_model_and_software(creds, tmp_path) -> None:
    manifest = build_manifest(credential("t1"), "t1.mp3", include_prompt=False)
    action = manifest["assertions"][0]["data"]["actions"][0]
    assert action["action"] == "c2pa.created"
    assert action["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert action["parameters"]["org.bandmate.model"] == MODEL
    # And it survives into the signed file as c2pa reads it back.
    path = creds.sign(plain_mp3(tmp_path / "t1.mp3"), credential("t1"), include_prompt=False).path
    import c2pa

    with open(path, "rb") as handle, c2pa.Reader(MP3, handle) as reader:
        store = json.loads(reader.json())
    active = store["manifests"][store["active_manifest"]]
    actions = next(a for a in active["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert actions[0]["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert actions[0]["softwareAgent"]["name"] == "bandmate"


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_operation_verifies_as_trusted(creds, tmp_path, operation) -> None:
    parent = creds.sign(plain_mp3(tmp_path / "p.mp3"), credential("p1"), include_prompt=False).path
    parents = () if operation == "compose" else (parent,)
    child = plain_mp3(tmp_path / "c.mp3", freq=330.0)
    creds.sign(child, credential("c1", operation, parents), include_prompt=False)
    report = creds.verify(child)
    assert report.status is CredentialStatus.TRUSTED and report.operation == operation
    assert report.parents == ([] if operation == "compose" else ["p1"])


def test_lineage_is_a_chain_of_signed_ingredients(creds, tmp_path) -> None:
    a = creds.sign(plain_mp3(tmp_path / "a.mp3"), credential("trk_a"), include_prompt=False).path
    b = plain_mp3(tmp_path / "b.mp3", freq=330.0)
    b_signed = creds.sign(b, credential("trk_b", "continue", (a,)), include_prompt=False)
    c = plain_mp3(tmp_path / "c.mp3", freq=550.0)
    cred_c = credential("trk_c", "remix", (b,))
    room = headroom_bytes(cred_c)
    c_signed = creds.sign(c, cred_c, include_prompt=False)
    report = creds.verify(c)
    assert report.trusted and report.parents == ["trk_b"] and report.lineage == ["trk_b", "trk_a"]
    assert "Lineage: trk_c <- trk_b <- trk_a" in report.lines()
    # The parents' manifests travel inside the child, and the headroom estimate covers them.
    assert c_signed.bytes_added > b_signed.bytes_added and c_signed.bytes_added <= room
    # Two parents at once (a song from two takes): both are listed, in order.
    d = plain_mp3(tmp_path / "d.mp3", freq=660.0)
    creds.sign(d, credential("trk_d", "song", (a, c)), include_prompt=False)
    assert creds.verify(d).parents == ["trk_a", "trk_c"]


def test_resigning_replaces_the_manifest(creds, tmp_path) -> None:
    path = plain_mp3(tmp_path / "x.mp3")
    creds.sign(path, credential("first"), include_prompt=False)
    creds.sign(path, credential("second"), include_prompt=False)
    report = creds.verify(path)
    assert report.trusted and report.track_id == "second" and report.lineage == []


def test_prompt_only_when_allowed_and_never_a_user(creds, tmp_path) -> None:
    # What the render path knows about a job includes the requester; none of it can reach the manifest.
    job = {"user_id": USER_ID, "user_name": USER_NAME, "prompt": PROMPT, "track_id": "trk_private"}
    with_prompt = creds.sign(plain_mp3(tmp_path / "on.mp3"), Credential(
        track_id=job["track_id"], model_id=MODEL, model_license=LICENSE, operation="compose", created_at=NOW,
        prompt=job["prompt"]), include_prompt=True).path  # fmt: skip
    without = creds.sign(plain_mp3(tmp_path / "off.mp3"), credential("trk_private"), include_prompt=False).path
    for path in (with_prompt, without):
        data = path.read_bytes()
        assert USER_ID.encode() not in data and USER_NAME.encode() not in data
        assert USER_ID not in creds.verify(path).to_json()
    assert PROMPT.encode() in with_prompt.read_bytes() and creds.verify(with_prompt).prompt == PROMPT
    assert PROMPT.encode() not in without.read_bytes() and creds.verify(without).prompt is None
    assert not any("user" in name for name in Credential.__dataclass_fields__)


def test_credential_rejects_unknown_operation_and_naive_time() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        credential("t", "upscale")
    with pytest.raises(ValueError, match="timezone"):
        Credential("t", MODEL, LICENSE, "compose", datetime.datetime(2026, 1, 1))


def test_signing_a_non_audio_file_fails_cleanly(creds, tmp_path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all")
    with pytest.raises(ValueError, match="not an audio file"):
        creds.sign(path, credential("t"), include_prompt=False)
    assert path.read_text() == "not audio at all" and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="parent file"):
        creds.sign(plain_mp3(tmp_path / "c.mp3"), credential("c", "extend", (tmp_path / "gone.mp3",)),
                   include_prompt=False)  # fmt: skip
    assert leftovers(tmp_path) == []


def test_json_report_keeps_the_contract(creds, rendered) -> None:
    creds.sign(rendered.mp3, credential("trk_parent"), include_prompt=False)
    data = json.loads(creds.verify(rendered.mp3).to_json())
    assert CONTRACT_KEYS <= set(data)
    assert data["trusted"] is True and data["watermark"] is None and data["status"] == "trusted"
    report = creds.verify(rendered.mp3)
    assert report.exit_code == 0 and report.lines()[0].startswith("Made by this server's Bandmate")
    assert f"Model: {MODEL} ({LICENSE})" in report.lines() and "Track: trk_parent" in report.lines()
    unsigned = creds.verify(plain_mp3(rendered.mp3.parent / "unsigned.mp3"))
    assert unsigned.exit_code == 1 and unsigned.lines() == ["This file has no Content Credentials."]


# --- changes after signing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp3", "flac"])
def test_one_flipped_audio_byte_is_altered(creds, rendered, kind) -> None:
    path = rendered.mp3 if kind == "mp3" else rendered.flac
    creds.sign(path, credential("trk_parent"), include_prompt=False)
    data = bytearray(path.read_bytes())
    data[-2000] ^= 0x01
    path.write_bytes(bytes(data))
    report = creds.verify(path)
    assert report.status is CredentialStatus.ALTERED and report.altered and not report.trusted
    assert report.signer == creds.chain.signer_name and "changed after signing" in report.message
    assert "assertion.dataHash.mismatch" in report.problems


def test_ffmpeg_reencode_has_no_credentials(creds, rendered, tmp_path) -> None:
    creds.sign(rendered.mp3, credential("trk_parent"), include_prompt=False)
    creds.sign(rendered.flac, credential("trk_parent"), include_prompt=False)
    ffmpeg("-i", str(rendered.mp3), "-c:a", "libmp3lame", "-b:a", "128k", str(tmp_path / "re.mp3"))
    ffmpeg("-i", str(rendered.flac), str(tmp_path / "re.flac"))
    ffmpeg("-i", str(rendered.mp3), "-c", "copy", str(tmp_path / "copy.mp3"))
    for name in ("re.mp3", "re.flac", "copy.mp3"):
        report = creds.verify(tmp_path / name)
        assert report.status is CredentialStatus.NO_CREDENTIALS and not report.signed, name
        assert report.message == "This file has no Content Credentials."


def test_signing_must_come_after_the_tags(creds, tmp_path) -> None:
    provenance = Provenance(track_id="trk_o", prompt=PROMPT, seed=1, model_id=MODEL, model_license=LICENSE, params={})
    # The intended order: tags and chapters, then the signature. It verifies.
    good = plain_mp3(tmp_path / "good.mp3", seconds=2.0)
    tag_mp3(good, provenance)
    add_chapters(good, [(0.0, "intro"), (1.0, "drop")], 2.0)
    creds.sign(good, credential("trk_o"), include_prompt=False)
    assert creds.verify(good).trusted
    # Re-tagging a signed file with mutagen replaces the ID3 tag, and the manifest inside it with it.
    retagged = tmp_path / "retagged.mp3"
    shutil.copy(good, retagged)
    tag_mp3(retagged, provenance)
    assert creds.verify(retagged).status is CredentialStatus.NO_CREDENTIALS
    # Adding frames to the tag keeps the manifest but moves the audio it covers: altered.
    chaptered = tmp_path / "chaptered.mp3"
    shutil.copy(good, chaptered)
    add_chapters(chaptered, [(0.0, "intro")], 2.0)
    report = creds.verify(chaptered)
    assert report.status is CredentialStatus.ALTERED and not report.trusted


# --- keys ---------------------------------------------------------------------------------------------------------


def test_key_files_are_private_and_the_chain_is_stable(creds, keys_dir) -> None:
    for name in (CA_KEY_FILE, SIGNER_KEY_FILE):
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == KEY_FILE_MODE
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    again = load_or_create_chain(keys_dir)
    assert again.trust_anchor_pem == creds.chain.trust_anchor_pem and again.chain_pem == creds.chain.chain_pem
    assert "key_path" not in repr(again) and "PRIVATE" not in repr(again)


def test_a_renewed_signer_keeps_old_files_trusted(tmp_path, monkeypatch) -> None:
    """Near expiry the end-entity certificate is re-issued by the same CA, so earlier files stay this server's."""
    import generation.signing_keys as signing_keys

    monkeypatch.setattr(signing_keys, "SIGNER_VALIDITY", datetime.timedelta(days=10))  # always inside RENEW_BEFORE
    first = ContentCredentials(tmp_path / "k")
    old = first.sign(plain_mp3(tmp_path / "old.mp3"), credential("old"), include_prompt=False).path
    second = ContentCredentials(tmp_path / "k")
    assert second.chain.chain_pem != first.chain.chain_pem
    assert second.chain.trust_anchor_pem == first.chain.trust_anchor_pem
    new = second.sign(plain_mp3(tmp_path / "new.mp3"), credential("new"), include_prompt=False).path
    assert second.verify(old).trusted and second.verify(new).trusted


def test_wav_is_signed_too(creds, tmp_path) -> None:
    from generation.postprocess import write_wav_float

    path = write_wav_float(sine(0.5), SR, tmp_path / "a.wav")
    creds.sign(path, credential("w"), include_prompt=False)
    report = creds.verify(path)
    assert report.trusted and report.format == "audio/wav"


def test_loose_key_mode_is_tightened(tmp_path) -> None:
    load_or_create_chain(tmp_path / "k")
    os.chmod(tmp_path / "k" / SIGNER_KEY_FILE, 0o644)
    load_or_create_chain(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k" / SIGNER_KEY_FILE).stat().st_mode) == KEY_FILE_MODE


def test_private_key_never_reaches_the_logs(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fresh = ContentCredentials(tmp_path / "k")
    fresh.check()
    path = fresh.sign(plain_mp3(tmp_path / "a.mp3"), credential("a"), include_prompt=True).path
    fresh.verify(path)
    (tmp_path / "k" / SIGNER_KEY_FILE).write_text("garbage")
    with pytest.raises(SigningKeyError) as error:
        load_or_create_chain(tmp_path / "k")
    key_body = "".join((tmp_path / "k" / CA_KEY_FILE).read_text().splitlines()[1:-1])
    for text in (caplog.text, str(error.value)):
        assert "PRIVATE KEY" not in text and key_body[:40] not in text and "garbage" not in text
    assert "made a new Content Credentials CA" in caplog.text  # the log did record the key events


def operator_chain(directory: Path) -> tuple[Path, Path]:
    """An operator's own CA and certificate, made outside Bandmate (here: another Bandmate chain, renamed)."""
    chain = load_or_create_chain(directory, name="Example Label")
    return directory / "signer.pem", chain.key_path


def test_operator_certificate_signs_and_other_servers_see_it_untrusted(creds, tmp_path) -> None:
    cert, key = operator_chain(tmp_path / "operator")
    operator = ContentCredentials(tmp_path / "unused", cert_path=cert, key_path=key)
    assert not (tmp_path / "unused").exists()
    path = operator.sign(plain_mp3(tmp_path / "o.mp3"), credential("op1"), include_prompt=False).path
    assert operator.verify(path).trusted
    report = creds.verify(path)
    assert report.status is CredentialStatus.UNTRUSTED and report.signed and not report.trusted
    assert report.signer == "Example Label signer" and "Example Label signer" in report.message
    assert report.model == MODEL and not report.altered


def test_operator_certificate_errors_are_clear(tmp_path) -> None:
    cert, key = operator_chain(tmp_path / "operator")
    with pytest.raises(SigningKeyError, match="together"):
        ContentCredentials(tmp_path / "k", cert_path=cert)
    leaf_only = tmp_path / "leaf.pem"
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    leaf_only.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(SigningKeyError, match="followed by"):
        ContentCredentials(tmp_path / "k", cert_path=leaf_only, key_path=key)
    other_key = load_or_create_chain(tmp_path / "other").key_path
    with pytest.raises(SigningKeyError, match="does not belong"):
        ContentCredentials(tmp_path / "k", cert_path=cert, key_path=other_key)
    with pytest.raises(SigningKeyError, match="cannot read"):
        ContentCredentials(tmp_path / "k", cert_path=tmp_path / "missing.pem", key_path=key)


def test_verify_without_a_chain_makes_nothing(creds, tmp_path) -> None:
    path = creds.sign(plain_mp3(tmp_path / "a.mp3"), credential("a"), include_prompt=False).path
    report = verify_with_key_dir(path, tmp_path / "no-keys-here")
    assert report.status is CredentialStatus.UNTRUSTED and report.signed and not report.trusted
    assert not (tmp_path / "no-keys-here").exists()
    assert verify_with_key_dir(path, creds_dir(creds)).trusted


def creds_dir(creds: ContentCredentials) -> Path:
    return creds.chain.key_path.parent


# --- hostile input -------------------------------------------------------------------------------------------------


def test_hostile_corpus_gets_clear_answers(creds, tmp_path) -> None:
    signed = creds.sign(plain_mp3(tmp_path / "signed.mp3"), credential("h1"), include_prompt=False).path
    data = signed.read_bytes()
    manifest_end = ID3(signed).size  # the ID3 tag holding the manifest
    cases = {
        "text.mp3": (b"hello, this is not audio\n" * 100, CredentialStatus.NOT_AUDIO),
        "image.mp3": (b"\x89PNG\r\n\x1a\n" + bytes(2000), CredentialStatus.NOT_AUDIO),
        "empty.mp3": (b"", CredentialStatus.NOT_AUDIO),
        "cut-inside-manifest.mp3": (data[: manifest_end // 2], CredentialStatus.NOT_AUDIO),
        "truncated-manifest.mp3": (data[: manifest_end // 2] + data[manifest_end // 2 + 500 :],
                                   CredentialStatus.INVALID),
        "truncated-audio.mp3": (data[: len(data) - 5000], CredentialStatus.ALTERED),
        "unsigned.mp3": (encode_mp3(sine(1.0), SR), CredentialStatus.NO_CREDENTIALS),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        report = creds.verify(tmp_path / name)
        assert report.status is expected, (name, report)
        assert report.message and not report.trusted
    missing = creds.verify(tmp_path / "nope.mp3")
    assert missing.status is CredentialStatus.UNREADABLE and "cannot be read" in missing.message
    assert creds.verify(tmp_path).status is CredentialStatus.UNREADABLE


def test_manifest_copied_from_another_file_is_altered(creds, tmp_path) -> None:
    donor = creds.sign(plain_mp3(tmp_path / "donor.mp3"), credential("donor"), include_prompt=False).path
    target = plain_mp3(tmp_path / "target.mp3", freq=220.0)
    frame = next(f for f in ID3(donor).getall("GEOB") if f.mime == "application/c2pa")
    tags = ID3()
    tags.add(GEOB(encoding=frame.encoding, mime=frame.mime, filename=frame.filename, desc=frame.desc, data=frame.data))
    tags.save(target, v1=0, v2_version=4, padding=lambda info: 0)
    report = creds.verify(target)
    assert report.status is CredentialStatus.ALTERED and report.altered and not report.trusted
    assert report.track_id == "donor"  # what the copied manifest claims is shown, but not believed


def test_huge_files_are_answered_without_reading_them(creds, tmp_path) -> None:
    zeros = tmp_path / "zeros.mp3"
    with open(zeros, "wb") as handle:
        handle.truncate(100 * 2**20)
    assert creds.verify(zeros).status is CredentialStatus.NOT_AUDIO
    # An ID3 header in front of 100 MB of zeros is still not audio: no MPEG frame follows the tag.
    tagged = tmp_path / "tagged-zeros.mp3"
    with open(tagged, "wb") as handle:
        handle.write(b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10))
        handle.truncate(100 * 2**20)
    assert audio_format(tagged) is None and creds.verify(tagged).status is CredentialStatus.NOT_AUDIO
    # Past the size limit nothing is read at all.
    small_limit = ContentCredentials(creds_dir(creds), max_verify_bytes=2**20)
    report = small_limit.verify(zeros)
    assert report.status is CredentialStatus.TOO_LARGE and "too large" in report.message


CHILD = """
import sys
from generation.verification import verify_file

def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) // 1024

before = peak_mb()
report = verify_file(sys.argv[1], b"", max_bytes=int(sys.argv[2]))
print(report.status.value, peak_mb() - before)
"""


def verify_in_child(path: Path, max_bytes: int) -> tuple[str, int]:
    """(status, MB of peak memory the check added) from a fresh process."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(max_bytes)], capture_output=True, text=True,
                            cwd=ROOT, check=True)  # fmt: skip
    status, grown = result.stdout.split()
    return status, int(grown)


def test_memory_for_a_100mb_file_is_bounded_by_the_size_limit(creds, tmp_path) -> None:
    """c2pa holds the file while it checks it, so the size limit is what bounds memory: above it, nothing is read."""
    path = creds.sign(plain_mp3(tmp_path / "big.mp3"), credential("big"), include_prompt=False).path
    with open(path, "ab") as handle:
        handle.write(bytes(100 * 2**20))
    status, grown = verify_in_child(path, 64 * 2**20)
    assert status == "too_large" and grown < 16, grown
    status, grown = verify_in_child(path, MAX_VERIFY_BYTES)
    assert status == "altered" and grown < 2 * 100, grown

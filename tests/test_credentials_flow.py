"""Content Credentials through the whole application: every operation's files, made by the tiny MusicGen through the
core, the queue and the runner, verify as this server's with their parent as an ingredient; refit copies are signed
again; the server's prompt switch; keys private, out of logs and exports, carried by backup and restore; the
`bot.py verify` contract; the watermark setting."""

from __future__ import annotations

import asyncio
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
import torch

from app.services import Application, StartupError, watermark_name
from app.settings import Settings
from bot.core import ComposeOptions, Request, Requester, Upload
from bot.text import plain
from generation.credentials import KEY_DIR_NAME, verify_with_key_dir
from generation.jobs import DeliveryAddress, Job, Operation
from generation.signing_keys import CA_KEY_FILE, KEY_FILE_MODE, SIGNER_KEY_FILE
from generation.verification import CredentialStatus
from generation.watermark import load_watermarker, message_to_bits
from storage.backup import KEYS_DIR, backup, restore

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-musicgen"
TINY_MELODY = ROOT / "tests" / "fixtures" / "tiny-musicgen-melody"
TINY_AUDIOSEAL = ROOT / "tests" / "fixtures" / "tiny-audioseal"
USER_ID = "123456789012345678"
USER_NAME = "dj_secret_name"
GUILD = "998877665544332211"
WHO = Requester(user_id=USER_ID, name=USER_NAME)
CONTRACT_KEYS = {"signed", "trusted", "altered", "signer", "model", "operation", "created", "parents", "watermark"}


def settings_for(data: Path, **overrides) -> Settings:
    return Settings(data_dir=data, model=str(TINY), melody_model=str(TINY_MELODY), torch_threads=1, rate_per_min=0.0,
                    **overrides)


class Collect:
    """A Transport that remembers each finished job."""

    name = "test"

    def __init__(self) -> None:
        self.done: dict[str, asyncio.Event] = {}
        self.failed: dict[str, str] = {}
        self.messages = {}

    def waiter(self, job_id: str) -> asyncio.Event:
        return self.done.setdefault(job_id, asyncio.Event())

    async def post_result(self, job: Job, message) -> None:
        self.messages[job.id] = message
        self.waiter(job.id).set()

    async def post_failure(self, job: Job, message) -> None:
        self.failed[job.id] = job.error or job.state.value
        self.waiter(job.id).set()

    def on_event(self, event) -> None:
        return None

    async def announce_winner(self, job, message, refs) -> None:
        return None


async def finished(app: Application, transport: Collect, job: Job):
    await asyncio.wait_for(transport.waiter(job.id).wait(), 300)
    assert job.id not in transport.failed, transport.failed
    return await app.core.tracks(job.id)


def request(guild: str | None = None) -> Request:
    who = Requester(user_id=USER_ID, name=USER_NAME, guild_id=guild, channel_id="1" if guild else None)
    return Request(who, delivery=DeliveryAddress("test"))


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One data directory with a track of every operation (each from the compose, a song and a remix of an
    uploaded Bandmate MP3), made once for the module."""
    data = tmp_path_factory.mktemp("cred-data")
    out: dict = {"data": data}

    async def main() -> None:
        async with Application(settings_for(data), operator=True) as app:
            transport = Collect()
            await app.core.connect(transport)
            core = app.core
            compose = await core.compose(request(), ComposeOptions(prompt="dusty lofi beat", duration_s=1.0, seed=1))
            (base,) = await finished(app, transport, compose)
            tracks = {"compose": (base, None)}
            for name, operation, seconds in (("variation", Operation.VARIATION, None),
                                             ("continue", Operation.CONTINUE, 1.0),
                                             ("more_like", Operation.MORE_LIKE, None)):
                job = await core.from_track(request(), base.id, operation, seconds=seconds)
                tracks[name] = ((await finished(app, transport, job))[0], base.id)
            job = await core.extend_to(request(), base.id, 2.5)
            tracks["extend"] = ((await finished(app, transport, job))[0], base.id)
            upload = Upload("bandmate.mp3", app.files.absolute(base.mp3).read_bytes())
            job = await core.remix(request(), upload, "brass band", duration_s=1.0, seed=2)
            tracks["remix"] = ((await finished(app, transport, job))[0], base.id)
            job = await core.song(request(), "synth pop", "verse 2s, chorus 2s", seed=3)
            tracks["song"] = ((await finished(app, transport, job))[0], None)
            out["tracks"] = tracks
            out["message"] = transport.messages[compose.id]
            out["export"] = (await core.privacy.export_json(USER_ID)).decode()
            out["verify_text"] = await core.verify_path(app.files.absolute(tracks["continue"][0].mp3))
            from bot.console import handle_line

            out["console"] = await handle_line(core, f"verify {app.files.absolute(tracks['song'][0].mp3)}")
            out["console_missing"] = await handle_line(core, "verify /nonexistent/file.mp3")

    asyncio.run(main())
    return out


@pytest.mark.parametrize("operation", ["compose", "variation", "continue", "extend", "more_like", "remix", "song"])
def test_each_operation_verifies_as_trusted_with_its_parent(made, operation) -> None:
    data = made["data"]
    track, parent = made["tracks"][operation]
    for rel in (track.mp3, track.flac):
        report = verify_with_key_dir(data / rel, data / KEY_DIR_NAME)
        assert report.status is CredentialStatus.TRUSTED, (operation, rel, report.problems)
        assert report.operation == operation and report.track_id == track.id
        assert report.model == track.model and report.model_license
        assert report.parents == ([parent] if parent else [])
        assert report.prompt == track.prompt  # the default: the server allows it


def test_no_user_id_or_name_reaches_any_file(made) -> None:
    data = made["data"]
    for track, _ in made["tracks"].values():
        for rel in (track.mp3, track.flac):
            raw = (data / rel).read_bytes()
            assert USER_ID.encode() not in raw and USER_NAME.encode() not in raw, rel
            assert USER_ID.encode("utf-16-le") not in raw


def test_the_core_answer_shows_lineage_and_names_nobody(made) -> None:
    text = plain(made["verify_text"])
    base = made["tracks"]["compose"][0]
    assert "Made by this server's Bandmate" in text and f"Lineage: {base.id}" in text
    assert "Operation: continue" in text and "Altered after signing: no" in text
    assert USER_ID not in text and USER_NAME not in text


def test_the_console_verifies_a_file(made) -> None:
    text = plain(made["console"])
    assert "Made by this server's Bandmate" in text and "Operation: song" in text
    assert "can't read" in plain(made["console_missing"])


def test_download_audioseal_offline_says_what_happened(tmp_path) -> None:
    env = {**os.environ, "BANDMATE_DATA": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bot.py"), "download", "audioseal"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "download audioseal" in done.stderr and "Traceback" not in done.stderr


def test_a_flipped_byte_is_altered_and_a_reencode_has_no_credentials(made, tmp_path) -> None:
    data = made["data"]
    track, _ = made["tracks"]["compose"]
    flipped = tmp_path / "flipped.mp3"
    raw = bytearray((data / track.mp3).read_bytes())
    raw[-200] ^= 0xFF  # inside the last MPEG frame's audio, past the manifest
    flipped.write_bytes(bytes(raw))
    report = verify_with_key_dir(flipped, data / KEY_DIR_NAME)
    assert report.status is CredentialStatus.ALTERED and report.altered and not report.trusted
    reencoded = tmp_path / "reencoded.mp3"
    ffmpeg("-i", str(data / track.mp3), "-map_metadata", "-1", "-b:a", "96k", str(reencoded))
    assert verify_with_key_dir(reencoded, data / KEY_DIR_NAME).status is CredentialStatus.NO_CREDENTIALS


def test_keys_are_private_and_never_in_exports(made) -> None:
    keys = made["data"] / KEY_DIR_NAME
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in (CA_KEY_FILE, SIGNER_KEY_FILE):
        assert stat.S_IMODE((keys / name).stat().st_mode) == KEY_FILE_MODE
        secret = (keys / name).read_text()
        body = "".join(line for line in secret.splitlines() if "-----" not in line)
        assert body[:40] not in made["export"] and "PRIVATE KEY" not in made["export"]


def test_backup_and_restore_keep_trust(made, tmp_path) -> None:
    data = made["data"]
    dest = tmp_path / "backup"
    backup(data / "bandmate.db", data, dest)
    assert stat.S_IMODE((dest / KEYS_DIR / SIGNER_KEY_FILE).stat().st_mode) == KEY_FILE_MODE
    restored = tmp_path / "restored"
    restore(dest, restored)
    assert KEYS_DIR == KEY_DIR_NAME
    assert stat.S_IMODE((restored / KEYS_DIR / CA_KEY_FILE).stat().st_mode) == KEY_FILE_MODE
    track, _ = made["tracks"]["continue"]
    report = verify_with_key_dir(restored / track.mp3, restored / KEY_DIR_NAME)
    assert report.status is CredentialStatus.TRUSTED
    # and a server with another chain sees the same file as untrusted
    other = tmp_path / "other"
    from generation.credentials import ContentCredentials

    assert ContentCredentials(other).verify(restored / track.mp3).status is CredentialStatus.UNTRUSTED


def bot_verify(data: Path, path: Path) -> tuple[int, dict]:
    env = {**os.environ, "BANDMATE_DATA": str(data), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bot.py"), "verify", str(path), "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout)


def test_bot_py_verify_json_keeps_its_contract(made, tmp_path) -> None:
    data = made["data"]
    track, parent = made["tracks"]["variation"]
    code, body = bot_verify(data, data / track.mp3)
    assert code == 0 and CONTRACT_KEYS <= set(body)
    assert body["signed"] and body["trusted"] and not body["altered"] and body["parents"] == [parent]
    assert body["operation"] == "variation" and body["model"] == track.model and body["created"]
    plain_mp3 = tmp_path / "plain.mp3"
    ffmpeg("-i", str(data / track.mp3), "-map_metadata", "-1", str(plain_mp3))
    code, body = bot_verify(data, plain_mp3)
    assert code == 1 and body["signed"] is False and body["trusted"] is False
    code, body = bot_verify(tmp_path / "elsewhere", data / track.mp3)  # another server: valid, untrusted
    assert code == 1 and body["signed"] and not body["trusted"]
    assert not (tmp_path / "elsewhere" / KEY_DIR_NAME / CA_KEY_FILE).exists()  # verifying makes no keys
    not_audio = tmp_path / "notes.mp3"
    not_audio.write_text("not audio at all")
    assert bot_verify(data, not_audio)[0] == 1


def test_refit_copies_are_signed_again_within_the_limit(tmp_path) -> None:
    """A result too large for the upload limit is re-encoded lower; the copy that is posted verifies too."""

    async def main():
        async with Application(settings_for(tmp_path), operator=True) as app:
            transport = Collect()
            await app.core.connect(transport)
            job = await app.core.compose(request(), ComposeOptions(prompt="long drone", duration_s=6.0, seed=4))
            (track,) = await finished(app, transport, job)
            message = transport.messages[job.id]
            original = app.files.absolute(track.mp3)
            limit = int(original.stat().st_size * 0.8)
            fitted = await app.core.fit_files(message.files, limit)
            try:
                posted = [item.path for batch in fitted.batches for item in batch if item.path.suffix == ".mp3"]
                assert posted and posted[0] != original
                size = posted[0].stat().st_size
                report = app.credentials.verify(posted[0])
                return report, size, limit, track
            finally:
                fitted.close()

    report, size, limit, track = asyncio.run(main())
    assert size <= limit * 0.97
    assert report.status is CredentialStatus.TRUSTED and report.track_id == track.id


def test_the_server_decides_whether_the_prompt_goes_in(tmp_path) -> None:
    async def main():
        async with Application(settings_for(tmp_path), operator=True) as app:
            transport = Collect()
            await app.core.connect(transport)
            admin = Requester(user_id=USER_ID, name=USER_NAME, guild_id=GUILD, is_admin=True)
            text = await app.core.server_settings.update_settings(admin, GUILD, manifest_prompt=False)
            job = await app.core.compose(request(GUILD), ComposeOptions(prompt="secret chord", duration_s=1.0))
            (track,) = await finished(app, transport, job)
            return text, app.credentials.verify(app.files.absolute(track.mp3)), app.files.absolute(track.mp3)

    text, report, path = asyncio.run(main())
    assert "prompt in Content Credentials no" in text
    assert report.trusted and report.prompt is None


def test_the_private_key_never_reaches_the_logs(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)

    async def main():
        async with Application(settings_for(tmp_path), operator=True) as app:
            transport = Collect()
            await app.core.connect(transport)
            job = await app.core.compose(request(), ComposeOptions(prompt="log check", duration_s=1.0))
            await finished(app, transport, job)

    asyncio.run(main())
    for name in (CA_KEY_FILE, SIGNER_KEY_FILE):
        body = "".join(l for l in (tmp_path / KEY_DIR_NAME / name).read_text().splitlines() if "-----" not in l)
        assert body[:40] not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


def test_a_watermark_without_weights_fails_at_start_saying_what_to_do(tmp_path) -> None:
    with pytest.raises(StartupError, match=r"python bot\.py download audioseal"):
        Application(settings_for(tmp_path, watermark="audioseal"))
    env = {**os.environ, "BANDMATE_DATA": str(tmp_path), "HF_HUB_OFFLINE": "1", "BANDMATE_WATERMARK": "audioseal",
           "BANDMATE_MODEL": str(TINY)}
    env.pop("DISCORD_TOKEN", None)
    done = subprocess.run([sys.executable, str(ROOT / "bot.py"), "console"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 3 and "python bot.py download audioseal" in done.stderr
    assert "Traceback" not in done.stderr


def test_with_the_watermark_on_a_stripped_file_is_still_recognised(tmp_path) -> None:
    """The tiny AudioSeal's weights stand in for the download; its detector is set to always find this server's
    message (a random tiny detector cannot learn to), which proves the path from the setting to the answer."""
    weights = settings_for(tmp_path).watermark_dir
    weights.mkdir(parents=True)
    for name in ("generator.pth", "detector.pth"):
        shutil.copy(TINY_AUDIOSEAL / name, weights / name)

    async def main():
        async with Application(settings_for(tmp_path, watermark="audioseal"), operator=True) as app:
            assert app.watermark is not None
            detector = app.watermark.detector.detector[-1]
            with torch.no_grad():
                detector.weight.zero_()
                detector.bias.copy_(torch.tensor([-10.0, 10.0] + [10.0 if b else -10.0
                                                                  for b in message_to_bits(app.watermark.message)]))
            transport = Collect()
            await app.core.connect(transport)
            job = await app.core.compose(request(), ComposeOptions(prompt="marked", duration_s=1.0, seed=5))
            assert job.spec.watermark == app.watermark.message  # the message travels with the job (Redis too)
            (track,) = await finished(app, transport, job)
            path = app.files.absolute(track.mp3)
            stripped = tmp_path / "stripped.mp3"
            ffmpeg("-i", str(path), "-map_metadata", "-1", str(stripped))
            return (app.credentials.verify(path), await app.core.verify_path(stripped),
                    app.credentials.chain.trust_anchor_pem, app.watermark.message)

    signed, stripped_text, anchors, message = asyncio.run(main())
    assert signed.trusted
    assert "No Content Credentials" in plain(stripped_text) and "Watermark: found, this server's" in plain(stripped_text)
    assert load_watermarker(weights, server_name=watermark_name(anchors)).message == message


def test_every_operation_a_job_can_have_can_be_signed():
    """A new Operation (stems came with ACE-Step) must be known to the signer, or its tracks could not be made."""
    from generation.credentials import OPERATIONS
    from generation.jobs import Operation

    assert {operation.value for operation in Operation} <= OPERATIONS

"""The hub check before loading: a dead or silent hub fails in one line within seconds, a cached or local model
never touches the network, a reachable hub (a real HTTP server on 127.0.0.1) lets the download go ahead."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL, free_port
from generation.backend import ModelLoadError
from generation.hub import hub_doctor, hub_load_options, is_cached, probe_hub

HUB_MODEL = "facebook/musicgen-small"
CACHED_MODEL = "bandmate-test/tiny-musicgen"
ISSUE_BOUND_S = 15.0  # issue 12: "one line within 15 s"


@pytest.fixture
def online(monkeypatch):
    """The test process as a machine without HF_HUB_OFFLINE (conftest sets it for every other test)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def dead_hub(online, monkeypatch) -> str:
    """A loopback port nobody listens on: every connection is refused."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


@pytest.fixture
def silent_hub(online, monkeypatch):
    """A port that accepts connections and never answers, like a firewall that swallows packets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    yield endpoint
    listener.close()


class FakeHub:
    """A real HTTP server answering the hub's model API: `gated/...` ids are gated, `broken/...` answer 503,
    `missing/...` 404, everything else is an ordinary public model. Counts the requests it gets."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hub.paths.append(self.path)
                model = self.path.removeprefix("/api/models/")
                if not self.path.startswith("/api/models/") or model.startswith("missing/"):
                    self._answer(404, {"error": "Repository not found"})
                elif model.startswith("broken/"):
                    self._answer(503, {"error": "Service unavailable"})
                else:
                    self._answer(200, {"id": model, "gated": "manual" if model.startswith("gated/") else False})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(online, monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    yield hub
    hub.close()


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def make_hub_cache(root: Path, model_id: str, source: Path) -> Path:
    """A Hugging Face hub cache holding `source` as `model_id` (the layout snapshot_download writes)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{model_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture
def hub_cache(tmp_path) -> Path:
    return make_hub_cache(tmp_path / "hub-cache", CACHED_MODEL, TINY_MODEL)


def assert_one_clear_line(message: str, model_id: str) -> None:
    assert "\n" not in message
    assert model_id in message
    assert f"python bot.py download {model_id}" in message
    assert "BANDMATE_MODEL" in message


# -- an unreachable hub ----------------------------------------------------------------------------------------


def test_refused_hub_fails_fast_in_one_line(dead_hub, tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options(HUB_MODEL, cache_dir=tmp_path / "empty-cache")
    assert time.monotonic() - started < ISSUE_BOUND_S
    message = str(caught.value)
    assert_one_clear_line(message, HUB_MODEL)
    assert dead_hub in message and "unreachable" in message
    assert "refused" in message.lower()


def test_silent_hub_fails_within_the_timeout(silent_hub, tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options(HUB_MODEL, cache_dir=tmp_path / "empty-cache")
    assert time.monotonic() - started < ISSUE_BOUND_S
    assert_one_clear_line(str(caught.value), HUB_MODEL)
    assert "unreachable" in str(caught.value)


def test_a_dead_hub_is_probed_once_for_every_model(silent_hub, tmp_path):
    """A start asks about the model, the extra models and the melody model: one timeout, not one each."""
    with pytest.raises(ModelLoadError):
        hub_load_options("org/first", cache_dir=tmp_path, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options("org/second", cache_dir=tmp_path, timeout_s=1.0)
    assert time.monotonic() - started < 0.5
    assert "org/second" in str(caught.value)


def test_the_melody_setting_is_named_for_the_melody_model(dead_hub, tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options("facebook/musicgen-melody", setting="BANDMATE_MELODY_MODEL", cache_dir=tmp_path)
    assert "set BANDMATE_MELODY_MODEL to a local model folder" in str(caught.value)


def test_a_hub_answering_503_counts_as_down(fake_hub, tmp_path):
    """huggingface_hub retries 5xx with back-off, so an answering but failing hub would stall the load too."""
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options("broken/model", cache_dir=tmp_path)
    assert "HTTP 503" in str(caught.value)
    assert fake_hub.paths == ["/api/models/broken/model"]


def test_offline_and_not_cached_says_so_without_a_request(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options(HUB_MODEL, cache_dir=tmp_path)
    message = str(caught.value)
    assert_one_clear_line(message, HUB_MODEL)
    assert "HF_HUB_OFFLINE=1" in message
    assert fake_hub.paths == []


# -- cached and local models never touch the network -----------------------------------------------------------


def test_local_folder_passes_without_a_request(fake_hub):
    assert hub_load_options(str(TINY_MODEL)) == {}
    assert fake_hub.paths == []


def test_cached_model_loads_offline_without_a_request(fake_hub, hub_cache):
    assert is_cached(CACHED_MODEL, cache_dir=hub_cache)
    options = hub_load_options(CACHED_MODEL, cache_dir=hub_cache)
    assert options == {"cache_dir": str(hub_cache), "local_files_only": True}
    assert fake_hub.paths == []


def test_cached_model_passes_with_a_dead_hub_and_offline(dead_hub, hub_cache, monkeypatch):
    assert hub_load_options(CACHED_MODEL, cache_dir=hub_cache)["local_files_only"] is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_load_options(CACHED_MODEL, cache_dir=hub_cache)["local_files_only"] is True


def test_cached_options_load_the_model_through_from_pretrained(dead_hub, hub_cache):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    options = hub_load_options(CACHED_MODEL, cache_dir=hub_cache)
    processor = AutoProcessor.from_pretrained(CACHED_MODEL, **options)
    model = MusicgenForConditionalGeneration.from_pretrained(CACHED_MODEL, **options)
    assert model.config.audio_encoder.sampling_rate == 32_000
    assert processor.tokenizer("lo-fi").input_ids


# -- a reachable hub -------------------------------------------------------------------------------------------


def test_reachable_hub_lets_the_download_go_ahead(fake_hub, tmp_path):
    assert hub_load_options("org/public-model", cache_dir=tmp_path) == {"cache_dir": str(tmp_path)}
    assert fake_hub.paths == ["/api/models/org/public-model"]


def test_unknown_model_is_left_to_the_loader(fake_hub, tmp_path):
    """A 404 is answered at once (the loader does not retry it) and the loader's own message names the id."""
    assert hub_load_options("missing/model", cache_dir=tmp_path) == {"cache_dir": str(tmp_path)}


def test_gated_model_without_a_token_asks_for_hf_token(fake_hub, no_token, tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        hub_load_options("gated/model", cache_dir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "gated/model" in message
    assert "HF_TOKEN" in message and "gated" in message


def test_gated_model_with_a_token_goes_ahead(fake_hub, no_token, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert hub_load_options("gated/model", cache_dir=tmp_path) == {"cache_dir": str(tmp_path)}


def test_a_probe_is_remembered(fake_hub):
    first = probe_hub("org/remembered")
    second = probe_hub("org/remembered")
    assert first == second and first.reachable
    assert fake_hub.paths == ["/api/models/org/remembered"]


# -- doctor ----------------------------------------------------------------------------------------------------


def test_doctor_tells_the_same_as_the_loader(dead_hub, tmp_path):
    good, text = hub_doctor(HUB_MODEL, cache_dir=tmp_path)
    assert not good
    assert_one_clear_line(text, HUB_MODEL)
    assert "unreachable" in text


def test_doctor_on_cached_local_and_reachable(fake_hub, hub_cache, tmp_path):
    assert hub_doctor(CACHED_MODEL, cache_dir=hub_cache) == (True, "in the local Hugging Face cache (loads offline)")
    assert hub_doctor(str(TINY_MODEL)) == (True, "local folder")
    good, text = hub_doctor("org/public-model", cache_dir=tmp_path)
    assert good and "reachable" in text and "python bot.py download org/public-model" in text


# -- end to end, in a fresh interpreter as `make run` has it ----------------------------------------------------


def run_fresh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A new Python process, so huggingface_hub reads HF_HUB_OFFLINE, HF_ENDPOINT and the cache at import."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    clean.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=clean, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_make_run_without_a_hub_prints_one_line_fast(tmp_path):
    """`make run` (python bot.py, no token: the console) with the default model on a machine that cannot reach the
    hub: one `error:` line within the issue's 15 s, exit 3, no retry warnings."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DISCORD_TOKEN", "BANDMATE_MODEL")}
    clean.update(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path / "hf"),
                 BANDMATE_DATA=str(tmp_path / "data"), BANDMATE_LOG_LEVEL="warning")
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "bot.py")], env=clean, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Cannot load facebook/musicgen-small"), done.stderr
    assert_one_clear_line(errors[0], HUB_MODEL)
    assert "Retry" not in done.stderr and "retry" not in done.stderr.lower(), done.stderr
    assert took < ISSUE_BOUND_S, took


def test_cached_model_loads_with_a_dead_hub_and_no_retries(tmp_path):
    """HF_HUB_OFFLINE unset, the hub dead, the model in the default cache: it loads, and nothing is retried."""
    cache = make_hub_cache(tmp_path / "hf" / "hub", CACHED_MODEL, TINY_MODEL)
    script = f"""
        import torch
        from transformers import AutoProcessor, MusicgenForConditionalGeneration
        from generation.hub import hub_load_options

        options = hub_load_options({CACHED_MODEL!r})
        AutoProcessor.from_pretrained({CACHED_MODEL!r}, **options)
        model = MusicgenForConditionalGeneration.from_pretrained({CACHED_MODEL!r}, dtype=torch.float32, **options)
        print(sorted(options), model.config.audio_encoder.sampling_rate)
    """
    done = run_fresh(script, {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf"),
                              "HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['local_files_only']", "32000"]
    assert "Retry" not in done.stderr

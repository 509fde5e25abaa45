"""Fail fast when a model must come from the Hugging Face hub and cannot.

Offline, `from_pretrained` of a hub id retries every file five times with back-off: minutes of warnings before its
error. The loaders call `hub_load_options` first: a local folder or a cached model loads without any network call,
an unreachable hub (or HF_HUB_OFFLINE=1 without a cached copy) becomes one ModelLoadError line that says what to do.
No torch here: `doctor` uses this module too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation.backend import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_TIMEOUT_S = 4.0  # one probe, no retries: the whole check stays well under the 15 s a newcomer waits
PROBE_MEMORY_S = 60.0  # a start asks about one model several times (family, config, weights): probe once
# Status codes huggingface_hub retries with back-off: a hub answering them would stall the load like a dead one.
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubProbe:
    """What one request to the hub's model API told: whether it answered usefully and whether the model is gated."""

    reachable: bool
    reason: str = ""  # why not reachable, for the operator (never holds a token)
    gated: bool = False


_probes: dict[tuple[str, str], tuple[float, HubProbe]] = {}
_down: dict[str, tuple[float, HubProbe]] = {}
_probes_lock = threading.Lock()


def hub_endpoint() -> str:
    """The hub address huggingface_hub uses: HF_ENDPOINT (a mirror) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub reads it once, at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def hub_cache_dir(cache_dir: str | Path | None = None) -> str:
    """Where downloaded models live (HF_HUB_CACHE, by default ~/.cache/huggingface/hub)."""
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_local_folder(model_id: str) -> bool:
    return os.path.isdir(model_id)


def is_cached(model_id: str, *, cache_dir: str | Path | None = None) -> bool:
    """Whether the hub cache holds the model's top file: config.json (transformers) or model_index.json
    (diffusers). A download cut short after that file makes the loader itself say what is missing."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "model_index.json"):
        try:
            if isinstance(try_to_load_from_cache(model_id, filename, cache_dir=cache_dir), str):
                return True
        except Exception as error:  # noqa: BLE001 - an id the cache cannot even name is not cached
            log.debug("cache lookup of %s/%s failed: %s", model_id, filename, error)
            return False
    return False


def hub_load_options(model_id: str, *, setting: str = "BANDMATE_MODEL", cache_dir: str | Path | None = None,
                     timeout_s: float = HUB_TIMEOUT_S) -> dict[str, Any]:
    """The keyword arguments a loader passes to `from_pretrained(model_id, ...)`, or a one-line ModelLoadError.

    A local folder: `{}`. A cached hub model: `local_files_only=True`, so it loads offline with no network retries.
    Otherwise one quick probe of the hub: unreachable, or gated without a token, raises; reachable gives `{}` (the
    loader downloads). `setting` names the environment variable the operator would change (BANDMATE_MODEL,
    BANDMATE_MELODY_MODEL). A `cache_dir` given here is passed on to the loader.
    """
    passed_on: dict[str, Any] = {} if cache_dir is None else {"cache_dir": str(cache_dir)}
    if is_local_folder(model_id):
        return {}
    if is_cached(model_id, cache_dir=cache_dir):
        return {**passed_on, "local_files_only": True}
    cache = hub_cache_dir(cache_dir)
    remedy = (f"on a machine with internet run `python bot.py download {model_id}` and copy the Hugging Face cache "
              f"({cache}) here, or set {setting} to a local model folder.")
    if hub_offline():
        raise ModelLoadError(f"Cannot load {model_id}: it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                             f"forbids downloading it; unset HF_HUB_OFFLINE, or {remedy}")
    endpoint = hub_endpoint()
    probe = probe_hub(model_id, endpoint=endpoint, timeout_s=timeout_s)
    if not probe.reachable:
        raise ModelLoadError(f"Cannot load {model_id}: it is not in the local Hugging Face cache and the model hub "
                             f"{endpoint} is unreachable ({probe.reason}); {remedy}")
    if probe.gated and not _has_token():
        raise ModelLoadError(f"Cannot load {model_id}: it is a gated model and no Hugging Face token is set; accept "
                             f"its licence at {endpoint}/{model_id} and set HF_TOKEN to a read token, or set {setting} "
                             "to a local model folder.")
    return passed_on


def hub_doctor(model_id: str, *, setting: str = "BANDMATE_MODEL", cache_dir: str | Path | None = None,
               timeout_s: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """For `doctor`: whether the model can be loaded from here, and one line on its cache and the hub."""
    try:
        options = hub_load_options(model_id, setting=setting, cache_dir=cache_dir, timeout_s=timeout_s)
    except ModelLoadError as error:
        return False, str(error)
    if is_local_folder(model_id):
        return True, "local folder"
    if options.get("local_files_only"):
        return True, "in the local Hugging Face cache (loads offline)"
    return True, (f"not downloaded yet; the hub {hub_endpoint()} is reachable, so the first start downloads it "
                  f"(or run `python bot.py download {model_id}` first: several GB for the larger models)")


def probe_hub(model_id: str, *, endpoint: str | None = None, timeout_s: float = HUB_TIMEOUT_S) -> HubProbe:
    """One GET of `{endpoint}/api/models/{model_id}`, at most `timeout_s` in all (name lookup included), no retries.

    Any answer the loader would not retry counts as reachable: a 404 or 401 (wrong id, private model) lets the
    loader fail fast with its own message. An unreachable endpoint is remembered for a minute for every model.
    """
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    now = time.monotonic()
    with _probes_lock:
        for memo in (_down.get(endpoint), _probes.get((endpoint, model_id))):
            if memo is not None and memo[0] > now:
                return memo[1]
    probe = _request(f"{endpoint}/api/models/{urllib.parse.quote(model_id, safe='/')}", timeout_s)
    with _probes_lock:
        expires = time.monotonic() + PROBE_MEMORY_S
        _probes[(endpoint, model_id)] = (expires, probe)
        if not probe.reachable:
            _down[endpoint] = (expires, probe)
    log.debug("hub probe %s %s: %s", endpoint, model_id, probe)
    return probe


def _request(url: str, timeout_s: float) -> HubProbe:
    """The request runs in a daemon thread so that a hanging name lookup (which ignores socket timeouts) cannot
    hold the caller past `timeout_s`."""
    result: list[HubProbe] = []

    def ask() -> None:
        result.append(_ask(url, timeout_s))

    thread = threading.Thread(target=ask, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if result:
        return result[0]
    return HubProbe(False, f"no answer in {timeout_s:g} s")


def _ask(url: str, timeout_s: float) -> HubProbe:
    request = urllib.request.Request(url, headers={"User-Agent": "bandmate-hub-check"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(1_000_000)
    except urllib.error.HTTPError as error:
        if error.code in RETRIED_STATUSES:
            return HubProbe(False, f"it answered HTTP {error.code}")
        return HubProbe(True)
    except (urllib.error.URLError, OSError, ValueError) as error:
        return HubProbe(False, _reason(error))
    try:
        gated = json.loads(body).get("gated", False)
    except (ValueError, AttributeError):
        gated = False
    return HubProbe(True, gated=bool(gated) and gated != "false")


def _reason(error: BaseException) -> str:
    """A short single-line cause: 'Connection refused', 'timed out', 'Name or service not known'."""
    cause = getattr(error, "reason", error)
    text = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    return " ".join(str(text).split())


def _has_token() -> bool:
    """A token from HF_TOKEN or `hf auth login`; its value is never read out."""
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # noqa: BLE001 - a broken token setup counts as none
        return False

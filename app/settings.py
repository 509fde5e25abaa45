"""Settings from the environment (and `.env`) into one frozen dataclass that fails fast and names the variable at
fault. No other module reads the environment."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_MODEL = "facebook/musicgen-small"
DEFAULT_MELODY_MODEL = "facebook/musicgen-melody"

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _address(env: Mapping[str, str], name: str) -> str | None:
    """host:port (":9464" listens on 127.0.0.1), or None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name} must be host:port, for example 127.0.0.1:9464, got {raw!r}")
    return f"{host.strip('[]') or '127.0.0.1'}:{int(port)}"


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _rate_limit(env: Mapping[str, str]) -> tuple[int, float]:
    """BANDMATE_RATE_BURST and BANDMATE_RATE_PER_MIN; for one release the old BANDMATE_COOLDOWN_S still works,
    read as a bucket of one that refills every cooldown (and says what replaces it)."""
    burst = _int(env, "BANDMATE_RATE_BURST", 3, 1, 1000)
    per_min = _float(env, "BANDMATE_RATE_PER_MIN", 6.0, 0.0, 100_000.0)
    if not env.get("BANDMATE_COOLDOWN_S", "").strip():
        return burst, per_min
    cooldown = _float(env, "BANDMATE_COOLDOWN_S", 0.0, 0.0, 3600.0)
    if env.get("BANDMATE_RATE_BURST", "").strip() or env.get("BANDMATE_RATE_PER_MIN", "").strip():
        log.warning("BANDMATE_COOLDOWN_S is ignored: BANDMATE_RATE_BURST / BANDMATE_RATE_PER_MIN replace it")
        return burst, per_min
    burst, per_min = 1, (60.0 / cooldown if cooldown > 0 else 0.0)
    log.warning("BANDMATE_COOLDOWN_S is deprecated and goes in the next release; it is read as "
                "BANDMATE_RATE_BURST=%d BANDMATE_RATE_PER_MIN=%g. Set those instead (shipped: 3 and 6).",
                burst, per_min)
    return burst, per_min


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    model: str = DEFAULT_MODEL
    melody_model: str = DEFAULT_MELODY_MODEL
    extra_models: tuple[str, ...] = ()  # other models admins may choose per server (/settings) or users per /compose
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    cpu_offload: bool = False  # ACE-Step on a GPU: each network on the GPU only while it runs
    torch_threads: int = 0  # 0: torch's default (all cores)
    max_batch: int = 4
    decoder: str = "slots"  # slots: the engine's own decoder, jobs join at any step; generate: fixed batches
    cuda_graphs: bool = True  # the decoder's CUDA graphs on a GPU (BANDMATE_CUDA_GRAPHS=0: off)
    user_pending: int = 3
    queue_depth: int = 100
    job_timeout_s: float = 900.0
    max_duration_s: float = 30.0
    max_song_s: float = 240.0  # ACE-Step songs with lyrics (their length follows the lyrics up to this)
    max_upload_mb: int = 25
    rate_burst: int = 3  # requests one user may start at once ...
    rate_per_min: float = 6.0  # ... then this many a minute (0: no limit); over it, requests wait their turn
    voting_window_s: float = 3600.0
    daily_quota: int = 200
    discord_token: str | None = field(default=None, repr=False)  # never printed
    discord_guild_ids: tuple[int, ...] = ()
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    redis_url: str | None = field(default=None, repr=False)
    redis_claim_idle_ms: int = 60_000
    redis_heartbeat_s: float = 10.0
    redis_max_deliveries: int = 3
    log_level: str = "INFO"
    c2pa_cert: Path | None = None  # the operator's C2PA certificate chain (PEM); None: the bot's own chain
    c2pa_key: Path | None = field(default=None, repr=False)
    watermark: str = "off"  # off | audioseal
    metrics_addr: str | None = None  # host:port of /metrics, /healthz, /readyz; None: off

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        guilds = []
        for part in env.get("DISCORD_GUILD_IDS", "").replace(";", ",").split(","):
            if part.strip():
                if not part.strip().isdigit():
                    raise SettingsError(f"DISCORD_GUILD_IDS must be comma-separated numeric ids, got {part.strip()!r}")
                guilds.append(int(part.strip()))
        burst, per_min = _rate_limit(env)
        return cls(
            data_dir=Path(env.get("BANDMATE_DATA", "").strip() or "data"),
            model=env.get("BANDMATE_MODEL", "").strip() or DEFAULT_MODEL,
            melody_model=env.get("BANDMATE_MELODY_MODEL", "").strip() or DEFAULT_MELODY_MODEL,
            extra_models=tuple(m.strip() for m in env.get("BANDMATE_MODELS", "").split(",") if m.strip()),
            device=_choice(env, "BANDMATE_DEVICE", "auto", ("auto", "cpu", "cuda")),
            dtype=_choice(env, "BANDMATE_DTYPE", "auto", ("auto", "fp32", "bf16", "fp16")),
            compile=_flag(env, "BANDMATE_COMPILE"),
            cpu_offload=_flag(env, "BANDMATE_CPU_OFFLOAD"),
            torch_threads=_int(env, "BANDMATE_TORCH_THREADS", 0, 0, 1024),
            max_batch=_int(env, "BANDMATE_MAX_BATCH", 4, 1, 64),
            decoder=_choice(env, "BANDMATE_DECODER", "slots", ("slots", "generate")),
            cuda_graphs=env.get("BANDMATE_CUDA_GRAPHS", "").strip().lower() not in ("0", "false", "no", "off"),
            user_pending=_int(env, "BANDMATE_USER_PENDING", 3, 1, 1000),
            queue_depth=_int(env, "BANDMATE_QUEUE_DEPTH", 100, 1, 100_000),
            job_timeout_s=_float(env, "BANDMATE_JOB_TIMEOUT_S", 900.0, 1.0, 86_400.0),
            max_duration_s=_float(env, "BANDMATE_MAX_DURATION_S", 30.0, 1.0, 300.0),
            max_song_s=_float(env, "BANDMATE_MAX_SONG_S", 240.0, 10.0, 600.0),
            max_upload_mb=_int(env, "BANDMATE_MAX_UPLOAD_MB", 25, 1, 500),
            rate_burst=burst,
            rate_per_min=per_min,
            voting_window_s=_float(env, "BANDMATE_VOTING_WINDOW_S", 3600.0, 1.0, 30 * 86_400.0),
            daily_quota=_int(env, "BANDMATE_DAILY_QUOTA", 200, 1, 1_000_000),
            discord_token=env.get("DISCORD_TOKEN", "").strip() or None,
            discord_guild_ids=tuple(guilds),
            discord_api_base=env.get("DISCORD_API_BASE", "").strip() or None,
            discord_gateway_url=env.get("DISCORD_GATEWAY_URL", "").strip() or None,
            redis_url=env.get("BANDMATE_REDIS_URL", "").strip() or None,
            redis_claim_idle_ms=_int(env, "BANDMATE_REDIS_CLAIM_IDLE_MS", 60_000, 10, 86_400_000),
            redis_heartbeat_s=_float(env, "BANDMATE_REDIS_HEARTBEAT_S", 10.0, 0.01, 3600.0),
            redis_max_deliveries=_int(env, "BANDMATE_REDIS_MAX_DELIVERIES", 3, 1, 100),
            log_level=_choice(env, "BANDMATE_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
            c2pa_cert=_path(env, "BANDMATE_C2PA_CERT"),
            c2pa_key=_path(env, "BANDMATE_C2PA_KEY"),
            watermark=_choice(env, "BANDMATE_WATERMARK", "off", ("off", "audioseal")),
            metrics_addr=_address(env, "BANDMATE_METRICS_ADDR"),
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "bandmate.db"

    @property
    def key_dir(self) -> Path:
        """The Content Credentials signing chain (generation/credentials.py KEY_DIR_NAME)."""
        return self.data_dir / "c2pa"

    @property
    def watermark_dir(self) -> Path:
        """Where `bot.py download audioseal` puts the AudioSeal weights."""
        return self.data_dir / "models" / "audioseal"

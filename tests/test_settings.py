"""Settings from the environment (app/settings.py): defaults, the shipped .env.example, and errors that name the
variable at fault without echoing a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from app.settings import DEFAULT_MODEL, Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent


def test_an_empty_environment_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.model == DEFAULT_MODEL and settings.max_batch == 4 and (settings.rate_burst, settings.rate_per_min) == (3, 6.0)
    assert settings.discord_token is None and settings.redis_url is None
    assert settings.db_path == Path("data") / "bandmate.db"


def test_the_shipped_env_example_parses_to_the_defaults():
    shipped = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items()}
    settings = Settings.from_env(shipped)
    assert settings.user_pending == 3 and settings.daily_quota == 200 and settings.max_duration_s == 30.0
    assert settings.melody_model == "facebook/musicgen-melody" and settings.data_dir == Path("./data")


def test_values_are_read_and_trimmed():
    settings = Settings.from_env({"BANDMATE_MODEL": " my/model ", "BANDMATE_MODELS": "a/b, c/d,,",
                                  "DISCORD_GUILD_IDS": "1; 2,3", "BANDMATE_DEVICE": "CPU", "BANDMATE_COMPILE": "yes",
                                  "BANDMATE_MAX_BATCH": "8", "BANDMATE_LOG_LEVEL": "debug"})
    assert settings.model == "my/model" and settings.extra_models == ("a/b", "c/d")
    assert settings.discord_guild_ids == (1, 2, 3) and settings.device == "cpu" and settings.compile is True
    assert settings.max_batch == 8 and settings.log_level == "DEBUG"


@pytest.mark.parametrize("env, named", [
    ({"BANDMATE_MAX_BATCH": "lots"}, "BANDMATE_MAX_BATCH must be a whole number"),
    ({"BANDMATE_MAX_BATCH": "0"}, "BANDMATE_MAX_BATCH must be between 1 and 64"),
    ({"BANDMATE_COOLDOWN_S": "-1"}, "BANDMATE_COOLDOWN_S must be between"),
    ({"BANDMATE_JOB_TIMEOUT_S": "soon"}, "BANDMATE_JOB_TIMEOUT_S must be a number"),
    ({"BANDMATE_DEVICE": "tpu"}, "BANDMATE_DEVICE must be one of auto, cpu, cuda"),
    ({"DISCORD_GUILD_IDS": "123,abc"}, "DISCORD_GUILD_IDS must be comma-separated numeric ids"),
])
def test_a_bad_value_names_its_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_secrets_never_show_in_the_settings_repr():
    settings = Settings.from_env({"DISCORD_TOKEN": "sekrit-token", "BANDMATE_REDIS_URL": "redis://:pw@host/0"})
    assert settings.discord_token == "sekrit-token"
    assert "sekrit" not in repr(settings) and "pw@" not in repr(settings)

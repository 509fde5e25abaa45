"""The wiring (app/services.py): every service built once from the settings, opened and closed with `async with`."""

from __future__ import annotations

import dataclasses

import pytest

from app.services import Application, core_config
from app.settings import Settings
from bot.rate_limit import RateLimit
from generation.atomic import TEMP_PREFIX, write_atomic

pytestmark = pytest.mark.asyncio


async def test_start_sweeps_leftover_writes_and_close_is_idempotent(tmp_path, tiny_model_path):
    settings = dataclasses.replace(Settings.from_env({}), data_dir=tmp_path / "data", model=tiny_model_path,
                                   melody_model=tiny_model_path, device="cpu", dtype="fp32")
    shard = settings.data_dir / "audio" / "ab"
    shard.mkdir(parents=True)
    leftover = shard / f"{TEMP_PREFIX}abcv0.mp3.part"  # what the one atomic writer leaves when killed mid-write
    leftover.write_bytes(b"half a file")
    write_atomic(shard / "kept.mp3", b"whole")
    async with Application(settings) as app:
        assert app.started and not leftover.exists() and (shard / "kept.mp3").read_bytes() == b"whole"
        assert app.core.planner.config.daily_quota == settings.daily_quota  # members get the operator's limits
        assert app.core.help_text()  # the core is wired to the model registry's facts
    await app.close()  # a second close does nothing


async def test_the_operator_s_own_tools_skip_member_fairness_limits():  # async: the module is marked asyncio
    settings = Settings.from_env({"BANDMATE_RATE_BURST": "2", "BANDMATE_RATE_PER_MIN": "5",
                                  "BANDMATE_DAILY_QUOTA": "10"})
    member, operator = core_config(settings), core_config(settings, operator=True)
    assert (member.rate_limit, member.daily_quota) == (RateLimit(2, 5.0), 10)
    assert not operator.rate_limit.enabled and operator.daily_quota > 10**6
    assert dataclasses.replace(operator, rate_limit=RateLimit(2, 5.0), daily_quota=10) == member  # nothing else

"""The one-way shape of the house, read from the imports of every module with `ast`: a forbidden import fails."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = sorted((ROOT / "bot" / "discord").rglob("*.py")) + [ROOT / "bot" / "console.py"]
CORE = sorted(p for p in (ROOT / "bot").glob("*.py") if p.name != "console.py")
# What a transport may take from the engine: the plain values it displays.
TRANSPORT_ENGINE_TYPES = {"generation.events", "generation.jobs"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", TRANSPORTS, ids=rel)
def test_transports_talk_to_the_core_only(path):
    names = imports(path)
    assert not [n for n in names if under(n, "storage")], f"{rel(path)} imports storage"
    engine = {n for n in names if under(n, "generation")}
    assert engine <= TRANSPORT_ENGINE_TYPES, f"{rel(path)} imports {sorted(engine - TRANSPORT_ENGINE_TYPES)}"
    assert not [n for n in names if under(n, "app")], f"{rel(path)} imports the wiring"


@pytest.mark.parametrize("path", CORE, ids=rel)
def test_the_core_knows_no_transport_and_no_sql(path):
    names = imports(path)
    bad = [n for n in names if under(n, "discord") or under(n, "storage") or under(n, "bot.discord")
           or under(n, "bot.console") or under(n, "app") or n in ("sqlite3", "sqlite_utils", "torch")]
    assert not bad, f"{rel(path)} imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "generation").rglob("*.py")), ids=rel)
def test_the_engine_knows_no_conversation_storage_or_discord(path):
    names = imports(path)
    bad = [n for n in names if under(n, "bot") or under(n, "storage") or under(n, "discord") or under(n, "app")
           or n in ("sqlite3", "sqlite_utils")]
    assert not bad, f"{rel(path)} imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "storage").rglob("*.py")), ids=rel)
def test_storage_knows_no_conversation_torch_or_discord(path):
    names = imports(path)
    bad = [n for n in names if under(n, "bot") or under(n, "discord") or under(n, "torch") or under(n, "app")]
    assert not bad, f"{rel(path)} imports {bad}"


def test_the_checker_can_fail(tmp_path):
    """The walk sees imports inside functions too (a lazy import is still a dependency)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from storage.jobstore import SqliteJobStore\n")
    assert "storage.jobstore" in imports(module)

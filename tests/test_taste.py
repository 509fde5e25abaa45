"""Taste: the vocabulary, the profile and its decay, blending, /taste text and chart, and the SQLite store.

Pure functions are tested with plain event objects; the store runs on a real SQLite file under tmp_path (no
mocks). Async tests carry `@pytest.mark.asyncio` and there are no async fixtures, as in test_storage.py.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bot import vocabulary
from bot.taste import (
    EXPLICIT_ADD,
    EXPLICIT_REMOVE,
    EXPLICIT_WEIGHT,
    IMPLICIT_WEIGHTS,
    DAY_S,
    TasteProfile,
    blend,
    decay_factor,
    describe,
    events_for,
    profile,
)
from bot.taste_chart import GROUP_COLOURS, chart_size, taste_chart_png
from generation.jobs import Operation
from storage import DB_FILENAME, Database
from storage import taste as storage_taste
from storage.taste import TasteEvent, TasteStore

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_700_000_000.0


@dataclass
class Ev:
    """Any object with .tag .weight .reason .created will do for `profile`."""

    tag: str
    weight: float
    reason: str | None
    created: float


def acted(operation: str, prompt: str, when: float = NOW) -> list[Ev]:
    return [Ev(tag, weight, reason, when) for tag, weight, reason in events_for(operation, prompt)]


def explicit(tag: str, on: bool, when: float = NOW) -> Ev:
    return Ev(tag, 0.0, EXPLICIT_ADD if on else EXPLICIT_REMOVE, when)


# --- vocabulary -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Jazzy LOFI beat with pianos", ["jazz", "lo-fi", "piano"]),
        ("lo fi hip-hop, chilled", ["lo-fi", "hip hop", "chill"]),
        ("hiphop synths in the 1980s", ["hip hop", "synth", "80s"]),
        ("rock'n'roll guitars, 80's vibe", ["rock", "guitar", "80s"]),
        ("liquid drum and bass", ["drum and bass"]),  # one genre, not drums + bass
        ("upbeat house at 124 BPM", ["upbeat", "house", "tempo:125"]),
        ("low energy soundscape", ["mellow", "ambient"]),
    ],
)
def test_find_tags_synonyms_and_multiword(prompt: str, expected: list[str]) -> None:
    assert vocabulary.find_tags(prompt) == expected


def test_find_tags_word_boundaries() -> None:
    assert vocabulary.find_tags("a warehouse rave in the basement, bassoon") == []
    assert vocabulary.find_tags("funky fun") == ["funk", "playful"]


@pytest.mark.parametrize(
    ("prompt", "wanted", "negated"),
    [
        ("jazz without drums", ["jazz"], ["drums"]),
        ("lofi, no drums, piano", ["lo-fi", "piano"], ["drums"]),
        ("no drums or bass, soft piano", ["soft", "piano"], ["drums", "bass"]),
        ("calm piano w/o any vocals", ["calm", "piano"], ["vocals"]),
        ("not too fast, drumless, vocal-free", [], ["fast", "drums", "vocals"]),
        ("instrumental hip hop", ["hip hop"], ["vocals"]),
        ("drums and a groove, but no drums in the intro", ["groovy"], ["drums"]),
    ],
)
def test_negations_are_not_tags(prompt: str, wanted: list[str], negated: list[str]) -> None:
    found = vocabulary.analyze(prompt)
    assert found.tags == wanted
    assert found.negated == negated
    assert vocabulary.find_tags(prompt) == wanted
    for tag in negated:
        assert tag not in vocabulary.find_tags(prompt)


def test_contradictions_are_symmetric() -> None:
    names = [t.name for t in vocabulary.TAGS] + ["tempo:70", "tempo:90", "tempo:140"]
    for a, b in itertools.combinations(names, 2):
        assert vocabulary.contradicts(a, b) == vocabulary.contradicts(b, a), (a, b)
    for a in names:
        assert not vocabulary.contradicts(a, a)
    pairs = [("calm", "aggressive"), ("slow", "fast"), ("happy", "sad"), ("dark", "bright"), ("acoustic", "electronic")]
    for a, b in pairs:
        assert vocabulary.contradicts(a, b) and vocabulary.contradicts(b, a)
    assert vocabulary.contradicts("techno", "acoustic")  # through techno's implied "electronic"
    assert vocabulary.contradicts("80s", "90s")
    assert vocabulary.contradicts("tempo:70", "fast") and vocabulary.contradicts("tempo:90", "tempo:140")
    assert not vocabulary.contradicts("jazz", "piano")


def test_vocabulary_is_well_formed() -> None:
    names = [t.name for t in vocabulary.TAGS]
    assert len(names) == len(set(names))
    assert all(t.group in vocabulary.GROUPS for t in vocabulary.TAGS)
    assert all(vocabulary.get(i) for t in vocabulary.TAGS for i in t.implies)
    for pair in vocabulary.CONTRADICTIONS:
        assert all(vocabulary.get(tag) for tag in pair), pair
    for tag in vocabulary.TAGS:  # every name and synonym finds its own tag
        for form in (tag.name, *tag.synonyms):
            assert vocabulary.canonical(form) == tag.name, form


def test_canonical_and_suggest() -> None:
    assert vocabulary.canonical("Jazzy") == "jazz"
    assert vocabulary.canonical(" 92 bpm ") == "tempo:90"
    assert vocabulary.canonical("drumless") is None and vocabulary.canonical("zzz") is None
    assert vocabulary.suggest("ja") == ["jazz"]
    history = ["tempo:90", "piano", "jazz", "bogus!"]
    assert vocabulary.suggest("", history)[:3] == ["tempo:90", "piano", "jazz"]
    assert vocabulary.suggest("p", history)[0] == "piano"  # history first
    assert "pop" in vocabulary.suggest("p", history)
    assert "hip hop" in vocabulary.suggest("hop")  # a word inside the name
    assert vocabulary.suggest("lofi") == ["lo-fi"]  # a synonym leads to the canonical name
    assert len(vocabulary.suggest("")) == 25
    assert vocabulary.suggest("120 bpm") == ["tempo:120"]


# --- events and profile ---------------------------------------------------------------------------------------


def test_events_for_operations() -> None:
    assert events_for("vote", "jazz piano") == [("jazz", 1.0, "vote"), ("piano", 1.0, "vote")]
    assert events_for(Operation.MORE_LIKE, "jazz")[0] == ("jazz", 1.5, "more_like")
    assert events_for(Operation.EXTEND, "jazz")[0].weight == 0.75
    assert events_for("continue", "jazz")[0].weight == 0.75
    assert events_for(Operation.REMIX, "jazz")[0].weight == 1.0
    assert events_for("reroll", "jazz") == events_for(Operation.VARIATION, "jazz") == [("jazz", 0.25, "variation")]
    assert events_for(Operation.COMPOSE, "jazz") == []
    assert events_for("vote", "jazz without drums") == [("jazz", 1.0, "vote")]
    assert set(IMPLICIT_WEIGHTS) >= {"vote", "more_like", "extend", "remix", "variation"}


def test_decay_half_life_is_exact() -> None:
    half_life = 30.0
    new = profile(acted("vote", "jazz", NOW), NOW, half_life_days=half_life)
    old = profile(acted("vote", "jazz", NOW - half_life * DAY_S), NOW, half_life_days=half_life)
    older = profile(acted("vote", "jazz", NOW - 3 * half_life * DAY_S), NOW, half_life_days=half_life)
    assert new.score("jazz") == pytest.approx(1.0, abs=1e-6)
    assert old.score("jazz") == pytest.approx(0.5, abs=1e-6)
    assert older.score("jazz") == pytest.approx(0.125, abs=1e-6)
    assert old.score("jazz") < new.score("jazz")
    short = profile(acted("vote", "jazz", NOW - 7 * DAY_S), NOW, half_life_days=7)
    assert short.score("jazz") == pytest.approx(0.5, abs=1e-6)
    assert decay_factor(-DAY_S) == 1.0  # an event from the future never counts more than a new one


def test_explicit_does_not_decay_and_remove_excludes() -> None:
    long_ago = NOW - 365 * DAY_S
    p = profile([explicit("piano", True, long_ago), *acted("vote", "rock", long_ago)], NOW)
    assert p.score("piano") == pytest.approx(EXPLICIT_WEIGHT)
    assert p.entries["piano"].explicit
    assert p.score("rock") < 0.01
    events = [*acted("more_like", "rock metal", NOW), explicit("rock", False, NOW + 1)]
    removed = profile(events, NOW + 2)
    assert "rock" in removed.excluded and "rock" not in removed.entries
    readded = profile([*events, explicit("rock", True, NOW + 3)], NOW + 4)
    assert "rock" not in readded.excluded
    assert readded.score("rock") == pytest.approx(EXPLICIT_WEIGHT + 1.5, abs=1e-4)


# --- blending -------------------------------------------------------------------------------------------------


def test_three_jazz_votes_blend_jazz_into_more_like_this() -> None:
    events = [
        *acted("vote", "smooth jazz with saxophone", NOW - 3 * DAY_S),
        *acted("vote", "late night jazz club", NOW - 2 * DAY_S),
        *acted("vote", "jazz trio, brushed", NOW - DAY_S),
    ]
    p = profile(events, NOW)
    assert p.top(1)[0].tag == "jazz"
    result = blend("gentle piano melody", p)
    assert "jazz" in result.added
    assert result.prompt.startswith("gentle piano melody, ") and "jazz" in result.prompt
    assert "jazz" in result.message and result.message.startswith("Blended in your taste:")
    assert len(result.added) <= 3
    # One vote is not yet a taste.
    assert blend("gentle piano melody", profile(acted("vote", "jazz"), NOW)).added == []


def test_blend_never_adds_a_contradiction() -> None:
    events = [explicit("calm", True), *acted("more_like", "calm soothing ambient drone"), *acted("vote", "acoustic")]
    p = profile(events * 3, NOW)
    assert p.top(1)[0].tag == "calm"
    result = blend("aggressive metal", p)
    assert "calm" not in result.added and "calm" not in result.prompt
    assert ("calm", "contradicts aggressive") in result.skipped
    assert "ambient" not in result.added  # the prompt already has its genre
    # Added tags do not contradict each other either.
    p2 = profile([explicit("fast", True), explicit("slow", True), explicit("piano", True)], NOW)
    added = blend("piano", p2, max_tags=3).added
    assert not ({"fast", "slow"} <= set(added))
    assert all(not vocabulary.contradicts(a, b) for a, b in itertools.combinations(added, 2))
    # Implied contradictions: techno implies electronic, which "acoustic" fights.
    assert "acoustic" not in blend("dark techno", p).added


def test_blend_respects_exclusions_presence_negation_and_limit() -> None:
    events = [*acted("more_like", "jazz piano drums strings synth", NOW)] * 4
    events.append(explicit("piano", False, NOW))
    p = profile(events, NOW)
    result = blend("drumless lofi", p, max_tags=2)
    assert "piano" not in result.added and "piano" not in result.prompt  # excluded
    assert "drums" not in result.added  # the prompt says no
    assert "jazz" not in result.added  # lofi already sets the genre
    assert len(result.added) == 2
    again = blend("jazz strings", p, max_tags=5)
    assert again.added == ["drums", "synth"]  # tags already in the prompt are not repeated
    assert ("jazz", "already in the prompt") in again.skipped
    assert blend("x", p, max_tags=0).added == []
    empty = blend("plain prompt", TasteProfile(entries={}))
    assert empty.prompt == "plain prompt" and empty.message == "" and empty.added == []


def test_blend_adds_stated_tempo_as_bpm() -> None:
    p = profile(acted("more_like", "lofi at 90 bpm") * 3, NOW)
    assert blend("piano", p).prompt == "piano, lo-fi, 90 bpm"
    assert "tempo:90" not in blend("fast piano", p).added  # 90 bpm is not fast
    assert "tempo:90" not in blend("piano at 120 bpm", p).added  # one tempo per prompt


# --- describe and chart ---------------------------------------------------------------------------------------


def test_describe_has_reasons_with_counts() -> None:
    events = [*acted("vote", "jazz piano")] * 5 + [*acted("more_like", "jazz")] * 2 + [explicit("rock", False)]
    text = describe(profile(events, NOW))
    assert "jazz" in text and "you voted for 5 jazz tracks" in text and "you \u2764 2" in text
    assert "rock" in text  # listed as never blended
    assert len(text) < 2000
    many = [Ev(f"tag{i:03d}", 1.0 + i, "vote", NOW) for i in range(300)]
    assert len(describe(profile(many, NOW), limit=300)) <= 2000
    assert "don't know your taste" in describe(profile([], NOW))


def test_chart_png_size_and_content(tmp_path: Path) -> None:
    events = [*acted("vote", "jazz piano chill 80s acoustic", NOW)] * 3 + [explicit("calm", True)]
    p = profile(events, NOW)
    path = taste_chart_png(p, tmp_path / "charts" / "taste.png", title="alice's fingerprint")
    assert path.exists()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == chart_size(len(p.top())) == (800, chart_size(6)[1])
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not blank: text, bars, anti-aliasing
    present = {c for _, c in colours}
    for group in ("genre", "instrument", "mood"):
        assert GROUP_COLOURS[group] in present, group  # bars coloured by group
    empty = taste_chart_png(profile([], NOW), tmp_path / "empty.png")
    with Image.open(empty) as img:
        assert img.size == chart_size(0)
    many = profile([Ev(f"tag{i}", 1.0 + i, "vote", NOW) for i in range(30)], NOW)
    with Image.open(taste_chart_png(many, tmp_path / "many.png")) as img:
        assert img.size == chart_size(10)


# --- storage --------------------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "data" / DB_FILENAME)
    yield database
    database.close()


@pytest.mark.asyncio
async def test_store_round_trip(db: Database) -> None:
    store = TasteStore(db)
    first = await store.record("u1", "jazz", 1.0, "vote", track_id="t1", created=NOW - 10)
    assert isinstance(first, TasteEvent) and first.id is not None
    assert await store.record("u1", "jazz", 1.0, "vote", track_id="t1") is None  # same track, same signal: once
    stored = await store.record_many("u1", events_for("more_like", "jazz piano"), track_id="t2", created=NOW)
    assert [e.tag for e in stored] == ["jazz", "piano"]
    await store.set_explicit("u1", "rock", False, created=NOW + 1)
    await store.set_explicit("u1", "calm", True, created=NOW + 2)
    await store.set_explicit("u1", "rock", True, created=NOW + 3)  # replaces the removal

    events = await store.events("u1")
    assert [(e.tag, e.weight, e.reason, e.track_id) for e in events] == [
        ("jazz", 1.0, "vote", "t1"),
        ("jazz", 1.5, "more_like", "t2"),
        ("piano", 1.5, "more_like", "t2"),
        ("calm", 0.0, EXPLICIT_ADD, None),
        ("rock", 0.0, EXPLICIT_ADD, None),
    ]
    assert events[0].created == NOW - 10 and all(e.user_id == "u1" for e in events)
    assert await store.explicit("u1") == {"calm": True, "rock": True}
    await store.set_explicit("u1", "calm", False)
    assert await store.explicit("u1") == {"calm": False, "rock": True}
    assert await store.history_tags("u1") == ["calm", "rock", "jazz", "piano"]
    assert len(await store.events("u1", since=NOW)) == 4

    # The stored events feed the pure profile directly.
    p = profile(await store.events("u1"), NOW + 10)
    assert "calm" in p.excluded and p.entries["rock"].explicit
    assert p.score("jazz") == pytest.approx(2.5, abs=1e-3)


@pytest.mark.asyncio
async def test_forget_removes_only_that_user(db: Database) -> None:
    store = TasteStore(db)
    await store.record_many("u1", events_for("vote", "jazz piano drums"), track_id="t1")
    await store.set_explicit("u1", "calm", True)
    await store.record_many("u2", events_for("vote", "metal"), track_id="t1")
    await store.set_explicit("u2", "rock", False)
    assert await store.forget("u1") == 4
    assert await store.events("u1") == []
    assert await store.explicit("u1") == {}
    assert await store.history_tags("u1") == []
    assert [e.tag for e in await store.events("u2")] == ["metal", "rock"]
    assert await store.forget("u1") == 0


def test_explicit_reason_constants_match_storage() -> None:
    assert storage_taste.EXPLICIT_ADD == EXPLICIT_ADD
    assert storage_taste.EXPLICIT_REMOVE == EXPLICIT_REMOVE


def test_layers_stay_clean() -> None:
    forbidden = {
        "bot": {"sqlite3", "sqlite_utils", "torch", "discord", "storage"},
        "storage": {"discord", "torch", "bot"},
    }
    files = {"bot": ["bot/taste.py", "bot/vocabulary.py", "bot/taste_chart.py"], "storage": ["storage/taste.py"]}
    for layer, paths in files.items():
        for rel in paths:
            tree = ast.parse((ROOT / rel).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots = {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {(node.module or "").split(".")[0]}
                else:
                    continue
                assert not roots & forbidden[layer], f"{rel} imports {roots & forbidden[layer]}"

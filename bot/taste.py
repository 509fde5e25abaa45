"""A user's musical fingerprint: which style tags they reach for, and how to blend them into a prompt.

Transport-free and storage-free: functions take plain values (events with `.tag .weight .reason .created`, as
`storage.taste.TasteEvent` has) and return plain values, so "more like this" can be tested without Discord or a
database.

Why these weights: a ❤ ("more like this") is the strongest implicit signal, a vote is a clear preference, keeping
a track going (extend/continue) or reshaping it (remix) shows interest, and a reroll says little beyond "near
this". Implicit signals fade with a half-life (30 days by default) because taste drifts and one binge should not
define someone forever. `/style add` is a statement, so it does not fade; `/style remove` is a veto that holds
until the tag is added again.

Why blending is conservative: the prompt is what the user asked for *now*. Taste only fills gaps: never a tag
the prompt contradicts (no "calm" in an "aggressive metal" prompt), never a second genre or era, never a tag the
prompt says no to ("no drums"), never a vetoed tag, and only a few tags.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Protocol

from bot import vocabulary

log = logging.getLogger(__name__)

DAY_S = 86_400.0
HALF_LIFE_DAYS = 30.0
EXPLICIT_WEIGHT = 3.0
MIN_BLEND_SCORE = 1.25  # two votes, or one fresh ❤, or /style add: a single vote or reroll is not a taste yet
DISCORD_LIMIT = 2000

# Must equal storage.taste.EXPLICIT_ADD / EXPLICIT_REMOVE (a test checks): bot/ does not import storage/.
EXPLICIT_ADD = "style_add"
EXPLICIT_REMOVE = "style_remove"

# Canonical reason -> weight of one implicit event per tag of the track.
IMPLICIT_WEIGHTS: dict[str, float] = {
    "vote": 1.0,
    "more_like": 1.5,
    "extend": 0.75,
    "continue": 0.75,
    "remix": 1.0,
    "variation": 0.25,
}
# What callers may pass as the operation (Operation values, button names) -> the canonical reason.
_OPERATION_ALIASES: dict[str, str] = {
    "vote": "vote",
    "voted": "vote",
    "more_like": "more_like",
    "more-like": "more_like",
    "more like this": "more_like",
    "heart": "more_like",
    "like": "more_like",
    "\u2764": "more_like",
    "\u2764\ufe0f": "more_like",
    "extend": "extend",
    "continue": "continue",
    "remix": "remix",
    "variation": "variation",
    "variations": "variation",
    "reroll": "variation",
}
# How each reason reads in /taste: "you {verb} {n}".
_REASON_VERBS: dict[str, str] = {
    "vote": "voted for",
    "more_like": "\u2764",
    "extend": "extended",
    "continue": "continued",
    "remix": "remixed",
    "variation": "rerolled",
}


class EventLike(Protocol):
    """What `profile` needs from a stored event (storage.taste.TasteEvent fits)."""

    tag: str
    weight: float
    reason: str | None
    created: float


class TasteSignal(NamedTuple):
    """One event an action produces: record it with `TasteStore.record_many`."""

    tag: str
    weight: float
    reason: str


def canonical_reason(operation: object) -> str | None:
    """The reason key for an operation (a string or an `Operation`-like enum), or None if it says nothing."""
    raw = getattr(operation, "value", operation)
    return _OPERATION_ALIASES.get(str(raw).strip().lower())


def events_for(operation: object, track_prompt: str) -> list[TasteSignal]:
    """The taste events an action on a track produces: one per tag of the track's prompt.

    Voting for "jazz piano" -> [("jazz", 1.0, "vote"), ("piano", 1.0, "vote")]. Unknown operations (compose, ...)
    and prompts without known tags produce nothing; negated tags ("no drums") are never learnt as liked.
    """
    reason = canonical_reason(operation)
    if reason is None:
        log.debug("operation %r carries no taste signal", operation)
        return []
    weight = IMPLICIT_WEIGHTS[reason]
    return [TasteSignal(tag, weight, reason) for tag in vocabulary.find_tags(track_prompt)]


def decay_factor(age_s: float, half_life_days: float = HALF_LIFE_DAYS) -> float:
    """0.5 ** (age / half-life); events from the future (clock skew) count as now, never more."""
    if half_life_days <= 0:
        raise ValueError("half_life_days must be positive")
    return 0.5 ** (max(0.0, age_s) / (half_life_days * DAY_S))


@dataclass(frozen=True)
class TagScore:
    """One tag of a profile: its score and where it came from."""

    tag: str
    score: float
    implicit: float  # decayed sum of implicit events
    explicit: bool  # added with /style add
    counts: dict[str, int] = field(default_factory=dict)  # reason -> number of implicit events

    @property
    def group(self) -> str | None:
        return vocabulary.group_of(self.tag)

    @property
    def reason(self) -> str:
        """Why the tag is in the profile: "you voted for 5 jazz tracks; you ❤ 2"."""
        parts: list[str] = []
        if self.explicit:
            parts.append("you added it with /style add")
        ordered = sorted(self.counts.items(), key=lambda kv: (-IMPLICIT_WEIGHTS.get(kv[0], 0.0) * kv[1], kv[0]))
        for i, (reason, n) in enumerate(ordered):
            verb = _REASON_VERBS.get(reason)
            text = f"you {verb} {n}" if verb else f"{reason} \u00d7{n}"
            if i == 0 and verb:
                text += f" {vocabulary.display(self.tag)} track" + ("s" if n != 1 else "")
            parts.append(text)
        return "; ".join(parts)


@dataclass(frozen=True)
class TasteProfile:
    """Tag -> score for one user at one moment, plus the tags they vetoed."""

    entries: dict[str, TagScore]
    excluded: frozenset[str] = frozenset()
    now: float = 0.0
    half_life_days: float = HALF_LIFE_DAYS

    @property
    def scores(self) -> dict[str, float]:
        return {tag: e.score for tag, e in self.entries.items()}

    def score(self, tag: str) -> float:
        entry = self.entries.get(tag)
        return entry.score if entry else 0.0

    def reason(self, tag: str) -> str:
        entry = self.entries.get(tag)
        return entry.reason if entry else ""

    def top(self, n: int | None = None, *, min_score: float = 0.0) -> list[TagScore]:
        """Positive-scoring tags, strongest first (ties by name, so the order is stable)."""
        ranked = sorted(
            (e for e in self.entries.values() if e.score > 0 and e.score >= min_score),
            key=lambda e: (-e.score, e.tag),
        )
        return ranked if n is None else ranked[:n]

    @property
    def empty(self) -> bool:
        return not self.top(1)


def profile(events: Iterable[EventLike], now: float, *, half_life_days: float = HALF_LIFE_DAYS) -> TasteProfile:
    """Fold a user's events into a profile as seen at `now` (epoch seconds). Pure: same input, same output.

    Implicit events add `weight * decay`; the latest explicit event per tag decides whether it is added (+3,
    no decay) or excluded (left out of `entries`, listed in `excluded`). Tags are re-canonicalised, so events
    stored under an old synonym still count.
    """
    implicit: dict[str, float] = defaultdict(float)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    explicit_state: dict[str, tuple[float, int, bool]] = {}  # tag -> (created, order, on)
    for order, event in enumerate(events):
        tag = vocabulary.canonical(event.tag) or event.tag
        if event.reason in (EXPLICIT_ADD, EXPLICIT_REMOVE):
            key = (float(event.created), order)
            if tag not in explicit_state or key >= explicit_state[tag][:2]:
                explicit_state[tag] = (key[0], key[1], event.reason == EXPLICIT_ADD)
            continue
        implicit[tag] += float(event.weight) * decay_factor(now - float(event.created), half_life_days)
        counts[tag][event.reason or "other"] += 1

    added = {tag for tag, (_, _, on) in explicit_state.items() if on}
    excluded = frozenset(tag for tag, (_, _, on) in explicit_state.items() if not on)
    entries: dict[str, TagScore] = {}
    for tag in (set(implicit) | added) - excluded:
        value = implicit.get(tag, 0.0)
        score = value + (EXPLICIT_WEIGHT if tag in added else 0.0)
        if tag not in added and abs(score) < 1e-12:
            continue
        entries[tag] = TagScore(tag, score, value, tag in added, dict(counts.get(tag, {})))
    return TasteProfile(entries=entries, excluded=excluded, now=now, half_life_days=half_life_days)


@dataclass(frozen=True)
class Blend:
    """A prompt with the user's taste blended in, and what was left out and why."""

    prompt: str
    added: list[str]
    skipped: list[tuple[str, str]]
    original: str = ""

    @property
    def message(self) -> str:
        """"Blended in your taste: jazz, piano", or "" when nothing was added."""
        if not self.added:
            return ""
        return "Blended in your taste: " + ", ".join(vocabulary.display(t) for t in self.added)


def _join(prompt: str, tags: list[str]) -> str:
    base = prompt.strip().rstrip(",;")
    extra = ", ".join(vocabulary.display(t) for t in tags)
    if not extra:
        return prompt.strip()
    return f"{base}, {extra}" if base else extra


def blend(
    prompt: str, taste: TasteProfile, *, max_tags: int = 3, min_score: float = MIN_BLEND_SCORE
) -> Blend:
    """Add up to `max_tags` of the user's strongest compatible tags to `prompt` (see the module docstring).

    Tags below `min_score` are not a taste yet. `skipped` lists strong tags that were considered and refused,
    with a reason a message can show ("contradicts aggressive").
    """
    found = vocabulary.analyze(prompt)
    present = list(found.tags)
    negated = set(found.negated)
    in_group = Counter(vocabulary.group_of(t) for t in present)
    added: list[str] = []
    skipped: list[tuple[str, str]] = []
    for entry in taste.top(min_score=min_score):
        if len(added) >= max(0, max_tags):
            break
        tag = entry.tag
        if tag in taste.excluded:  # not in entries by construction; kept as a guard for hand-built profiles
            continue
        if tag in present:
            skipped.append((tag, "already in the prompt"))
            continue
        if tag in negated:
            skipped.append((tag, f"the prompt asks for no {vocabulary.display(tag)}"))
            continue
        clash = next((other for other in (*present, *added) if vocabulary.contradicts(tag, other)), None)
        if clash is not None:
            skipped.append((tag, f"contradicts {vocabulary.display(clash)}"))
            continue
        group = vocabulary.group_of(tag)
        limit = vocabulary.BLEND_GROUP_LIMITS.get(group or "")
        if limit is not None and in_group[group] >= limit:
            holder = next(t for t in (*present, *added) if vocabulary.group_of(t) == group)
            skipped.append((tag, f"the {group} is already set ({vocabulary.display(holder)})"))
            continue
        added.append(tag)
        in_group[group] += 1
    if added:
        log.debug("blended %s into %r", added, prompt)
    return Blend(prompt=_join(prompt, added), added=added, skipped=skipped, original=prompt)


def describe(taste: TasteProfile, *, limit: int = 10, max_chars: int = DISCORD_LIMIT) -> str:
    """`/taste` text: the top tags with scores and reasons, and the vetoed tags, within `max_chars`."""
    header = "**Your musical fingerprint**"
    top = taste.top(limit)
    if not top and not taste.excluded:
        return (
            f"{header}\nI don't know your taste yet. Vote for tracks, press \u2764 on the ones you love, "
            "or tell me with `/style add`."
        )
    lines = [header]
    if top:
        width = len(str(len(top)))
        for i, entry in enumerate(top, 1):
            group = vocabulary.GROUP_LABELS.get(entry.group or "", "other")
            pin = " \U0001f4cc" if entry.explicit else ""
            lines.append(
                f"`{i:>{width}}.` **{vocabulary.display(entry.tag)}**{pin} ({group}, {entry.score:.1f}) "
                f"\u2014 {entry.reason}"
            )
    else:
        lines.append("No favourite tags yet.")
    footer: list[str] = []
    if taste.excluded:
        names = ", ".join(vocabulary.display(t) for t in sorted(taste.excluded))
        footer.append(f"Never blended in: {names} (`/style add` brings one back).")
    footer.append(
        f"Recent actions count most (half-life {taste.half_life_days:g} days); \U0001f4cc = added with `/style add`."
    )
    text = "\n".join(lines + footer)
    while len(text) > max_chars and len(lines) > 2:
        lines.pop()  # drop the weakest tag until it fits
        text = "\n".join(lines + ["\u2026"] + footer)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text

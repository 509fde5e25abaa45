"""The style tags Bandmate understands, and how to find them in a free-text prompt.

Why a fixed vocabulary: a taste profile is only useful if "jazzy", "Jazz" and "jazz-inspired" all count as one
thing, and blending is only safe if we know that "calm" fights "aggressive". Free-form keyword extraction knows
neither, so every tag here has a canonical name, a group, the surface forms that mean it, and the tags it
contradicts. Contradictions are stored once as pairs and looked up both ways, so they are symmetric by
construction.

Matching is case-insensitive and on word boundaries ("house" does not match "warehouse"), the longest surface
form wins ("drum and bass" is one genre, not drums plus bass), and multi-word forms accept spaces, hyphens or
nothing between words ("lo fi", "lo-fi", "lofi"). Negated mentions ("no drums", "without vocals or bass",
"drumless", "vocal-free", "instrumental") are reported separately and never count as the tag itself.

Tempo in beats per minute is a tag too: "90 bpm" -> "tempo:90", rounded to the nearest 5 so that 88 and 90 teach
the same taste.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

log = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("genre", "mood", "instrument", "tempo", "era", "sound")
GROUP_LABELS: dict[str, str] = {
    "genre": "genre",
    "mood": "mood",
    "instrument": "instrument",
    "tempo": "tempo & energy",
    "era": "era",
    "sound": "sound",
}

BPM_PREFIX = "tempo:"
BPM_GROUP = "tempo"
BPM_MIN, BPM_MAX = 30, 300
# A stated tempo at or below these is neither "fast" nor "upbeat"; at or above NOT_SLOW_BPM it is not "slow".
NOT_FAST_BPM, NOT_UPBEAT_BPM, NOT_SLOW_BPM = 95, 80, 120

MAX_SUGGESTIONS = 25  # Discord's autocomplete limit


@dataclass(frozen=True)
class Tag:
    """One canonical style tag. `implies` lets "techno" carry "electronic" into contradiction checks."""

    name: str
    group: str
    synonyms: tuple[str, ...] = ()
    implies: tuple[str, ...] = ()


def _t(group: str, name: str, *synonyms: str, implies: tuple[str, ...] = ()) -> Tag:
    return Tag(name, group, tuple(synonyms), implies)


def _plural(*words: str) -> tuple[str, ...]:
    """Instruments are often named in the plural ("pianos", "synths")."""
    out: list[str] = []
    for word in words:
        out.append(word)
        out.append(word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s"))
    return tuple(out)


_ELECTRONIC = ("electronic",)

TAGS: tuple[Tag, ...] = (
    # --- genres ---------------------------------------------------------------------------------------------
    _t("genre", "jazz", "jazzy", "jazz-inspired", "bebop", "swing jazz"),
    _t("genre", "lo-fi", "lofi", "low-fi", "low fi"),
    _t("genre", "rock", "rock and roll", "rock n roll", "rock'n'roll", "rock 'n' roll", "post-rock"),
    _t("genre", "techno", "techno-inspired", implies=_ELECTRONIC),
    _t("genre", "house", "deep house", "tech house", implies=_ELECTRONIC),
    _t("genre", "hip hop", "hip-hop", "hiphop", "boom bap", "rap"),
    _t("genre", "ambient", "ambience", "soundscape"),
    _t("genre", "orchestral", "orchestra", "symphonic", "symphony", "orchestration"),
    _t("genre", "classical", "neoclassical", "neo-classical", "baroque"),
    _t("genre", "funk", "funky"),
    _t("genre", "metal", "heavy metal", "metalcore", "death metal", "black metal", "thrash metal", implies=("heavy",)),
    _t("genre", "folk", "folky", "folksy"),
    _t("genre", "reggae", "dub reggae", "roots reggae"),
    _t("genre", "blues", "bluesy"),
    _t("genre", "synthwave", "retrowave", "outrun", implies=_ELECTRONIC),
    _t("genre", "drum and bass", "drum n bass", "drum'n'bass", "drum & bass", "dnb", "d&b", "jungle",
       implies=_ELECTRONIC),
    _t("genre", "pop", "k-pop", "kpop", "j-pop", "jpop"),
    _t("genre", "synthpop", "synth-pop", "synth pop", "electropop", implies=_ELECTRONIC),
    _t("genre", "edm", "electronic dance music", "big room", implies=_ELECTRONIC),
    _t("genre", "trance", "psytrance", implies=_ELECTRONIC),
    _t("genre", "dubstep", "brostep", implies=_ELECTRONIC),
    _t("genre", "disco", "nu-disco", "nu disco"),
    _t("genre", "soul", "soulful", "neo soul", "neo-soul", "motown"),
    _t("genre", "r&b", "rnb", "r and b", "rhythm and blues"),
    _t("genre", "country", "bluegrass", "americana"),
    _t("genre", "punk", "punk rock", "pop punk", "pop-punk"),
    _t("genre", "indie", "indie rock", "indie pop"),
    _t("genre", "chiptune", "8-bit", "8 bit", "chip tune", "video game music", implies=_ELECTRONIC),
    _t("genre", "trap", "trap beat"),
    _t("genre", "bossa nova", "bossanova", "samba"),
    _t("genre", "latin", "salsa", "reggaeton", "cumbia"),
    _t("genre", "cinematic", "film score", "movie score", "soundtrack", "trailer music"),
    _t("genre", "gospel", "spiritual"),
    _t("genre", "new age", "new-age", "meditation music"),
    _t("genre", "shoegaze", "dream pop", "dream-pop"),
    _t("genre", "breakbeat", "breakbeats", "big beat", implies=_ELECTRONIC),
    _t("genre", "downtempo", "trip hop", "trip-hop"),
    _t("genre", "afrobeat", "afrobeats", "afro beat"),
    # --- moods ----------------------------------------------------------------------------------------------
    _t("mood", "calm", "calming", "peaceful", "serene", "tranquil", "relaxing", "relaxed", "soothing"),
    _t("mood", "happy", "joyful", "cheerful", "joyous", "feel-good", "feel good"),
    _t("mood", "sad", "melancholic", "melancholy", "sorrowful", "somber", "sombre", "mournful", "sadness"),
    _t("mood", "dark", "darker", "ominous", "sinister", "gloomy", "brooding"),
    _t("mood", "bright", "sunny", "shimmering", "sparkling"),
    _t("mood", "dreamy", "ethereal", "dreamlike", "dream-like", "hazy"),
    _t("mood", "aggressive", "angry", "fierce", "furious", "brutal", "violent"),
    _t("mood", "epic", "heroic", "majestic", "triumphant", "grandiose"),
    _t("mood", "romantic", "sensual", "love song"),
    _t("mood", "mysterious", "mystical", "eerie", "enigmatic"),
    _t("mood", "nostalgic", "nostalgia", "wistful"),
    _t("mood", "playful", "quirky", "whimsical", "fun", "bouncy"),
    _t("mood", "uplifting", "inspiring", "inspirational", "hopeful", "motivational", "euphoric"),
    _t("mood", "tense", "suspense", "suspenseful", "tension", "anxious"),
    _t("mood", "groovy", "groove", "grooving", "grooves"),
    _t("mood", "smooth", "silky", "velvety"),
    # --- instruments ----------------------------------------------------------------------------------------
    _t("instrument", "piano", *_plural("piano")[1:], "grand piano", "pianist"),
    _t("instrument", "electric piano", "electric pianos", "rhodes", "wurlitzer", "e-piano"),
    _t("instrument", "guitar", *_plural("guitar")[1:], "electric guitar", "guitarist", "guitar riff", "guitar riffs"),
    _t("instrument", "bass", "basses", "bassline", "basslines", "bass line", "bass guitar", "bass lines"),
    _t("instrument", "drums", "drum", "drumming", "drum kit", "drumkit", "drummer"),
    _t("instrument", "percussion", "percussive", "congas", "bongos"),
    _t("instrument", "strings", "string section", "string quartet", "string ensemble"),
    _t("instrument", "violin", *_plural("violin")[1:], "fiddle", "fiddles"),
    _t("instrument", "cello", *_plural("cello")[1:]),
    _t("instrument", "synth", *_plural("synth")[1:], "synthesizer", "synthesizers", "synthesiser", "synthesisers"),
    _t("instrument", "saxophone", *_plural("saxophone")[1:], "sax", "saxes", "saxophonist"),
    _t("instrument", "trumpet", *_plural("trumpet")[1:], "trumpeter"),
    _t("instrument", "brass", "horns", "horn section", "brass section"),
    _t("instrument", "flute", *_plural("flute")[1:]),
    _t("instrument", "vocals", "vocal", "voice", "voices", "singing", "singer", "vocalist"),
    _t("instrument", "choir", "choirs", "choral"),  # not "chorus": that is a song section
    _t("instrument", "organ", "organs", "hammond"),
    _t("instrument", "harp", "harps"),
    _t("instrument", "ukulele", "ukuleles", "uke"),
    _t("instrument", "banjo", "banjos"),
    _t("instrument", "harmonica", "harmonicas"),
    _t("instrument", "accordion", "accordions"),
    _t("instrument", "bells", "bell", "chimes", "glockenspiel"),
    _t("instrument", "marimba", "marimbas", "vibraphone", "xylophone"),
    _t("instrument", "808", "808s", "tr-808"),
    # --- tempo & energy -------------------------------------------------------------------------------------
    _t("tempo", "slow", "slower", "slowly", "slow-paced", "slow paced", "slow tempo"),
    _t("tempo", "fast", "faster", "fast-paced", "fast paced", "fast tempo", "quick", "rapid", "speedy"),
    _t("tempo", "upbeat", "up-beat", "up tempo", "uptempo", "up-tempo"),
    _t("tempo", "mid-tempo", "midtempo", "mid tempo", "moderate tempo"),
    _t("tempo", "chill", "chilled", "chillout", "chill-out", "chilled out", "chilling",
       "laid back", "laid-back", "laidback"),
    _t("tempo", "energetic", "high energy", "high-energy", "lively", "driving", "energised", "energized", "pumping"),
    _t("tempo", "mellow", "low energy", "low-energy", "mellowed"),
    _t("tempo", "heavy", "heavier", "crushing"),
    _t("tempo", "soft", "softer", "gentle", "quiet", "delicate"),
    # --- eras -----------------------------------------------------------------------------------------------
    _t("era", "50s", "1950s", "50's", "fifties"),
    _t("era", "60s", "1960s", "60's", "sixties"),
    _t("era", "70s", "1970s", "70's", "seventies"),
    _t("era", "80s", "1980s", "80's", "eighties"),
    _t("era", "90s", "1990s", "90's", "nineties"),
    _t("era", "2000s", "y2k", "noughties", "00s"),
    _t("era", "retro", "retro-inspired", "old school", "old-school", "oldschool", "throwback"),
    _t("era", "vintage", "old-timey", "gramophone", "vinyl"),
    _t("era", "modern", "contemporary"),
    _t("era", "futuristic", "sci-fi", "scifi", "cyberpunk"),
    # --- sound ----------------------------------------------------------------------------------------------
    _t("sound", "acoustic", "unplugged"),
    _t("sound", "electronic", "electronica", "electro", "digital"),
    _t("sound", "analog", "analogue"),
    _t("sound", "minimal", "minimalist", "minimalistic", "sparse"),
    _t("sound", "atmospheric", "spacious", "lush"),
    _t("sound", "distorted", "distortion", "gritty", "fuzzy", "fuzz"),
)

_DECADES = ("50s", "60s", "70s", "80s", "90s", "2000s")

# Pairs that should never meet in one prompt. Stored once; `contradicts` looks them up both ways.
CONTRADICTIONS: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in (
        ("calm", "aggressive"),
        ("calm", "energetic"),
        ("calm", "tense"),
        ("calm", "heavy"),
        ("chill", "aggressive"),
        ("chill", "energetic"),
        ("chill", "tense"),
        ("mellow", "aggressive"),
        ("mellow", "energetic"),
        ("mellow", "heavy"),
        ("soft", "aggressive"),
        ("soft", "heavy"),
        ("soft", "distorted"),
        ("slow", "fast"),
        ("slow", "upbeat"),
        ("slow", "mid-tempo"),
        ("fast", "mid-tempo"),
        ("happy", "sad"),
        ("happy", "dark"),
        ("happy", "tense"),
        ("uplifting", "sad"),
        ("uplifting", "dark"),
        ("playful", "sad"),
        ("playful", "dark"),
        ("dark", "bright"),
        ("romantic", "aggressive"),
        ("smooth", "aggressive"),
        ("smooth", "distorted"),
        ("acoustic", "electronic"),
        ("acoustic", "synth"),
        ("acoustic", "808"),
        ("minimal", "epic"),
        ("modern", "retro"),
        ("modern", "vintage"),
        ("futuristic", "vintage"),
        *(("modern", decade) for decade in _DECADES),
        *((a, b) for i, a in enumerate(_DECADES) for b in _DECADES[i + 1 :]),  # one decade at a time
    )
)

# Blending adds a tag from these groups only while the prompt (plus what was already added) holds fewer than this
# many: the genre and the era are the user's choice, taste only fills in around them.
BLEND_GROUP_LIMITS: dict[str, int] = {"genre": 1, "era": 1}

# Words that turn the tags after them into negated mentions, and the filler words allowed in between
# ("without any drums", "not too fast", "no drums or bass").
_NEGATORS = frozenset(
    "no not without minus except never zero sans avoid avoiding lacking less fewer neither nor non skip".split()
)
_FILLERS = frozenset("any the a an much too very so overly loud prominent real live obvious audible or and nor".split())
_CLAUSE_BREAK = frozenset(",.;:!?()[]|\n")
_NEUTRAL_PUNCTUATION = frozenset("-/&+'\"")
# Whole words that are themselves a negated tag.
_NEGATIVE_FORMS: dict[str, str] = {
    "drumless": "drums",
    "beatless": "drums",
    "vocalless": "vocals",
    "instrumental": "vocals",
    "instrumentals": "vocals",
}

_BY_NAME: dict[str, Tag] = {tag.name: tag for tag in TAGS}


@dataclass(frozen=True)
class TagMatch:
    """Tags found in a prompt: `tags` are asked for, `negated` are explicitly not wanted (both in prompt order)."""

    tags: list[str]
    negated: list[str]


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u2013", "-").replace("\u2014", "-")
    return re.sub(r"\bw/o\b", "without", text)


def _form_pattern(form: str) -> str:
    # Words of a multi-word form may be joined by spaces, hyphens, underscores or nothing: "lo fi"/"lo-fi"/"lofi".
    words = [w for w in re.split(r"[\s\-_]+", form) if w]
    return r"[\s\-_]*".join(re.escape(w) for w in words)


def _squash(form: str) -> str:
    return re.sub(r"[\s\-_]+", "", _normalise(form))


@lru_cache(maxsize=1)
def _index() -> tuple[re.Pattern[str], dict[str, tuple[str, bool]]]:
    """The master regex of every surface form (longest first) and squashed form -> (tag, negated)."""
    forms: dict[str, tuple[str, bool]] = {}
    for tag in TAGS:
        for form in (tag.name, *tag.synonyms):
            key = _squash(form)
            if key in forms and forms[key][0] != tag.name:
                raise ValueError(f"surface form {form!r} claimed by {forms[key][0]!r} and {tag.name!r}")
            forms[key] = (tag.name, False)
    for form, name in _NEGATIVE_FORMS.items():
        forms[_squash(form)] = (name, True)
    surface = sorted(
        {_normalise(f) for t in TAGS for f in (t.name, *t.synonyms)} | set(_NEGATIVE_FORMS),
        key=lambda f: (-len(_squash(f)), f),
    )
    bpm = r"(?P<bpm>\d{2,3})[\s\-]*bpm|bpm[\s:=]*(?P<bpm2>\d{2,3})|tempo:(?P<bpm3>\d{2,3})"
    alternation = "|".join(_form_pattern(f) for f in surface)
    pattern = re.compile(
        rf"(?<![a-z0-9])(?:{bpm}|(?P<form>{alternation}))(?P<free>-(?:free|less))?(?![a-z0-9])", re.IGNORECASE
    )
    return pattern, forms


def _bpm_tag(value: str) -> str | None:
    bpm = int(value)
    if not BPM_MIN <= bpm <= BPM_MAX:
        return None
    return f"{BPM_PREFIX}{5 * round(bpm / 5)}"


def _negates(gap: str, negating: bool) -> bool:
    """Whether negation is still in force after the text `gap` between two tag mentions."""
    for token in re.findall(r"[a-z0-9']+|[^\sa-z0-9']", gap):
        if token in _CLAUSE_BREAK:
            negating = False
        elif token in _NEGATORS:
            negating = True
        elif token in _FILLERS or token in _NEUTRAL_PUNCTUATION:
            continue
        else:
            negating = False
    return negating


def analyze(prompt: str) -> TagMatch:
    """Every canonical tag mentioned in `prompt`, split into wanted and negated.

    A tag mentioned both ways ("drums ... but no drums") counts as negated: blending must not add what the user
    said no to, and learning a taste from it would be guessing.
    """
    text = _normalise(prompt or "")
    pattern, forms = _index()
    wanted: list[str] = []
    negated: list[str] = []
    negating = False
    pos = 0
    for m in pattern.finditer(text):
        negating = _negates(text[pos : m.start()], negating)
        pos = m.end()
        bpm = m.group("bpm") or m.group("bpm2") or m.group("bpm3")
        if bpm is not None:
            tag, is_negative = _bpm_tag(bpm), False
            if tag is None:
                continue
        else:
            tag, is_negative = forms[_squash(m.group("form"))]
        if negating or is_negative or m.group("free"):
            if tag not in negated:
                negated.append(tag)
        elif tag not in wanted:
            wanted.append(tag)
    return TagMatch(tags=[t for t in wanted if t not in negated], negated=negated)


def find_tags(prompt: str) -> list[str]:
    """Canonical tags the prompt asks for, in order of first mention; negated mentions are left out."""
    return analyze(prompt).tags


def negated_tags(prompt: str) -> list[str]:
    """Canonical tags the prompt explicitly does not want ("no drums", "drumless", "vocal-free")."""
    return analyze(prompt).negated


def canonical(text: str) -> str | None:
    """The canonical tag for one tag-ish string ("Jazzy" -> "jazz", "90 BPM" -> "tempo:90"), or None if unknown."""
    text = _normalise(text or "").strip()
    if not text:
        return None
    pattern, forms = _index()
    m = pattern.fullmatch(text)
    if m is None:
        return None
    bpm = m.group("bpm") or m.group("bpm2") or m.group("bpm3")
    if bpm is not None:
        return _bpm_tag(bpm)
    if m.group("free"):
        return None
    tag, is_negative = forms[_squash(m.group("form"))]
    return None if is_negative else tag


def is_bpm(tag: str) -> bool:
    return tag.startswith(BPM_PREFIX) and tag[len(BPM_PREFIX) :].isdigit()


def bpm_of(tag: str) -> int | None:
    return int(tag[len(BPM_PREFIX) :]) if is_bpm(tag) else None


def get(tag: str) -> Tag | None:
    """The vocabulary entry for a canonical name (None for tempo:N and unknown tags)."""
    return _BY_NAME.get(tag)


def group_of(tag: str) -> str | None:
    """The tag's group; tempo:N tags are in "tempo"; None for tags the vocabulary does not know."""
    if is_bpm(tag):
        return BPM_GROUP
    entry = _BY_NAME.get(tag)
    return entry.group if entry else None


def display(tag: str) -> str:
    """How a tag reads in a prompt or a message: "tempo:90" -> "90 bpm", everything else as named."""
    bpm = bpm_of(tag)
    return f"{bpm} bpm" if bpm is not None else tag


def _with_implied(tag: str) -> set[str]:
    entry = _BY_NAME.get(tag)
    return {tag, *(entry.implies if entry else ())}


def contradicts(a: str, b: str) -> bool:
    """Whether tags `a` and `b` should not share a prompt. Symmetric; a tag never contradicts itself.

    Implied tags count ("techno" implies "electronic", which contradicts "acoustic"), and a stated tempo
    contradicts another tempo and the opposite tempo word (70 bpm is not "fast").
    """
    if a == b:
        return False
    ba, bb = bpm_of(a), bpm_of(b)
    if ba is not None and bb is not None:
        return True  # two different stated tempos
    if ba is not None or bb is not None:
        bpm, other = (ba, b) if ba is not None else (bb, a)
        others = _with_implied(other)
        return (
            (bpm <= NOT_FAST_BPM and "fast" in others)
            or (bpm <= NOT_UPBEAT_BPM and "upbeat" in others)
            or (bpm >= NOT_SLOW_BPM and "slow" in others)
        )
    left, right = _with_implied(a), _with_implied(b)
    return any(frozenset((x, y)) in CONTRADICTIONS for x in left for y in right if x != y)


def contradictions_of(tag: str) -> list[str]:
    """Vocabulary tags that contradict `tag`, sorted (for help texts and /style feedback)."""
    return sorted(t.name for t in TAGS if contradicts(tag, t.name))


def _prefix_rank(prefix: str, tag: Tag) -> int | None:
    """0: the name starts with the prefix; 1: a word of the name does; 2: a synonym does; None: no match."""
    if not prefix:
        return 0
    name = tag.name
    if name.startswith(prefix) or _squash(name).startswith(_squash(prefix)):
        return 0
    if any(word.startswith(prefix) for word in re.split(r"[\s\-]+", name)):
        return 1
    if any(_normalise(s).startswith(prefix) or _squash(s).startswith(_squash(prefix)) for s in tag.synonyms):
        return 2
    return None


def suggest(prefix: str, history: Iterable[str] = (), *, limit: int = MAX_SUGGESTIONS) -> list[str]:
    """Autocomplete for tag options: the user's own tags matching `prefix` first (in the order given), then the
    vocabulary (names starting with it, then names with a word starting with it, then synonyms), at most `limit`.
    """
    limit = max(0, min(limit, MAX_SUGGESTIONS))
    p = _normalise(prefix or "").strip()
    out: list[str] = []

    def add(tag: str) -> None:
        if tag not in out and len(out) < limit:
            out.append(tag)

    for raw in history:
        tag = canonical(raw) or _normalise(raw).strip()
        if not tag:
            continue
        entry = _BY_NAME.get(tag)
        if entry is not None:
            if _prefix_rank(p, entry) is not None:
                add(tag)
        elif tag.startswith(p) or display(tag).startswith(p):
            add(tag)
    ranked = sorted(
        ((rank, i, tag.name) for i, tag in enumerate(TAGS) if (rank := _prefix_rank(p, tag)) is not None),
    )
    for _, _, name in ranked:
        add(name)
    if p and not out:
        exact = canonical(p)  # "92 bpm" -> tempo:90
        if exact is not None:
            add(exact)
    return out

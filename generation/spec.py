"""A job's kind-specific parameters as one typed value, with the one dict form that storage, the Redis wire
format, privacy and chains all read and write.

The dict keys are the ones rows have always held (`source_s`, `chain`, `window_of`...), so stored jobs need no
migration, and unknown keys are dropped on reading so neighbouring versions understand each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping


class ChorusMode(str, Enum):
    """How a song's returning chorus is made: the first chorus's audio again, or a new take on its melody."""

    REUSE = "reuse"
    MELODY = "melody"


@dataclass
class ChainPlan:
    """An owner's chain of window jobs (generation/chain.py): each window's (context, new) seconds, and the
    audio of each helper window finished so far."""

    windows: list[tuple[float, float]]
    outputs: list[str] = field(default_factory=list)


@dataclass
class WindowRef:
    """A helper window job: whose chain it belongs to, which window it makes, and (once done) its audio."""

    owner_id: str
    index: int
    output: str | None = None


@dataclass
class JobSpec:
    source_s: float | None = None  # length of the audio being continued (continuations)
    steps: int | None = None  # diffusion: denoising steps (None: the family's default)
    strength: float | None = None  # diffusion audio-to-audio: how far from the input audio to go
    negative_prompt: str | None = None
    blended: tuple[str, ...] = ()  # more like this: tags blended in from the user's taste
    sections: tuple[tuple[str, float], ...] = ()  # a song's sections: (name, seconds)
    chorus: ChorusMode = ChorusMode.REUSE
    melody_model: str | None = None
    chain: ChainPlan | None = None
    window: WindowRef | None = None
    # --- ACE-STEP: a song's words and metadata, a repaint's range, a cover's strength, a reference, stems ---
    lyrics: str | None = None  # Suno-style [verse]/[chorus] tags; "" or None: an instrumental
    language: str | None = None  # the sung language ("en")
    bpm: int | None = None
    key: str | None = None  # "C major", "F# minor"
    repaint: tuple[float, float] | None = None  # (start_s, end_s) of the parent track made anew
    cover_strength: float | None = None  # 1 keeps the source's structure most, 0 is a new song
    reference_audio: str | None = None  # a stored upload whose sound the result takes ("sound like this")
    stems: tuple[str, ...] = ()  # the stems to split the input audio into
    part: str | None = None  # the instrument to add to the input audio (one of ACE-Step's track names)
    not_before: float | None = None  # epoch seconds: the job starts no earlier (its user's rate limit)
    manifest_prompt: bool = True  # the prompt may go into the file's Content Credentials (the server's setting)
    watermark: int | None = None  # the 16-bit watermark message to embed (BANDMATE_WATERMARK); None: none

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("source_s", "steps", "strength", "negative_prompt", "melody_model", "not_before"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("lyrics", "language", "bpm", "key", "cover_strength", "reference_audio", "part"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.repaint is not None:
            out["repaint_start_s"], out["repaint_end_s"] = self.repaint
        if self.stems:
            out["stems"] = list(self.stems)
        if self.blended:
            out["blended"] = list(self.blended)
        if self.sections:
            out["sections"] = [[name, seconds] for name, seconds in self.sections]
        if self.chorus is not ChorusMode.REUSE:
            out["chorus"] = self.chorus.value
        if self.chain is not None:
            out["chain"] = {"windows": [list(w) for w in self.chain.windows], "outputs": list(self.chain.outputs)}
        if self.window is not None:
            out["window_of"], out["window"] = self.window.owner_id, self.window.index
            if self.window.output is not None:
                out["output"] = self.window.output
        if not self.manifest_prompt:
            out["manifest_prompt"] = False
        if self.watermark is not None:
            out["watermark"] = self.watermark
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "JobSpec":
        """Forgiving: a value of the wrong shape is dropped rather than failing the whole row."""
        if not isinstance(data, Mapping):
            return cls()
        spec = cls()
        spec.source_s = _number(data.get("source_s"))
        steps = _number(data.get("steps"))
        spec.steps = int(steps) if steps is not None else None
        spec.strength = _number(data.get("strength"))
        spec.negative_prompt = _string(data.get("negative_prompt"))
        spec.melody_model = _string(data.get("melody_model"))
        spec.lyrics = data.get("lyrics") if isinstance(data.get("lyrics"), str) else None
        spec.language = _string(data.get("language"))
        bpm = _number(data.get("bpm"))
        spec.bpm = int(bpm) if bpm is not None else None
        spec.key = _string(data.get("key"))
        spec.cover_strength = _number(data.get("cover_strength"))
        spec.reference_audio = _string(data.get("reference_audio"))
        spec.part = _string(data.get("part"))
        start, end = _number(data.get("repaint_start_s")), _number(data.get("repaint_end_s"))
        spec.repaint = (start, end) if start is not None and end is not None else None
        stems = data.get("stems")
        if isinstance(stems, (list, tuple)):
            spec.stems = tuple(str(s) for s in stems)
        spec.not_before = _number(data.get("not_before"))
        blended = data.get("blended")
        if isinstance(blended, (list, tuple)):
            spec.blended = tuple(str(t) for t in blended)
        sections = data.get("sections")
        if isinstance(sections, (list, tuple)):
            spec.sections = tuple((str(s[0]), float(s[1])) for s in sections
                                  if isinstance(s, (list, tuple)) and len(s) == 2 and _number(s[1]) is not None)
        try:
            spec.chorus = ChorusMode(data.get("chorus") or ChorusMode.REUSE.value)
        except ValueError:
            spec.chorus = ChorusMode.REUSE
        chain = data.get("chain")
        if isinstance(chain, Mapping) and isinstance(chain.get("windows"), (list, tuple)):
            spec.chain = ChainPlan(windows=[(float(c), float(n)) for c, n in chain["windows"]],
                                   outputs=[str(o) for o in chain.get("outputs") or []])
        if data.get("window_of"):
            spec.window = WindowRef(owner_id=str(data["window_of"]), index=int(data.get("window") or 1),
                                    output=_string(data.get("output")))
        spec.manifest_prompt = data.get("manifest_prompt") is not False
        mark = data.get("watermark")
        spec.watermark = mark if isinstance(mark, int) and not isinstance(mark, bool) and 0 <= mark < 2**16 else None
        return spec

    def uploads(self) -> list[str]:
        """Audio a person uploaded that this spec names (a reference): their data, removed when they are forgotten."""
        return [self.reference_audio] if self.reference_audio else []

    def files(self) -> list[str]:
        """Intermediate audio this job's spec names (a chain's window outputs): what privacy and backups skip."""
        found = list(self.chain.outputs) if self.chain is not None else []
        if self.window is not None and self.window.output:
            found.append(self.window.output)
        return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None

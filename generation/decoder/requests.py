"""What a request must be to run in the decoder: a clear ValueError for one that cannot, before it takes a slot."""

from __future__ import annotations

from generation.types import GenerationRequest, tokens_for

# The longest prompt (in text tokens) a slot holds: the bot cuts prompts at 300 characters, about 75 of T5's tokens
# in English, and a song's section adds a few words. Longer ones (odd scripts, strings of symbols: T5 can need a
# token a character) run on the plain path (`SlotDriver.ensure_for`), not in the slots.
TEXT_TOKENS = 160


def positions_for(backend, text_tokens: int = TEXT_TOKENS) -> int:
    """Decoder positions one slot needs for the longest call: the BOS, the tokens, the delay pattern's tail, and
    for MusicGen-melody the chroma-and-text prefix before them."""
    positions = 1 + tokens_for(backend.max_duration_s) + 4
    if getattr(backend, "family", "musicgen") == "musicgen-melody":
        positions += int(backend.chroma_length) + text_tokens
    return positions


class RequestLimits:
    """The decoder's family (MusicGen or MusicGen-melody), its slots, and the room one slot has."""

    def __init__(self, backend, *, melody: bool, slots: int, max_positions: int, text_tokens: int) -> None:
        self.backend = backend
        self.melody = melody
        self.slots = slots
        self.max_positions = max_positions
        self.text_tokens = text_tokens

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError (a message for the user) when the request cannot run in the decoder."""
        if self.melody:
            if request.melody is None:
                raise ValueError("a remix request needs a melody")
            if request.audio_prompt is not None:
                raise ValueError("MusicGen-melody cannot continue audio: remix requests take a melody only")
        elif request.melody is not None:
            raise ValueError(f"{self.backend.model_id} cannot follow a melody: remix needs a MusicGen-melody model")
        if not request.duration_s > 0:
            raise ValueError("the duration must be more than 0 seconds")
        if request.duration_s > self.backend.max_duration_s + 1e-6:
            raise ValueError(f"one model call makes at most {self.backend.max_duration_s:.0f} s")
        if not 1 <= request.variations <= self.slots:
            raise ValueError(f"variations must be between 1 and {self.slots} (the decoder's slots)")
        frames = 0
        if request.audio_prompt is not None:
            frames = self.backend._prompt_samples(request.audio_prompt).shape[-1] // self.backend.hop
            if frames < 1:
                raise ValueError("the audio prompt is shorter than one frame")
        tokens = 0 if self.melody else self.prompt_tokens(request.prompt)
        if tokens > self.text_tokens:
            raise ValueError(f"the prompt is {tokens} text tokens long; at most {self.text_tokens} fit in the decoder")
        if self.offset(request) + 1 + frames + tokens_for(request.duration_s) > self.max_positions:
            raise ValueError("the audio prompt and the new part are too long for one model call here")

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.backend.tokenizer(prompt)["input_ids"])

    def prompt_fits(self, prompt: str, margin: int = 16) -> bool:
        """Whether a prompt (and `margin` tokens more: a song's section names) fits a slot's text room, or for
        MusicGen-melody its prefix with a call of the longest duration."""
        tokens = self.prompt_tokens(prompt) + margin
        if self.melody:
            return positions_for(self.backend, tokens) <= self.max_positions
        return tokens <= self.text_tokens

    def offset(self, request: GenerationRequest) -> int:
        """Decoder positions before the BOS: MusicGen-melody's chroma and text prefix (none for MusicGen)."""
        if not self.melody:
            return 0
        return self.backend.chroma_length + self.prompt_tokens(request.prompt)

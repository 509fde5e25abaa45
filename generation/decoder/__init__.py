"""The engine's own MusicGen decoder: a static KV cache of slots that jobs join and leave at any step."""

from generation.decoder.backend import DecoderBackend
from generation.decoder.engine import MusicGenDecoder, cache_bytes_per_slot, default_mode, native_bf16
from generation.decoder.forward import StepMode
from generation.decoder.jobs import DecodeHandle, DecodeState
from generation.decoder.requests import TEXT_TOKENS, positions_for

__all__ = ["DecoderBackend", "MusicGenDecoder", "DecodeHandle", "DecodeState", "StepMode", "cache_bytes_per_slot", "default_mode", "native_bf16", "positions_for", "TEXT_TOKENS"]

"""What a job is conditioned on, computed once when it is admitted: MusicGen's text as cross-attention keys and
values in the job's cache rows, or MusicGen-melody's chroma-and-text decoder prefix."""

from __future__ import annotations

import numpy as np
import torch

from generation.decoder.cache import StaticKVCache
from generation.decoder.forward import DecoderModules
from generation.types import GenerationRequest


class Conditioning:
    """Built per job exactly as the model's own `generate` builds it for that job alone, so a job's tokens do not
    depend on what else runs beside it."""

    def __init__(self, backend, modules: DecoderModules, cache: StaticKVCache, device: torch.device) -> None:
        self.backend = backend
        self.model = backend.model
        self.modules = modules
        self.cache = cache
        self.device = device
        cfg = self.model.config.decoder
        self._project = getattr(self.model, "enc_to_dec_proj", None)
        if (self.model.text_encoder.config.hidden_size == cfg.hidden_size
                or cfg.cross_attention_hidden_size is not None):
            self._project = None  # the model itself projects only when the widths differ

    def encode_text(self, prompt: str, n: int, guided: bool, first_row: int) -> None:
        """The text's cross-attention keys/values for the job's rows, as `generate` builds them for it alone:
        the prompt once per variation, then (with guidance) as many all-zero, fully masked unconditional rows."""
        enc = self.backend.tokenizer([prompt] * n, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        hidden = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if guided:
            hidden = torch.cat([hidden, torch.zeros_like(hidden)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        if self._project is not None:
            hidden = self._project(hidden)
        hidden = hidden * mask[..., None]
        for i, layer in enumerate(self.modules.layers):
            attn = layer.encoder_attn
            keys = self.modules._split(attn.k_proj(hidden))
            values = self.modules._split(attn.v_proj(hidden))
            self.cache.set_cross(i, first_row, keys, values)
        self.cache.set_cross_mask(first_row, mask.bool())

    def melody_prefix(self, r: GenerationRequest, n: int, guided: bool) -> torch.Tensor:
        """MusicGen-melody's decoder prefix for a job's rows, built as its `generate` builds it for the job alone:
        the projected chroma (looped to chroma_length; a 'null' chroma for the unconditional rows), then the
        projected text (zeros for the unconditional rows)."""
        b, model = self.backend, self.model
        enc = b.tokenizer([r.prompt] * n, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        text = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if model.text_encoder.config.hidden_size != model.decoder.config.hidden_size:
            text = model.enc_to_dec_proj(text)
        if guided:
            text = torch.cat([text, torch.zeros_like(text)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        text = text * mask[..., None]
        chroma = torch.from_numpy(np.stack([b.melody_chroma(r.melody)] * n)).to(self.device, b._chroma_dtype)
        null = torch.zeros_like(chroma)
        null[:, :, 0] = 1
        if guided:
            chroma = torch.cat([chroma, null], dim=0)
        if model.config.num_chroma != model.decoder.config.hidden_size:
            chroma = model.audio_enc_to_dec_proj(chroma)
        length = model.config.chroma_length
        if chroma.shape[1] < length:
            chroma = chroma.repeat(1, -(-length // chroma.shape[1]), 1)
        return torch.cat([chroma[:, :length], text], dim=1)

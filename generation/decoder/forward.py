"""The decoder's forward pass over the checkpoint's own modules, reading and writing the static KV cache.

Modules are the loaded MusicGen's: the per-codebook embeddings, the sinusoidal positions, each decoder layer's
norms, projections and feed-forward, the final norm and the per-codebook heads. Only attention is written here
(with `scaled_dot_product_attention`), because the cache is ours. Each layer's query/key/value projections and the
per-codebook heads run as one matrix product each (`fuse_linears`: the modules' weights become views of the fused
weight, so the model's own path and this one read the same memory and give the same numbers).

Three ways to run a step (see `StepMode`):
- EXACT: every job on its own rows, each call shaped as `generate` shapes a job run alone. A job's numbers can
  then depend on nothing else in the step, whatever the matrix-product kernel does with the row count (MKL's fp32
  product does change with it: 1 row, 2-3 rows and 4+ rows each round differently).
- BATCHED: the projections and feed-forward run once over all jobs' rows (one read of the weights per step);
  attention runs per job over its own cache view and length. Exact beside others wherever the matrix product
  rounds each row alike whatever the row count (oneDNN's bf16 product on these CPUs does).
- STATIC: one call over the first 2*B cache rows with masks over the whole cache: fixed shapes for CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from generation.decoder.cache import StaticKVCache


class StepMode(str, Enum):
    EXACT = "exact"
    BATCHED = "batched"
    STATIC = "static"


@dataclass(frozen=True)
class RowBlock:
    """One job's rows in a forward call: cache rows first_row.., its first input position, tokens per row."""

    first_row: int
    rows: int
    start: int
    tokens: int = 1


def fuse_linears(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of outputs, in) weight (and bias) for linears that read the same input, so a step runs one matrix
    product instead of several. The modules' own weights become views of it (no second copy in memory), so they
    and the fused product give the same numbers (a product's output columns do not depend on their neighbours).
    """
    weights = [lin.weight for lin in linears]
    ptrs = tuple(w.data_ptr() for w in weights)
    known = getattr(linears[0], "_fused_with", None)
    if known is not None and known[0] == ptrs:  # fused already (another decoder over the same model)
        return known[1], known[2]
    fused = torch.cat([w.detach() for w in weights])
    biases = [lin.bias for lin in linears]
    bias = None if all(b is None for b in biases) else torch.cat([
        b.detach() if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        for b, w in zip(biases, weights)])
    at = 0
    with torch.no_grad():
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight.data = fused[at:at + rows]
            if bias is not None and lin.bias is not None:
                lin.bias.data = bias[at:at + rows]
            at += rows
    linears[0]._fused_with = (tuple(lin.weight.data_ptr() for lin in linears), fused, bias)
    return fused, bias


class DecoderModules:
    """The decoder's modules, taken from a loaded `MusicgenForConditionalGeneration`."""

    def __init__(self, model) -> None:
        causal_lm = model.decoder
        core = causal_lm.model.decoder
        self.embed_tokens = core.embed_tokens
        self.embed_positions = core.embed_positions
        self.layers = core.layers
        self.final_norm = core.layer_norm
        self.heads = causal_lm.lm_heads
        self.num_codebooks = int(causal_lm.num_codebooks)
        attn = self.layers[0].self_attn
        self.num_heads = int(attn.num_heads)
        self.head_dim = int(attn.head_dim)
        self.hidden = int(attn.embed_dim)
        self.vocab = int(self.heads[0].out_features)
        self.dtype = self.heads[0].weight.dtype
        # MusicGen attends to the text through cross-attention; MusicGen-melody's layers have none (its text and
        # chroma are a prefix of the decoder's own input).
        self.cross_attention = hasattr(self.layers[0], "encoder_attn")
        self._fuse()

    def _fuse(self) -> None:
        """Each layer's query/key/value projections as one product, and the per-codebook heads as one."""
        self.qkv = [fuse_linears([lyr.self_attn.q_proj, lyr.self_attn.k_proj, lyr.self_attn.v_proj])
                    for lyr in self.layers]
        self.head_weight, self.head_bias = fuse_linears(list(self.heads))

    def _check_fused(self) -> None:
        """Rebuild the fused weights if the model's parameters were replaced (moved, cast) since."""
        if self.heads[0].weight.data_ptr() != self.head_weight.data_ptr() or \
                self.layers[0].self_attn.q_proj.weight.data_ptr() != self.qkv[0][0].data_ptr():
            self._fuse()

    def project_qkv(self, layer: int, x: torch.Tensor):
        """q, k, v (N, heads, T, head_dim) of a layer's self-attention from one matrix product."""
        weight, bias = self.qkv[layer]
        n, t, _ = x.shape
        qkv = F.linear(x, weight, bias).view(n, t, 3, self.num_heads, self.head_dim)
        return qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def ensure_positions(self, count: int) -> None:
        if self.embed_positions.weights.shape[0] < count:
            self.embed_positions.make_weights(count, self.embed_positions.embedding_dim)

    # -- pieces -----------------------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens (N, codebooks, T), positions (N, T) -> hidden (N, T, D): the codebooks' embeddings summed, in
        codebook order as the model sums them, plus the sinusoidal position."""
        embeds = sum(self.embed_tokens[c](tokens[:, c]) for c in range(self.num_codebooks))
        return embeds + self.embed_positions.weights[positions]

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, _ = x.shape
        return x.transpose(1, 2).contiguous().reshape(n, t, self.hidden).contiguous()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> fp32 logits of the last position, (N * codebooks, V), as `generate` hands them out."""
        normed = self.final_norm(hidden)
        # every position through the heads, as the model runs them (a product's rounding may depend on its rows)
        out = F.linear(normed, self.head_weight, self.head_bias)  # (N, T, codebooks * V)
        return out[:, -1].reshape(-1, self.vocab).to(dtype=torch.float32, copy=True)

    # -- per-job attention (EXACT and BATCHED) ----------------------------------------------------------------

    def _self_attention_blocks(self, layer: int, attn, q, k, v, blocks: list[RowBlock], cache: StaticKVCache):
        outs, at = [], 0
        for b in blocks:
            rows = slice(b.first_row, b.first_row + b.rows)
            end = b.start + b.tokens
            cache.keys[layer][rows, :, b.start:end] = k[at:at + b.rows]
            cache.values[layer][rows, :, b.start:end] = v[at:at + b.rows]
            keys = cache.keys[layer][rows, :, :end]
            values = cache.values[layer][rows, :, :end]
            mask, causal = None, False
            if b.tokens > 1 and b.start == 0:
                causal = True
            elif b.tokens > 1:  # a later prefill chunk: each query sees the cache up to its own position
                query_pos = torch.arange(b.start, end, device=q.device)[:, None]
                mask = torch.arange(end, device=q.device)[None, :] <= query_pos
            outs.append(F.scaled_dot_product_attention(q[at:at + b.rows], keys, values, attn_mask=mask,
                                                       is_causal=causal, scale=attn.scaling))
            at += b.rows
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def _cross_attention_blocks(self, layer: int, attn, q, blocks: list[RowBlock], cache: StaticKVCache):
        outs, at = [], 0
        for b in blocks:
            rows = slice(b.first_row, b.first_row + b.rows)
            text = cache.text_len[b.first_row]
            outs.append(F.scaled_dot_product_attention(
                q[at:at + b.rows], cache.cross_keys[layer][rows, :, :text], cache.cross_values[layer][rows, :, :text],
                attn_mask=cache.cross_mask[rows, :, :, :text], scale=attn.scaling))
            at += b.rows
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def forward_blocks(self, tokens: torch.Tensor, blocks: list[RowBlock], cache: StaticKVCache,
                       prefix: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (N, codebooks, T) for the blocks' rows in order -> fp32 logits (N * codebooks, V) of the last
        position. All blocks share T (T > 1 only for a single prefilling block). prefix: (N, P, D) embeddings
        before the tokens (MusicGen-melody's chroma and text), at positions start.. of a single block."""
        self._check_fused()
        embeds = sum(self.embed_tokens[c](tokens[:, c]) for c in range(self.num_codebooks))
        if prefix is not None:
            embeds = torch.cat([prefix, embeds], dim=1)
        t = embeds.shape[1]
        positions = torch.tensor([list(range(b.start, b.start + t)) for b in blocks for _ in range(b.rows)],
                                 dtype=torch.long, device=tokens.device)
        hidden = embeds + self.embed_positions.weights[positions]
        for i, layer in enumerate(self.layers):
            residual = hidden
            x = layer.self_attn_layer_norm(hidden)
            a = layer.self_attn
            q, k, v = self.project_qkv(i, x)
            hidden = residual + a.out_proj(self._merge(self._self_attention_blocks(i, a, q, k, v, blocks, cache)))
            if self.cross_attention:
                residual = hidden
                x = layer.encoder_attn_layer_norm(hidden)
                c = layer.encoder_attn
                q = self._split(c.q_proj(x))
                hidden = residual + c.out_proj(self._merge(self._cross_attention_blocks(i, c, q, blocks, cache)))
            residual = hidden
            x = layer.final_layer_norm(hidden)
            hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
        return self.logits(hidden)

    # -- STATIC -----------------------------------------------------------------------------------------------

    def forward_static(self, tokens: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """tokens (R, codebooks, 1) and positions (R,) for cache rows 0..R-1 -> fp32 logits (R * codebooks, V).

        Shapes depend on R only (CUDA-graph friendly): each row writes its K/V at its position and attends to the
        cache up to it; rows with nothing to do are given the scratch position.
        """
        self._check_fused()
        rows = tokens.shape[0]
        hidden = self.embed(tokens, positions[:, None])
        width = cache.shape.max_positions + 1
        visible = torch.arange(width, device=tokens.device)[None, :] <= positions[:, None]
        self_mask = visible[:, None, None, :]  # (R, 1, 1, positions)
        row_index = torch.arange(rows, device=tokens.device)
        # A row that may see no text position (an unconditional twin, an idle row) sees them all instead: its keys
        # and values are zeros (or, idle, ignored), so its output is the same 0 without relying on how a kernel
        # treats a fully masked row.
        cross_mask = cache.cross_mask[:rows]
        cross_mask = cross_mask | ~cross_mask.any(dim=-1, keepdim=True)
        for i, layer in enumerate(self.layers):
            residual = hidden
            x = layer.self_attn_layer_norm(hidden)
            a = layer.self_attn
            q, k, v = self.project_qkv(i, x)
            cache.keys[i][row_index, :, positions] = k[:, :, 0]
            cache.values[i][row_index, :, positions] = v[:, :, 0]
            out = F.scaled_dot_product_attention(q, cache.keys[i][:rows], cache.values[i][:rows], attn_mask=self_mask,
                                                 scale=a.scaling)
            hidden = residual + a.out_proj(self._merge(out))
            if self.cross_attention:
                residual = hidden
                x = layer.encoder_attn_layer_norm(hidden)
                c = layer.encoder_attn
                out = F.scaled_dot_product_attention(self._split(c.q_proj(x)), cache.cross_keys[i][:rows],
                                                     cache.cross_values[i][:rows], attn_mask=cross_mask,
                                                     scale=c.scaling)
                hidden = residual + c.out_proj(self._merge(out))
            residual = hidden
            x = layer.final_layer_norm(hidden)
            hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
        return self.logits(hidden)

"""CUDA graphs of the static decoder step, one per slot-count bucket (rows = 2 x bucket).

The static step has fixed shapes for a given row count, and its positions and masks are tensors, so one captured
graph replays every step of that bucket; inputs are copied into the graph's own buffers first. Sampling stays
outside the graph (each slot's own RNG). Off with the decoder's `cuda_graphs=False` (the wiring maps
`BANDMATE_CUDA_GRAPHS=0` to it). Written for the GPU path; not exercised on the CPU.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class CudaGraphSteps:
    def __init__(self, modules, cache, num_codebooks: int) -> None:
        self.modules = modules
        self.cache = cache
        self.k = num_codebooks
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._pool = None

    def _capture(self, rows: int):
        device = self.cache.keys[0].device
        tokens = torch.zeros((rows, self.k, 1), dtype=torch.long, device=device)
        tokens.fill_(0)
        # the scratch position: capturing writes K/V there, where no live row attends
        positions = torch.full((rows,), self.cache.scratch_position, dtype=torch.long, device=device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (kernel selection, workspace allocation)
                self.modules.forward_static(tokens, positions, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # Captured on the warm-up's own stream, so per-stream state (the cuBLAS workspace) exists before capture.
        # Capture is process-global: no other thread may touch CUDA meanwhile (torch runs on the model thread).
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            logits = self.modules.forward_static(tokens, positions, self.cache)
        self._pool = graph.pool()
        log.info("captured a CUDA graph of the decoder step for %d rows", rows)
        return graph, tokens, positions, logits

    def run(self, rows: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if rows not in self._graphs:
            self._graphs[rows] = self._capture(rows)
        graph, static_tokens, static_positions, logits = self._graphs[rows]
        static_tokens.copy_(tokens)
        static_positions.copy_(positions)
        graph.replay()
        # Every bucket's graph shares one memory pool, so another bucket's replay may overwrite these logits:
        # they are copied out at once, before any other replay.
        return logits.clone()

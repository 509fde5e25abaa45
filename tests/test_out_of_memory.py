"""The accelerator running out of memory is one event however torch reports it: the allocator's
`torch.OutOfMemoryError`, or a kernel's "CUDA error: out of memory" (a RuntimeError). Model calls turn either into
the engine's `OutOfMemory`, which the scheduler answers with a smaller batch; other errors pass through as they are.
"""

from __future__ import annotations

import pytest
import torch

from generation.backend import GenerationCancelled, OutOfMemory
from generation.out_of_memory import as_out_of_memory, is_out_of_memory
from generation.types import GenerationRequest


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (MemoryError(), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("prompt too long"), False),
])
def test_out_of_memory_is_recognised_whichever_way_torch_reports_it(error, expected):
    assert is_out_of_memory(error) is expected


def test_a_kernels_out_of_memory_leaves_a_model_call_as_the_engines_out_of_memory(tiny_backend, monkeypatch):
    def kernel_out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(tiny_backend, "_generate_batch", kernel_out_of_memory)
    with pytest.raises(OutOfMemory, match="out of memory") as raised:
        tiny_backend.generate([GenerationRequest("lo-fi piano", 0.5, seed=1)])
    assert isinstance(raised.value.__cause__, RuntimeError)


@pytest.mark.parametrize("error", [GenerationCancelled("stopped"), OutOfMemory("out of memory: 3 jobs"),
                                   RuntimeError("CUDA error: device-side assert triggered")])
def test_other_errors_and_the_engines_own_pass_through_unchanged(error):
    with pytest.raises(type(error)) as raised:
        with as_out_of_memory():
            raise error
    assert raised.value is error

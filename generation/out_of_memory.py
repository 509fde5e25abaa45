"""Recognising that the accelerator ran out of memory, whichever way torch reports it.

The caching allocator raises `torch.OutOfMemoryError`; a cuBLAS workspace or a kernel launch that finds no memory
reports a `RuntimeError` (`torch.AcceleratorError`) saying "CUDA error: out of memory"; torch's CPU allocator says
"can't allocate memory". All are the same event for the engine: the call may fit later or smaller, and nothing
else is wrong.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from generation.backend import OutOfMemory


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text  # the latter: torch's CPU allocator


def free_cached_memory() -> None:
    """Give the allocator's cached blocks back after running out, so the next try sees all that is free."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def as_out_of_memory() -> Iterator[None]:
    """A model call's own out-of-memory, whichever kind, leaves it as the engine's `OutOfMemory` (the scheduler
    then tries a smaller batch), with the allocator's cache given back."""
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        free_cached_memory()
        raise OutOfMemory(str(error)) from error

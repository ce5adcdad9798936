"""Giving memory back to the system after a large step."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import pyarrow as pa


def give_back_memory() -> None:
    """Return what this process has freed to the system. The C allocator (glibc) and Arrow's
    keep freed blocks for reuse, and a step that builds a large table from larger temporaries
    leaves them held: after building the weekly panel of 10^7 events on a cluster's client,
    0.93 GB beside the 0.82 GB panel; at 5·10^7 events the client held 9.05 GB after that step,
    6.46 GB when it gave memory back (docs/benchmarks.md, Scale). Cheap; a no-op where the C
    library has no ``malloc_trim``."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)

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
    leaves them held: building the weekly panel of 10^7 events left 0.93 GB held beside the
    0.82 GB panel, 3.2 GB more at 5·10^7 events, which the steps after paid for
    (docs/benchmarks.md, Scale). Cheap (milliseconds); a no-op where the C library has no
    ``malloc_trim``."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)

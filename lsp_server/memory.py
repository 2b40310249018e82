"""How the server's process uses the C allocator: set once at start-up, so that a session of days does not grow.

With glibc's defaults a long session's resident memory creeps up while its live data stays the same size: every
thread gets its own malloc arena, and the threshold above which a block is mapped (and unmapped when freed) slides
up to 32 MB after the first large block is freed, so the model's temporaries of a few MB (attention scores, MLP
activations of a chunk of tokens) are carved out of the arenas instead, which fragment and keep their pages. Two
arenas and a fixed 1 MiB mapping threshold give those blocks back to the system when they are freed. A variable the
user set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) wins, `TINYMORPH_ALLOCATOR=system` keeps glibc's defaults,
and other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""glibc's `mallopt` parameters (malloc.h)."""
ARENAS = 2
MMAP_THRESHOLD = 1 << 20


def tune_allocator() -> dict[str, int]:
    """Apply the settings above where the process runs on glibc and the user set none; what was set."""
    if os.environ.get("TINYMORPH_ALLOCATOR") == "system":
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = {}
    for env, param, value in (("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENAS),
                              ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD)):
        if env in os.environ:
            continue
        if mallopt(param, value) == 1:
            applied[env] = value
    log.debug("allocator: %s", applied or "unchanged")
    return applied
